"""The store's images, queries, router decisions and backend answers (tables ``images``, ``queries``,
``decisions``, ``answers``), and :meth:`QueryTables.query`, which reads one query with everything on it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image
from sqlite_utils import Database

from data import images as _images
from data import schema
from data.store_checks import (
    MAX_KEY_CHARS,
    MAX_LABELS,
    MAX_QUESTION_CHARS,
    as_mapping,
    check_backend,
    check_name,
    check_number,
    check_required,
    check_text,
    loads_json,
)
from data.store_core import StoreCore, StoreError


def require_query(db: Database, query_id: str) -> None:
    """ValueError unless ``query_id`` is a recorded query (call inside a transaction)."""
    if db.execute("SELECT 1 FROM queries WHERE id = ?", [query_id]).fetchone() is None:
        raise ValueError(f"unknown query id {query_id!r}")


class QueryTables(StoreCore):
    """Images, queries, decisions and answers."""

    # ---------------------------------------------------------------- images

    def put_image(self, image: Image.Image) -> str:
        """Store ``image``, normalised, as PNG under its key (idempotent); returns the key.

        The key is :func:`data.images.image_key`, the one identity of a photo that pairs and dataset
        items carry too. The pixels stored are the normalised ones (the app passes those anyway).
        Raises ValueError when ``image`` is not a usable PIL image, StoreError when it cannot be saved.
        """
        encoded = _images.encode_png(image)
        if self.read_only:
            raise StoreError("image not saved: the database is read-only")
        try:
            _images.store_png(self.images_dir, encoded)
        except OSError as error:
            reason = "the disk is full" if getattr(error, "errno", None) == 28 else str(error)
            raise StoreError(f"image not saved: {reason}") from error

        def write(db: Database) -> None:
            db.execute(
                "INSERT OR IGNORE INTO images (sha256, width, height, mode, bytes, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [encoded.sha256, encoded.width, encoded.height, encoded.mode, len(encoded.data), schema.utc_now()],
            )

        self._transact(write, what="image")
        return encoded.sha256

    def has_image(self, sha256: str) -> bool:
        return self.image_path(sha256).is_file()

    # ---------------------------------------------------------------- queries, decisions, answers

    def record_query(
        self,
        *,
        image_sha256: str,
        question: str,
        labels: Sequence[str] | None = None,
        source: str = "compare",
        session_id: str | None = None,
        item_id: str | None = None,
        category: str | None = None,
    ) -> str:
        """Record a question about a stored image; returns the new query id (uuid4 hex)."""
        sha = _images.check_sha256(image_sha256)
        question = check_required(question, "question", MAX_QUESTION_CHARS)
        labels_json = None
        if labels is not None:
            if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
                raise ValueError("labels must be a list of strings or None")
            if len(labels) > MAX_LABELS:
                raise ValueError(f"at most {MAX_LABELS} labels, got {len(labels)}")
            labels_json = json.dumps([check_text(label, "label", MAX_KEY_CHARS) for label in labels], ensure_ascii=False)
        source = check_name(source, "source")
        session_id = check_text(session_id, "session_id", MAX_KEY_CHARS, required=False)
        item_id = check_text(item_id, "item_id", MAX_KEY_CHARS, required=False)
        category = check_text(category, "category", MAX_KEY_CHARS, required=False)
        query_id = uuid.uuid4().hex

        def write(db: Database) -> None:
            if db.execute("SELECT 1 FROM images WHERE sha256 = ?", [sha]).fetchone() is None:
                raise ValueError(f"unknown image {sha}: store it with put_image() first")
            db.execute(
                "INSERT INTO queries (id, image_sha256, question, labels, source, session_id, item_id, "
                "category, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [query_id, sha, question, labels_json, source, session_id, item_id, category, schema.utc_now()],
            )

        self._transact(write, what="query")
        return query_id

    def set_query_category(self, query_id: str, category: str | None) -> None:
        """File a query under the task category a person chose (it overrides the router's guess in the
        pairs and the statistics); None leaves it unknown again."""
        category = check_text(category, "category", MAX_KEY_CHARS, required=False)

        def write(db: Database) -> None:
            require_query(db, query_id)
            db.execute("UPDATE queries SET category = ? WHERE id = ?", [category, query_id])

        self._transact(write, what="category")

    def record_decision(self, query_id: str, decision: Mapping[str, Any] | Any) -> None:
        """Record the router's decision for a query (replacing an earlier one).

        Keys: choice (required), confidence, probabilities (backend -> float), category, version,
        latency_ms, lambda_cost; other keys are ignored.
        """
        query_id = check_required(query_id, "query_id", MAX_KEY_CHARS)
        data = as_mapping(decision, "decision")
        choice = check_name(data.get("choice"), "decision choice")
        confidence = check_number(data.get("confidence"), "confidence", low=0.0, high=1.0)
        probabilities = data.get("probabilities") or {}
        if not isinstance(probabilities, Mapping):
            raise ValueError("probabilities must be a dict of backend -> number")
        probabilities = {
            check_name(k, "probabilities key"): check_number(v, f"probability of {k!r}", required=True)
            for k, v in probabilities.items()
        }
        category = check_text(data.get("category"), "category", MAX_KEY_CHARS, required=False)
        version = data.get("version")
        version = None if version is None else check_text(str(version), "version", MAX_KEY_CHARS)
        latency_ms = check_number(data.get("latency_ms"), "latency_ms", low=0.0)
        lambda_cost = check_number(data.get("lambda_cost"), "lambda_cost")

        def write(db: Database) -> None:
            require_query(db, query_id)
            db.execute(
                "INSERT INTO decisions (query_id, choice, confidence, probabilities, category, version, "
                "latency_ms, lambda_cost, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(query_id) DO UPDATE SET choice = excluded.choice, confidence = excluded.confidence, "
                "probabilities = excluded.probabilities, category = excluded.category, version = excluded.version, "
                "latency_ms = excluded.latency_ms, lambda_cost = excluded.lambda_cost, created_at = excluded.created_at",
                [query_id, choice, confidence, json.dumps(probabilities), category, version, latency_ms,
                 lambda_cost, schema.utc_now()],
            )

        self._transact(write, what="decision")

    def record_answer(self, query_id: str, backend: str, answer: Mapping[str, Any] | Any) -> None:
        """Record one backend's answer (text, label_scores, latency_s, error); replaces an unjudged one."""
        query_id = check_required(query_id, "query_id", MAX_KEY_CHARS)
        backend = check_backend(backend)
        data = as_mapping(answer, "answer")
        if data.get("backend") not in (None, backend):
            raise ValueError(f"answer is from backend {data['backend']!r}, not {backend!r}")
        text = data.get("text")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"answer text must be a string, got {type(text).__name__}")
        if text is not None:
            check_text(text, "answer text", 10 * MAX_QUESTION_CHARS, required=False)
        scores = data.get("label_scores")
        scores_json = None
        if scores is not None:
            if isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence):
                raise ValueError("label_scores must be a list of [label, score] or None")
            clean = []
            for item in scores:
                if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2:
                    raise ValueError("each label_scores entry must be [label, score]")
                clean.append([check_text(item[0], "label", MAX_KEY_CHARS),
                              check_number(item[1], f"score of {item[0]!r}", required=True)])
            scores_json = json.dumps(clean, ensure_ascii=False)
        latency = check_number(data.get("latency_s"), "latency_s", low=0.0)
        error = data.get("error")
        if error is not None:
            error = check_text(str(error), "error", 10_000, required=False)

        def write(db: Database) -> None:
            require_query(db, query_id)
            judged = db.execute(
                "SELECT 1 FROM verdicts WHERE query_id = ? AND backend = ? LIMIT 1", [query_id, backend]
            ).fetchone()
            if judged is not None:
                raise ValueError(f"the answer of {backend!r} to query {query_id} was already judged; it cannot change")
            db.execute(
                "INSERT INTO answers (query_id, backend, text, label_scores, latency_s, error, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(query_id, backend) DO UPDATE SET text = excluded.text, "
                "label_scores = excluded.label_scores, latency_s = excluded.latency_s, error = excluded.error, "
                "created_at = excluded.created_at",
                [query_id, backend, text, scores_json, latency, error, schema.utc_now()],
            )

        self._transact(write, what="answer")

    # ---------------------------------------------------------------- one query

    def query(self, query_id: str) -> dict[str, Any]:
        """A query with its decision, answers (backend -> answer) and judgments. KeyError if unknown."""
        query_id = check_required(query_id, "query_id", MAX_KEY_CHARS)

        def read(db: Database) -> dict[str, Any]:
            rows = list(db.query("SELECT * FROM queries WHERE id = ?", [query_id]))
            if not rows:
                raise KeyError(f"unknown query id {query_id!r}")
            out = dict(rows[0])
            out["labels"] = loads_json(out["labels"])
            out["image_path"] = str(self.image_path(out["image_sha256"]))
            decisions = list(db.query("SELECT * FROM decisions WHERE query_id = ?", [query_id]))
            decision = None
            if decisions:
                decision = dict(decisions[0])
                decision.pop("query_id")
                decision["probabilities"] = loads_json(decision["probabilities"])
            out["decision"] = decision
            answers = {}
            for row in db.query("SELECT * FROM answers WHERE query_id = ? ORDER BY backend", [query_id]):
                answer = dict(row)
                for key in ("id", "query_id"):
                    answer.pop(key)
                answer["label_scores"] = loads_json(answer["label_scores"])
                answers[answer["backend"]] = answer
            out["answers"] = answers
            judgments = []
            for row in db.query("SELECT * FROM judgments WHERE query_id = ? ORDER BY id", [query_id]):
                judgment = dict(row)
                judgment["verdicts"] = dict(db.execute(
                    "SELECT backend, correct FROM verdicts WHERE judgment_id = ? ORDER BY backend", [row["id"]]
                ).fetchall())
                judgments.append(judgment)
            out["judgments"] = judgments
            return out

        return self._read(read)
