"""Trained router versions (table ``router_versions``): each one's file and card, and which one is active."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from sqlite_utils import Database

from data import schema
from data.store_checks import check_name, check_required, loads_json
from data.store_core import StoreCore


def _router_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["card"] = loads_json(out["card"])
    out["active"] = bool(out["active"])
    return out


def _activate(db: Database, version: str, now: str) -> None:
    """Make ``version`` the active one; the partial unique index allows one active row at a time."""
    db.execute("UPDATE router_versions SET active = 0 WHERE active = 1 AND version != ?", [version])
    db.execute(
        "UPDATE router_versions SET active = 1, activated_at = ? WHERE version = ? AND active = 0",
        [now, version],
    )


class RouterVersionTables(StoreCore):
    """Record, list and activate router versions."""

    def record_router_version(self, version: str, path: str | os.PathLike[str], card: Mapping[str, Any],
                              active: bool = False) -> None:
        """Record a trained router (path and card as given; re-recording a version updates them)."""
        version = check_name(version, "router version")
        path_text = check_required(os.fspath(path) if isinstance(path, os.PathLike) else path, "router path", 4096)
        if not isinstance(card, Mapping):
            raise ValueError("card must be a dict")
        try:
            card_json = json.dumps(card, ensure_ascii=False, allow_nan=False, default=str)
        except (TypeError, ValueError) as error:
            raise ValueError(f"card is not representable as JSON: {error}") from None

        def write(db: Database) -> None:
            now = schema.utc_now()
            db.execute(
                "INSERT INTO router_versions (version, path, card, active, created_at) VALUES (?, ?, ?, 0, ?) "
                "ON CONFLICT(version) DO UPDATE SET path = excluded.path, card = excluded.card",
                [version, path_text, card_json, now],
            )
            if active:
                _activate(db, version, now)

        self._transact(write, what="router version")

    def set_active_router(self, version: str) -> None:
        """Make ``version`` the one active router (ValueError if it was never recorded)."""
        version = check_name(version, "router version")

        def write(db: Database) -> None:
            if db.execute("SELECT 1 FROM router_versions WHERE version = ?", [version]).fetchone() is None:
                raise ValueError(f"unknown router version {version!r}")
            _activate(db, version, schema.utc_now())

        self._transact(write, what="router activation")

    def router_versions(self) -> list[dict[str, Any]]:
        """Every recorded router version, oldest first: version, path, card, active, created_at, activated_at."""
        return self._read(lambda db: [
            _router_row(r) for r in db.query("SELECT * FROM router_versions ORDER BY created_at, version")
        ])

    def active_router(self) -> dict[str, Any] | None:
        """The active router version's row (as in :meth:`router_versions`), or None."""
        rows = self._read(lambda db: list(db.query("SELECT * FROM router_versions WHERE active = 1")))
        return _router_row(rows[0]) if rows else None
