"""Human judgments (tables ``judgments`` and ``verdicts``): one judgment row and its verdict rows are
saved in one transaction, after every check that depends on the database passed under the write lock."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sqlite_utils import Database

from data import schema
from data.store_checks import (
    BEST_SPECIAL,
    MAX_ANNOTATOR_CHARS,
    MAX_KEY_CHARS,
    MAX_REASON_CHARS,
    MAX_TRUE_ANSWER_CHARS,
    check_backend,
    check_name,
    check_required,
    check_text,
    check_verdict,
    normalize_since,
)
from data.store_core import JudgmentNotSaved, StoreCore
from data.store_sessions import mark_done

_JUDGMENT_ROWS_SQL = """
SELECT j.id AS judgment_id, j.query_id, v.backend, v.correct, j.best, j.true_answer, j.reason,
       j.annotator, j.session_id, j.client_key, j.created_at, q.question,
       COALESCE(q.category, d.category) AS category, q.image_sha256, a.text AS answer
FROM judgments j
JOIN queries q ON q.id = j.query_id
LEFT JOIN decisions d ON d.query_id = j.query_id
LEFT JOIN verdicts v ON v.judgment_id = j.id
LEFT JOIN answers a ON a.query_id = v.query_id AND a.backend = v.backend
WHERE (:since IS NULL OR j.created_at >= :since)
ORDER BY j.id, v.backend
"""


class JudgmentTables(StoreCore):
    """Save judgments; read them back one row per judged backend."""

    def record_judgment(
        self,
        *,
        query_id: str,
        verdicts: Mapping[str, float | bool | None],
        best: str | None = None,
        true_answer: str | None = None,
        reason: str | None = None,
        annotator: str | None = "anonymous",
        session_id: str | None = None,
        client_key: str | None = None,
    ) -> int:
        """Save one judgment, committed before returning.

        ``verdicts``: backend -> correct in [0, 1] (True/False accepted, None = not judged).
        ``best``: a backend, "tie", "all_wrong" or None. Returns the number of judgment rows saved:
        the number of judged backends, or 1 for a judgment with only ``best``; 0 when a judgment
        with the same ``client_key`` was saved before (nothing is written again).

        Raises ValueError on bad input (nothing written) and :class:`JudgmentNotSaved` when SQLite
        cannot save it (read-only, disk full, locked for longer than ``lock_timeout_s``).
        """
        query_id = check_required(query_id, "query_id", MAX_KEY_CHARS)
        if not isinstance(verdicts, Mapping):
            raise ValueError("verdicts must be a dict of backend -> correct (0..1, true/false or null)")
        clean: dict[str, float] = {}
        for backend, value in verdicts.items():
            backend = check_backend(backend)
            score = check_verdict(value, backend)
            if score is not None:
                clean[backend] = score
        if best is not None:
            best = check_name(best, "best")
            if best == "all_wrong":
                right = sorted(b for b, v in clean.items() if v == 1.0)
                if right:
                    raise ValueError(f"best is 'all_wrong' but the verdicts mark {', '.join(right)} correct")
        if not clean and best is None:
            raise ValueError("nothing to save: no backend was judged and no best answer was chosen")
        true_answer = check_text(true_answer, "true answer", MAX_TRUE_ANSWER_CHARS, required=False) or None
        reason = check_text(reason, "reason", MAX_REASON_CHARS, required=False) or None
        annotator = "anonymous" if annotator is None else annotator
        annotator = check_required(annotator, "annotator", MAX_ANNOTATOR_CHARS).strip()
        session_id = check_text(session_id, "session_id", MAX_KEY_CHARS, required=False)
        client_key = check_text(client_key, "client_key", MAX_KEY_CHARS, required=False) or None

        def write(db: Database) -> int:
            if client_key is not None and db.execute(
                "SELECT 1 FROM judgments WHERE client_key = ?", [client_key]
            ).fetchone() is not None:
                return 0
            row = db.execute("SELECT item_id FROM queries WHERE id = ?", [query_id]).fetchone()
            if row is None:
                raise ValueError(f"unknown query id {query_id!r}")
            item_id = row[0]
            answered = {r[0] for r in db.execute("SELECT backend FROM answers WHERE query_id = ?", [query_id])}
            named = set(clean) | ({best} if best is not None and best not in BEST_SPECIAL else set())
            missing = sorted(named - answered)
            if missing:
                raise ValueError(
                    f"query {query_id} has no answer from {', '.join(missing)} "
                    f"(answered: {', '.join(sorted(answered)) or 'none'})"
                )
            now = schema.utc_now()
            cursor = db.execute(
                "INSERT INTO judgments (query_id, best, true_answer, reason, annotator, session_id, client_key, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [query_id, best, true_answer, reason, annotator, session_id, client_key, now],
            )
            judgment_id = cursor.lastrowid
            db.conn.executemany(
                "INSERT INTO verdicts (judgment_id, query_id, backend, correct, created_at) VALUES (?, ?, ?, ?, ?)",
                [(judgment_id, query_id, backend, score, now) for backend, score in sorted(clean.items())],
            )
            if session_id is not None and item_id is not None:
                mark_done(db, session_id, item_id, now)
            return max(1, len(clean))

        return self._transact(write, what="judgment", error_type=JudgmentNotSaved)

    def judgment_rows(self, *, since: Any = None) -> Iterator[dict[str, Any]]:
        """Every judgment, one row per judged backend (a judgment with only ``best`` gives one row
        with backend None), with the query's question and the judged answer. For export."""
        return self._stream(_JUDGMENT_ROWS_SQL, {"since": normalize_since(since)}, lambda row: row)
