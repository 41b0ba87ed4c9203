"""Human judgments (tables ``judgments`` and ``verdicts``) and adjudications (table ``adjudications``).

One judgment row and its verdict rows are saved in one transaction, after every check that depends on
the database passed under the write lock. A judgment records whether it was made blind, why a blind one
is not anonymous (``flag_reason``), and the guidelines version it was made under. An adjudication is a
lead annotator's final verdict on a (query, backend) whose annotators split; the performance pairs use
it instead of the verdicts' mean (:mod:`data.store_pairs`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sqlite_utils import Database

from data import schema
from data.store_checks import (
    BEST_SPECIAL,
    MAX_ANNOTATOR_CHARS,
    MAX_FLAG_CHARS,
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
from data.store_sessions import record_session_judgment

_JUDGMENT_ROWS_SQL = """
SELECT j.id AS judgment_id, j.query_id, v.backend, v.correct, j.best, j.true_answer, j.reason,
       j.annotator, j.session_id, j.client_key, j.created_at, q.question,
       COALESCE(q.category, d.category) AS category, q.image_sha256, a.text AS answer,
       j.blind, (j.blind = 1 AND j.flag_reason IS NULL) AS anonymous, j.flag_reason,
       g.version AS guidelines_version, g.scope AS guidelines_scope, j.replaced_by, j.replaced_at
FROM judgments j
JOIN queries q ON q.id = j.query_id
LEFT JOIN decisions d ON d.query_id = j.query_id
LEFT JOIN verdicts v ON v.judgment_id = j.id
LEFT JOIN answers a ON a.query_id = v.query_id AND a.backend = v.backend
LEFT JOIN guidelines g ON g.id = j.guidelines_id
WHERE (:since IS NULL OR j.created_at >= :since)
ORDER BY j.id, v.backend
"""

# Every verdict with who gave it, for agreement: one row per (judgment, backend) of the judgments not replaced.
_ANNOTATOR_VERDICTS_SQL = """
SELECT j.id AS judgment_id, j.query_id, v.backend, v.correct, j.annotator, j.reason, j.best, j.session_id,
       j.blind, j.created_at, COALESCE(q.category, d.category) AS category, q.question, a.text AS answer
FROM judgments j
JOIN verdicts v ON v.judgment_id = j.id
JOIN queries q ON q.id = j.query_id
LEFT JOIN decisions d ON d.query_id = j.query_id
LEFT JOIN answers a ON a.query_id = v.query_id AND a.backend = v.backend
WHERE (:session IS NULL OR j.session_id = :session) AND j.replaced_by IS NULL
ORDER BY j.query_id, j.id, v.backend
"""

#: The latest adjudication of each (query, backend); the pairs and statistics read it too.
LATEST_ADJUDICATIONS_SQL = (
    "SELECT query_id, backend, correct, adjudicator, reason, created_at FROM adjudications "
    "WHERE id IN (SELECT MAX(id) FROM adjudications GROUP BY query_id, backend)"
)


def _check_replaceable(db: Database, judgment_id: int, query_id: str, annotator: str) -> None:
    """A judgment may be replaced by a new one of the same query, by the same annotator, once."""
    row = db.execute("SELECT query_id, annotator, replaced_by FROM judgments WHERE id = ?", [judgment_id]).fetchone()
    if row is None:
        raise ValueError(f"unknown judgment {judgment_id} (the one to replace)")
    if row[0] != query_id:
        raise ValueError(f"judgment {judgment_id} is of another query; a new judgment replaces one of the same query")
    if row[1] != annotator:
        raise ValueError(f"judgment {judgment_id} is {row[1]}'s; only its annotator can change it")
    if row[2] is not None:
        raise ValueError(f"judgment {judgment_id} was already replaced (by judgment {row[2]})")


def _as_bools(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("blind", "anonymous"):
        if row.get(key) is not None:
            row[key] = bool(row[key])
    return row


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
        blind: bool = False,
        flag_reason: str | None = None,
        guidelines_id: int | None = None,
        replaces: int | None = None,
    ) -> int:
        """Save one judgment, committed before returning.

        ``verdicts``: backend -> correct in [0, 1] (True/False accepted, None = not judged).
        ``best``: a backend, "tie", "all_wrong" or None. Returns the number of judgment rows saved:
        the number of judged backends, or 1 for a judgment with only ``best``; 0 when a judgment
        with the same ``client_key`` was saved before (nothing is written again).

        ``blind``: the judge did not see which model gave which answer. ``flag_reason``: why a blind
        judgment is not anonymous (an answer named its own model); a judgment is anonymous when it is
        blind and has no flag. ``guidelines_id``: the guidelines version (:meth:`set_guidelines`) shown.
        With ``session_id`` of an annotation session, the annotator's hand-out of the query's item is
        marked judged, and the item done once ``k`` annotators judged it, in the same transaction.
        ``replaces``: the id of the same annotator's earlier judgment of the same query that this one
        changes; that row is kept and marked replaced (``replaced_by``, ``replaced_at``) in the same
        transaction, and statistics, pairs and training read only judgments not replaced.

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
        if not isinstance(blind, bool):
            raise ValueError(f"blind must be true or false, got {type(blind).__name__}")
        flag_reason = check_text(flag_reason, "flag reason", MAX_FLAG_CHARS, required=False) or None
        if guidelines_id is not None and (isinstance(guidelines_id, bool) or not isinstance(guidelines_id, int)):
            raise ValueError("guidelines_id must be a guidelines version's id (an integer)")
        if replaces is not None and (isinstance(replaces, bool) or not isinstance(replaces, int)):
            raise ValueError("replaces must be a judgment's id (an integer)")

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
            if guidelines_id is not None and db.execute(
                "SELECT 1 FROM guidelines WHERE id = ?", [guidelines_id]
            ).fetchone() is None:
                raise ValueError(f"unknown guidelines id {guidelines_id}")
            if replaces is not None:
                _check_replaceable(db, replaces, query_id, annotator)
            now = schema.utc_now()
            cursor = db.execute(
                "INSERT INTO judgments (query_id, best, true_answer, reason, annotator, session_id, client_key, "
                "blind, flag_reason, guidelines_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [query_id, best, true_answer, reason, annotator, session_id, client_key, int(blind), flag_reason,
                 guidelines_id, now],
            )
            judgment_id = cursor.lastrowid
            db.conn.executemany(
                "INSERT INTO verdicts (judgment_id, query_id, backend, correct, created_at) VALUES (?, ?, ?, ?, ?)",
                [(judgment_id, query_id, backend, score, now) for backend, score in sorted(clean.items())],
            )
            if replaces is not None:
                db.execute("UPDATE judgments SET replaced_by = ?, replaced_at = ? WHERE id = ?",
                           [judgment_id, now, replaces])
            if session_id is not None and item_id is not None:
                record_session_judgment(db, session_id, item_id, annotator, now)
            return max(1, len(clean))

        return self._transact(write, what="judgment", error_type=JudgmentNotSaved)

    def judgment_rows(self, *, since: Any = None) -> Iterator[dict[str, Any]]:
        """Every judgment, one row per judged backend (a judgment with only ``best`` gives one row
        with backend None), with the query's question, the judged answer, ``blind``, ``anonymous``,
        ``flag_reason``, the guidelines version (``guidelines_version``, ``guidelines_scope``) and, for a judgment
        changed later, ``replaced_by`` / ``replaced_at`` (rows replaced are kept). For export."""
        return self._stream(_JUDGMENT_ROWS_SQL, {"since": normalize_since(since)}, _as_bools)

    def annotator_verdicts(self, *, session_id: str | None = None) -> list[dict[str, Any]]:
        """Every verdict with its annotator, reason, the query's category, question and the judged
        answer, ordered by query and judgment (for agreement). ``session_id`` keeps that session's."""
        session_id = check_text(session_id, "session_id", MAX_KEY_CHARS, required=False)
        return list(self._stream(_ANNOTATOR_VERDICTS_SQL, {"session": session_id}, _as_bools))

    # ---------------------------------------------------------------- adjudications

    def record_adjudication(
        self, *, query_id: str, verdicts: Mapping[str, float | bool | None], adjudicator: str,
        reason: str | None = None,
    ) -> int:
        """Record a lead annotator's final verdict on backends of a query (backend -> correct in [0, 1];
        None leaves a backend alone). The latest adjudication of a (query, backend) replaces its verdicts'
        mean in the performance pairs and statistics. For a query of an annotation session, only the
        session's lead (the annotator who started it) may adjudicate. Returns the rows saved.
        ValueError on bad input (nothing written), StoreError when SQLite cannot save it."""
        query_id = check_required(query_id, "query_id", MAX_KEY_CHARS)
        if not isinstance(verdicts, Mapping):
            raise ValueError("verdicts must be a dict of backend -> correct (0..1, true/false or null)")
        clean = {}
        for backend, value in verdicts.items():
            backend = check_backend(backend)
            score = check_verdict(value, backend)
            if score is not None:
                clean[backend] = score
        if not clean:
            raise ValueError("nothing to save: no final verdict was given")
        adjudicator = check_required(adjudicator, "adjudicator", MAX_ANNOTATOR_CHARS).strip()
        reason = check_text(reason, "reason", MAX_REASON_CHARS, required=False) or None

        def write(db: Database) -> int:
            row = db.execute("SELECT session_id FROM queries WHERE id = ?", [query_id]).fetchone()
            if row is None:
                raise ValueError(f"unknown query id {query_id!r}")
            lead = db.execute("SELECT annotator FROM sessions WHERE id = ?", [row[0]]).fetchone() if row[0] else None
            if lead is not None and lead[0] != adjudicator:
                raise ValueError(f"only the session's lead annotator ({lead[0]}) can record final verdicts for its items")
            answered = {r[0] for r in db.execute("SELECT backend FROM answers WHERE query_id = ?", [query_id])}
            missing = sorted(set(clean) - answered)
            if missing:
                raise ValueError(f"query {query_id} has no answer from {', '.join(missing)}")
            now = schema.utc_now()
            db.conn.executemany(
                "INSERT INTO adjudications (query_id, backend, correct, adjudicator, reason, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(query_id, backend, score, adjudicator, reason, now) for backend, score in sorted(clean.items())],
            )
            return len(clean)

        return self._transact(write, what="final verdict")

    def adjudications(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The latest adjudication of every (query_id, backend): correct, adjudicator, reason, created_at."""
        return self._read(lambda db: {
            (row["query_id"], row["backend"]): row for row in db.query(LATEST_ADJUDICATIONS_SQL)
        })
