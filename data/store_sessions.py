"""Annotation sessions (tables ``sessions`` and ``session_items``): an annotator's items in order, and
which are done, so a session resumes where it stopped."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlite_utils import Database

from data import schema
from data.store_checks import MAX_ANNOTATOR_CHARS, MAX_KEY_CHARS, check_required
from data.store_core import StoreCore


def mark_done(db: Database, session_id: str, item_id: str, now: str) -> bool:
    """Mark an item done inside the caller's transaction; True if it was not done before.

    ``record_judgment`` calls this in the judgment's own transaction, so progress and judgment are
    saved together.
    """
    changed = db.execute(
        "UPDATE session_items SET done_at = ? WHERE session_id = ? AND item_id = ? AND done_at IS NULL",
        [now, session_id, item_id],
    ).rowcount
    if changed:
        db.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", [now, session_id])
    return bool(changed)


def _summary(db: Database, row: Mapping[str, Any]) -> dict[str, Any]:
    done_count, next_item = db.execute(
        "SELECT COUNT(done_at), (SELECT item_id FROM session_items WHERE session_id = :id AND done_at IS NULL "
        "ORDER BY position LIMIT 1) FROM session_items WHERE session_id = :id",
        {"id": row["id"]},
    ).fetchone()
    return {**dict(row), "done_count": done_count, "next_item": next_item}


class SessionTables(StoreCore):
    """Start, read and advance annotation sessions."""

    def start_session(self, annotator: str, dataset: str, item_ids: Sequence[str]) -> str:
        """Start an annotation session over ``item_ids`` (in this order); returns its id."""
        annotator = check_required(annotator, "annotator", MAX_ANNOTATOR_CHARS).strip()
        dataset = check_required(dataset, "dataset", MAX_KEY_CHARS)
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
                "INSERT INTO sessions (id, annotator, dataset, total, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                [session_id, annotator, dataset, len(items), now, now],
            )
            db.conn.executemany(
                "INSERT INTO session_items (session_id, position, item_id, created_at) VALUES (?, ?, ?, ?)",
                [(session_id, i, item, now) for i, item in enumerate(items)],
            )

        self._transact(write, what="session")
        return session_id

    def session(self, session_id: str) -> dict[str, Any]:
        """id, annotator, dataset, item_ids (in order), done (set), done_count, total, next_item
        (the first item not done, None when finished), created_at, updated_at. KeyError if unknown."""
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
        """Mark an item of a session done (idempotent). ``record_judgment`` with the session id does
        this itself for the query's item. ValueError for an unknown session or item."""
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
        """An annotator's sessions, most recently active first (summaries without the item lists)."""
        annotator = check_required(annotator, "annotator", MAX_ANNOTATOR_CHARS).strip()
        return self._read(lambda db: [
            _summary(db, row)
            for row in db.query(
                "SELECT * FROM sessions WHERE annotator = ? ORDER BY updated_at DESC, created_at DESC", [annotator]
            )
        ])
