"""Annotation sessions (tables ``sessions``, ``session_items``, ``session_assignments``, ``guidelines``).

A session is a dataset's items in order, judged by one annotator or, for a study, by several: it
asks for ``k`` judgments per item (default 1), each by a different annotator. Items are handed out
by :meth:`SessionTables.claim_item`, one write transaction (``BEGIN IMMEDIATE``) that reads what is
held and judged and records the hand-out together, so concurrent annotators (threads or processes)
never receive an item twice nor push an item past ``k``. A hand-out that is neither judged nor skipped
holds a place among the item's ``k`` for ``hold_s`` seconds, then frees it for others.

Resuming (a reload, tomorrow) reopens the item the annotator was on: their hand-out neither judged nor
skipped. The items they skipped come back only after every item still to do, oldest skip first. Undo
walks back through the items they judged (:meth:`SessionTables.judged_items`,
:meth:`SessionTables.active_judgment`); a changed judgment replaces the old one (``replaces`` of
:meth:`data.store.Store.record_judgment`).

Guidelines (Markdown) belong to a session or a dataset; every change is a new version, and each
judgment records the version (``judgments.guidelines_id``) it was made under.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlite_utils import Database

from data import schema
from data.store_checks import (
    MAX_ANNOTATOR_CHARS,
    MAX_GUIDELINES_CHARS,
    MAX_KEY_CHARS,
    check_k,
    check_required,
    check_text,
)
from data.store_core import StoreCore

#: How long an item handed out and not yet judged keeps its place among the item's k (seconds).
HOLD_S = 1800.0
GUIDELINE_SCOPES: tuple[str, ...] = ("session", "dataset")


def mark_done(db: Database, session_id: str, item_id: str, now: str) -> bool:
    """Mark an item done inside the caller's transaction; True if it was not done before."""
    changed = db.execute(
        "UPDATE session_items SET done_at = ? WHERE session_id = ? AND item_id = ? AND done_at IS NULL",
        [now, session_id, item_id],
    ).rowcount
    if changed:
        db.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", [now, session_id])
    return bool(changed)


def record_session_judgment(db: Database, session_id: str, item_id: str, annotator: str, now: str) -> None:
    """Inside a judgment's transaction: the annotator's hand-out of the item is judged, and the item is
    done once ``k`` different annotators judged it. Nothing happens when the item is not in the session."""
    row = db.execute(
        "SELECT s.k FROM session_items i JOIN sessions s ON s.id = i.session_id "
        "WHERE i.session_id = ? AND i.item_id = ?", [session_id, item_id],
    ).fetchone()
    if row is None:
        return
    db.execute(
        "INSERT INTO session_assignments (session_id, item_id, annotator, assigned_at, done_at, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (session_id, item_id, annotator) "
        "DO UPDATE SET done_at = COALESCE(done_at, excluded.done_at), skipped_at = NULL",
        [session_id, item_id, annotator, now, now, now],
    )
    db.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", [now, session_id])
    judged = db.execute(
        "SELECT COUNT(*) FROM session_assignments WHERE session_id = ? AND item_id = ? AND done_at IS NOT NULL",
        [session_id, item_id],
    ).fetchone()[0]
    if judged >= row[0]:
        mark_done(db, session_id, item_id, now)


def _summary(db: Database, row: Mapping[str, Any]) -> dict[str, Any]:
    done_count, next_item, judged = db.execute(
        "SELECT COUNT(done_at), (SELECT item_id FROM session_items WHERE session_id = :id AND done_at IS NULL "
        "ORDER BY position LIMIT 1), (SELECT COUNT(*) FROM session_assignments WHERE session_id = :id "
        "AND done_at IS NOT NULL) FROM session_items WHERE session_id = :id",
        {"id": row["id"]},
    ).fetchone()
    summary = {**dict(row), "done_count": done_count, "next_item": next_item, "judgments": judged}
    summary["blind"] = bool(summary.get("blind"))
    return summary


def _hold_cutoff(now: str, hold_s: float) -> str:
    moment = datetime.fromisoformat(now) - timedelta(seconds=hold_s)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


# An item the annotator may take: not complete, never handed to them, and fewer than k places taken
# (judged, or held by a hand-out newer than the cutoff).
_CLAIMABLE_SQL = """
SELECT i.item_id FROM session_items i
WHERE i.session_id = :sid AND i.done_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM session_assignments a
                  WHERE a.session_id = i.session_id AND a.item_id = i.item_id AND a.annotator = :who)
  AND (SELECT COUNT(*) FROM session_assignments a
       WHERE a.session_id = i.session_id AND a.item_id = i.item_id
         AND (a.done_at IS NOT NULL OR (a.skipped_at IS NULL AND a.assigned_at >= :cutoff))) < :k
ORDER BY i.position
"""

# The annotator's own hand-outs not judged yet: open ones first (resume), then skipped ones, oldest skip first.
_OWN_OPEN_SQL = """
SELECT a.item_id, a.skipped_at FROM session_assignments a
JOIN session_items i ON i.session_id = a.session_id AND i.item_id = a.item_id
WHERE a.session_id = :sid AND a.annotator = :who AND a.done_at IS NULL AND i.done_at IS NULL
  AND (SELECT COUNT(*) FROM session_assignments o
       WHERE o.session_id = a.session_id AND o.item_id = a.item_id AND o.annotator != a.annotator
         AND (o.done_at IS NOT NULL OR (o.skipped_at IS NULL AND o.assigned_at >= :cutoff))) < :k
ORDER BY a.skipped_at IS NOT NULL, a.skipped_at, i.position
"""


class SessionTables(StoreCore):
    """Start, join, read and advance annotation sessions; their guidelines."""

    def start_session(
        self, annotator: str, dataset: str, item_ids: Sequence[str], *, k: int = 1, blind: bool = False,
        guidelines: str | None = None,
    ) -> str:
        """Start an annotation session over ``item_ids`` (in this order); returns its id.

        ``k``: judgments wanted per item, each by a different annotator (1 to 100). ``blind``: the page
        hides the model names until each judgment is saved. ``guidelines``: Markdown shown to every
        annotator of the session (version 1; :meth:`set_guidelines` adds versions). The annotator who
        starts it is the session's lead (the one who adjudicates its disagreements).
        """
        annotator = check_required(annotator, "annotator", MAX_ANNOTATOR_CHARS).strip()
        dataset = check_required(dataset, "dataset", MAX_KEY_CHARS)
        k = check_k(k)
        guidelines = check_text(guidelines, "guidelines", MAX_GUIDELINES_CHARS, required=False)
        if isinstance(item_ids, (str, bytes)) or not isinstance(item_ids, Sequence):
            raise ValueError("item_ids must be a list of strings")
        items = [check_required(i, "item id", MAX_KEY_CHARS) for i in item_ids]
        if not items:
            raise ValueError("a session needs at least one item")
        if len(set(items)) != len(items):
            raise ValueError("item_ids must not repeat")
        session_id = uuid.uuid4().hex

        def write(db: Database) -> None:
            now = schema.utc_now()
            db.execute(
                "INSERT INTO sessions (id, annotator, dataset, total, k, blind, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [session_id, annotator, dataset, len(items), k, int(bool(blind)), now, now],
            )
            db.conn.executemany(
                "INSERT INTO session_items (session_id, position, item_id, created_at) VALUES (?, ?, ?, ?)",
                [(session_id, i, item, now) for i, item in enumerate(items)],
            )
            if guidelines and guidelines.strip():
                _add_guidelines(db, "session", session_id, guidelines, now)

        self._transact(write, what="session")
        return session_id

    def session(self, session_id: str) -> dict[str, Any]:
        """id, annotator (the lead), dataset, k, blind, item_ids (in order), done (set of items judged k
        times, or marked done), done_count, total, judgments (judged hand-outs), next_item (the first item
        not done, None when finished), created_at, updated_at. KeyError if unknown."""
        session_id = check_required(session_id, "session_id", MAX_KEY_CHARS)

        def read(db: Database) -> dict[str, Any]:
            rows = list(db.query("SELECT * FROM sessions WHERE id = ?", [session_id]))
            if not rows:
                raise KeyError(f"unknown session {session_id!r}")
            summary = _summary(db, rows[0])
            items = db.execute(
                "SELECT item_id, done_at FROM session_items WHERE session_id = ? ORDER BY position", [session_id]
            ).fetchall()
            summary["item_ids"] = [item for item, _ in items]
            summary["done"] = {item for item, done_at in items if done_at is not None}
            return summary

        return self._read(read)

    def mark_item_done(self, session_id: str, item_id: str) -> None:
        """Mark an item of a session done (idempotent), however many judgments it has. ``record_judgment``
        with the session id does this itself once the item has ``k``. ValueError for an unknown session or item."""
        session_id = check_required(session_id, "session_id", MAX_KEY_CHARS)
        item_id = check_required(item_id, "item id", MAX_KEY_CHARS)

        def write(db: Database) -> None:
            if db.execute("SELECT 1 FROM session_items WHERE session_id = ? AND item_id = ?",
                          [session_id, item_id]).fetchone() is None:
                if db.execute("SELECT 1 FROM sessions WHERE id = ?", [session_id]).fetchone() is None:
                    raise ValueError(f"unknown session {session_id!r}")
                raise ValueError(f"item {item_id!r} is not in session {session_id}")
            mark_done(db, session_id, item_id, schema.utc_now())

        self._transact(write, what="session progress")

    def sessions_for(self, annotator: str) -> list[dict[str, Any]]:
        """The sessions an annotator started or was handed items of, most recently active first
        (summaries without the item lists)."""
        annotator = check_required(annotator, "annotator", MAX_ANNOTATOR_CHARS).strip()
        return self._read(lambda db: [
            _summary(db, row)
            for row in db.query(
                "SELECT * FROM sessions WHERE annotator = :who OR id IN "
                "(SELECT DISTINCT session_id FROM session_assignments WHERE annotator = :who) "
                "ORDER BY updated_at DESC, created_at DESC", {"who": annotator}
            )
        ])

    def open_sessions(self, dataset: str | None = None) -> list[dict[str, Any]]:
        """Sessions with items still to judge (of ``dataset`` when given), most recently active first,
        for annotators to join."""
        dataset = check_text(dataset, "dataset", MAX_KEY_CHARS, required=False)
        return self._read(lambda db: [
            _summary(db, row)
            for row in db.query(
                "SELECT * FROM sessions WHERE (:dataset IS NULL OR dataset = :dataset) AND EXISTS "
                "(SELECT 1 FROM session_items i WHERE i.session_id = sessions.id AND i.done_at IS NULL) "
                "ORDER BY updated_at DESC, created_at DESC", {"dataset": dataset}
            )
        ])

    # ---------------------------------------------------------------- handing items out

    def claim_item(self, session_id: str, annotator: str, *, hold_s: float = HOLD_S) -> str | None:
        """The item ``annotator`` should judge next in a session, recorded as handed to them; None when
        nothing is left for them.

        In order: their own hand-out not judged yet (so a page reload or tomorrow resumes it), the first
        item (in session order) they were never given that has fewer than ``k`` places taken, then the
        items they skipped, oldest skip first. A place is taken by a judgment or by a hand-out younger
        than ``hold_s`` that was not skipped. One ``BEGIN IMMEDIATE`` transaction: under any number of
        concurrent annotators no one is given an item twice and no item is handed past ``k``.
        KeyError for an unknown session.
        """
        session_id = check_required(session_id, "session_id", MAX_KEY_CHARS)
        annotator = check_required(annotator, "annotator", MAX_ANNOTATOR_CHARS).strip()

        def write(db: Database) -> str | None:
            row = db.execute("SELECT k FROM sessions WHERE id = ?", [session_id]).fetchone()
            if row is None:
                raise KeyError(f"unknown session {session_id!r}")
            now = schema.utc_now()
            params = {"sid": session_id, "who": annotator, "k": row[0], "cutoff": _hold_cutoff(now, hold_s)}
            own = db.execute(_OWN_OPEN_SQL, params).fetchall()
            if own and own[0][1] is None:  # an open hand-out: resume it
                db.execute(
                    "UPDATE session_assignments SET assigned_at = ? WHERE session_id = ? AND item_id = ? AND annotator = ?",
                    [now, session_id, own[0][0], annotator],
                )
                return own[0][0]
            fresh = db.execute(_CLAIMABLE_SQL + " LIMIT 1", params).fetchone()
            if fresh is not None:
                db.execute(
                    "INSERT INTO session_assignments (session_id, item_id, annotator, assigned_at, created_at) "
                    "VALUES (?, ?, ?, ?, ?)", [session_id, fresh[0], annotator, now, now],
                )
                return fresh[0]
            if own:  # only skipped ones are left: the oldest skip comes back
                db.execute(
                    "UPDATE session_assignments SET skipped_at = NULL, assigned_at = ? "
                    "WHERE session_id = ? AND item_id = ? AND annotator = ?", [now, session_id, own[0][0], annotator],
                )
                return own[0][0]
            return None

        return self._transact(write, what="item hand-out")

    def skip_item(self, session_id: str, annotator: str, item_id: str) -> None:
        """Release ``annotator``'s hold on an item without judging it: others may take its place, and it
        comes back to them after every other item (:meth:`claim_item`). No-op if it was not handed to them."""
        session_id = check_required(session_id, "session_id", MAX_KEY_CHARS)
        annotator = check_required(annotator, "annotator", MAX_ANNOTATOR_CHARS).strip()
        item_id = check_required(item_id, "item id", MAX_KEY_CHARS)
        self._transact(lambda db: db.execute(
            "UPDATE session_assignments SET skipped_at = ? WHERE session_id = ? AND item_id = ? AND annotator = ? "
            "AND done_at IS NULL", [schema.utc_now(), session_id, item_id, annotator],
        ), what="skip")

    def progress(self, session_id: str, annotator: str | None = None) -> dict[str, Any]:
        """A session's progress: total items, items done, k, judgments made of the ``total * k`` wanted,
        and, with ``annotator``, how many items they judged (``mine``) and the items they judged (``mine_items``)."""
        session_id = check_required(session_id, "session_id", MAX_KEY_CHARS)

        def read(db: Database) -> dict[str, Any]:
            row = db.execute("SELECT total, k FROM sessions WHERE id = ?", [session_id]).fetchone()
            if row is None:
                raise KeyError(f"unknown session {session_id!r}")
            done = db.execute("SELECT COUNT(*) FROM session_items WHERE session_id = ? AND done_at IS NOT NULL",
                              [session_id]).fetchone()[0]
            judged = db.execute("SELECT COUNT(*) FROM session_assignments WHERE session_id = ? AND done_at IS NOT NULL",
                                [session_id]).fetchone()[0]
            mine = [r[0] for r in db.execute(
                "SELECT item_id FROM session_assignments WHERE session_id = ? AND annotator = ? AND done_at IS NOT NULL",
                [session_id, (annotator or "").strip()],
            )] if annotator else []
            return {"total": row[0], "k": row[1], "done": done, "judgments": judged, "wanted": row[0] * row[1],
                    "mine": len(mine), "mine_items": set(mine)}

        return self._read(read)

    def item_query(self, session_id: str, item_id: str, backends: Sequence[str]) -> str | None:
        """The first query of a session item that every one of ``backends`` answered, so later annotators
        of the item judge the same answers; None when there is none."""
        names = list(backends)
        if not names:
            return None
        marks = ", ".join("?" for _ in names)
        row = self._read(lambda db: db.execute(
            f"SELECT q.id FROM queries q WHERE q.session_id = ? AND q.item_id = ? AND "
            f"(SELECT COUNT(DISTINCT a.backend) FROM answers a WHERE a.query_id = q.id AND a.backend IN ({marks})) = ? "
            "ORDER BY q.created_at, q.id LIMIT 1", [session_id, item_id, *names, len(names)],
        ).fetchone())
        return None if row is None else row[0]

    def judged_items(self, session_id: str, annotator: str) -> list[str]:
        """The items of a session ``annotator`` judged, in the order they first judged them (what Undo walks
        back through)."""
        session_id = check_required(session_id, "session_id", MAX_KEY_CHARS)
        annotator = check_required(annotator, "annotator", MAX_ANNOTATOR_CHARS).strip()
        return self._read(lambda db: [row[0] for row in db.execute(
            "SELECT a.item_id FROM session_assignments a JOIN session_items i ON i.session_id = a.session_id "
            "AND i.item_id = a.item_id WHERE a.session_id = ? AND a.annotator = ? AND a.done_at IS NOT NULL "
            "ORDER BY a.done_at, i.position", [session_id, annotator],
        )])

    def active_judgment(self, session_id: str, annotator: str, item_id: str) -> dict[str, Any] | None:
        """``annotator``'s judgment of a session item that is in force (the latest not replaced): id,
        query_id, best, true_answer, reason, created_at and verdicts ``{backend: correct}``; None when
        they have none."""
        session_id = check_required(session_id, "session_id", MAX_KEY_CHARS)
        annotator = check_required(annotator, "annotator", MAX_ANNOTATOR_CHARS).strip()
        item_id = check_required(item_id, "item id", MAX_KEY_CHARS)

        def read(db: Database) -> dict[str, Any] | None:
            rows = list(db.query(
                "SELECT j.id, j.query_id, j.best, j.true_answer, j.reason, j.created_at FROM judgments j "
                "JOIN queries q ON q.id = j.query_id WHERE j.session_id = ? AND j.annotator = ? AND q.item_id = ? "
                "AND j.replaced_by IS NULL ORDER BY j.id DESC LIMIT 1", [session_id, annotator, item_id],
            ))
            if not rows:
                return None
            found = rows[0]
            found["verdicts"] = dict(db.execute(
                "SELECT backend, correct FROM verdicts WHERE judgment_id = ? ORDER BY backend", [found["id"]]
            ).fetchall())
            return found

        return self._read(read)

    def reorder_pending(self, session_id: str, item_ids: Sequence[str]) -> int:
        """Hand a session's pending items out in the order of ``item_ids`` from now on.

        Only items that are not done and not handed to anyone move: they take the positions that
        those same items held, in the new order, so done items, open hand-outs and any item not listed
        keep their place. Returns how many items moved. Used by the Annotate queue when an incremental
        retrain re-scores what is left. KeyError for an unknown session.
        """
        session_id = check_required(session_id, "session_id", MAX_KEY_CHARS)
        wanted = [str(i) for i in item_ids]

        def write(db: Database) -> int:
            if db.execute("SELECT 1 FROM sessions WHERE id = ?", [session_id]).fetchone() is None:
                raise KeyError(f"unknown session {session_id!r}")
            free = dict(db.execute(
                "SELECT item_id, position FROM session_items i WHERE session_id = ? AND done_at IS NULL AND NOT EXISTS "
                "(SELECT 1 FROM session_assignments a WHERE a.session_id = i.session_id AND a.item_id = i.item_id)",
                [session_id],
            ).fetchall())
            moving = [i for i in dict.fromkeys(wanted) if i in free]
            if len(moving) < 2:
                return 0
            slots = sorted(free[i] for i in moving)
            # Two passes (negative positions first) so the primary key (session_id, position) never collides.
            db.conn.executemany("UPDATE session_items SET position = ? WHERE session_id = ? AND item_id = ?",
                                [(-1 - n, session_id, item) for n, item in enumerate(moving)])
            db.conn.executemany("UPDATE session_items SET position = ? WHERE session_id = ? AND item_id = ?",
                                [(slot, session_id, item) for slot, item in zip(slots, moving, strict=True)])
            return sum(1 for slot, item in zip(slots, moving, strict=True) if free[item] != slot)

        return self._transact(write, what="session order")

    def session_item_verdicts(self, session_id: str) -> dict[str, dict[str, float]]:
        """``{item_id: {backend: mean verdict}}`` over every judgment (not replaced) of a session's items
        (for the Annotate queue's incremental retrain)."""
        session_id = check_required(session_id, "session_id", MAX_KEY_CHARS)

        def read(db: Database) -> dict[str, dict[str, float]]:
            out: dict[str, dict[str, float]] = {}
            for item, backend, value in db.execute(
                "SELECT q.item_id, v.backend, AVG(v.correct) FROM judgments j JOIN verdicts v ON v.judgment_id = j.id "
                "JOIN queries q ON q.id = j.query_id WHERE q.session_id = ? AND q.item_id IS NOT NULL "
                "AND v.correct IS NOT NULL AND j.replaced_by IS NULL GROUP BY q.item_id, v.backend", [session_id],
            ):
                out.setdefault(str(item), {})[str(backend)] = float(value)
            return out

        return self._read(read)

    # ---------------------------------------------------------------- guidelines

    def set_guidelines(self, scope: str, key: str, text: str) -> dict[str, Any]:
        """Record guidelines (Markdown) for a session (``scope="session"``, key its id) or a dataset (key its
        spec). A text equal to the latest version's is not stored again. Returns the version's row
        (id, scope, key, version, text, created_at)."""
        scope, key, text = _check_guidelines(scope, key, text)

        def write(db: Database) -> dict[str, Any]:
            latest = _latest_guidelines(db, scope, key)
            if latest is not None and latest["text"] == text:
                return latest
            _add_guidelines(db, scope, key, text, schema.utc_now())
            latest = _latest_guidelines(db, scope, key)
            assert latest is not None  # just inserted
            return latest

        return self._transact(write, what="guidelines")

    def guidelines(self, scope: str, key: str) -> dict[str, Any] | None:
        """The latest guidelines of a session or dataset (see :meth:`set_guidelines`), or None."""
        if scope not in GUIDELINE_SCOPES:
            raise ValueError(f"scope must be one of {', '.join(GUIDELINE_SCOPES)}, got {scope!r}")
        key = check_required(key, "guidelines key", MAX_KEY_CHARS)
        return self._read(lambda db: _latest_guidelines(db, scope, key))


def _check_guidelines(scope: Any, key: Any, text: Any) -> tuple[str, str, str]:
    if scope not in GUIDELINE_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(GUIDELINE_SCOPES)}, got {scope!r}")
    key = check_required(key, "guidelines key", MAX_KEY_CHARS)
    text = check_text(text, "guidelines", MAX_GUIDELINES_CHARS, required=False) or ""
    return scope, key, text


def _latest_guidelines(db: Database, scope: str, key: str) -> dict[str, Any] | None:
    rows = list(db.query(
        "SELECT id, scope, key, version, text, created_at FROM guidelines WHERE scope = ? AND key = ? "
        "ORDER BY version DESC LIMIT 1", [scope, key],
    ))
    return rows[0] if rows else None


def _add_guidelines(db: Database, scope: str, key: str, text: str, now: str) -> None:
    version = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM guidelines WHERE scope = ? AND key = ?",
                         [scope, key]).fetchone()[0]
    db.execute("INSERT INTO guidelines (scope, key, version, text, created_at) VALUES (?, ?, ?, ?, ?)",
               [scope, key, version, text, now])
