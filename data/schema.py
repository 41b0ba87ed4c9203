"""The store's schema, as a list of numbered migrations applied when a database is opened.

Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the bump of
``PRAGMA user_version`` and a row in ``schema_migrations``, so a migration that fails leaves the
database exactly at the previous version (SQLite DDL is transactional). ``BEGIN IMMEDIATE`` takes the
write lock first and the version is read again inside it, so several processes opening a fresh
database at once apply each migration exactly once.

To change the schema, append a migration; never edit one that has shipped.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlite_utils import Database


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Database], None]


class MigrationError(Exception):
    """A migration failed; the database stays at ``version``."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version


def utc_now() -> str:
    """Every timestamp in the store: UTC, ISO 8601, microseconds, e.g. 2026-11-02T09:15:00.123456+00:00."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------------------------------
# Migration 1: the initial schema.

_INITIAL = """
CREATE TABLE schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TEXT NOT NULL
);

CREATE TABLE images (
    sha256      TEXT PRIMARY KEY CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    mode        TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE queries (
    id            TEXT PRIMARY KEY,
    image_sha256  TEXT NOT NULL REFERENCES images(sha256),
    question      TEXT NOT NULL,
    labels        TEXT,                 -- JSON list of strings, or NULL
    source        TEXT NOT NULL,        -- compare | annotate | api | ...
    session_id    TEXT,                 -- an annotation session id (sessions.id) or any client session
    item_id       TEXT,                 -- the dataset item, for annotation sessions
    category      TEXT,                 -- the known category of the question, when there is one
    created_at    TEXT NOT NULL
);
CREATE INDEX queries_image ON queries(image_sha256);
CREATE INDEX queries_created ON queries(created_at);
CREATE INDEX queries_session_item ON queries(session_id, item_id);

CREATE TABLE decisions (
    query_id      TEXT PRIMARY KEY REFERENCES queries(id) ON DELETE CASCADE,
    choice        TEXT NOT NULL,
    confidence    REAL,
    probabilities TEXT NOT NULL,        -- JSON object backend -> P(correct)
    category      TEXT,                 -- the router's predicted category
    version       TEXT,                 -- router version (not a foreign key: baselines have none)
    latency_ms    REAL,
    lambda_cost   REAL,
    created_at    TEXT NOT NULL
);

CREATE TABLE answers (
    id            INTEGER PRIMARY KEY,
    query_id      TEXT NOT NULL REFERENCES queries(id) ON DELETE CASCADE,
    backend       TEXT NOT NULL,
    text          TEXT,
    label_scores  TEXT,                 -- JSON list of [label, score], best first, or NULL
    latency_s     REAL,
    error         TEXT,
    created_at    TEXT NOT NULL,
    UNIQUE (query_id, backend)
);

-- One row per submission of the judge bar.
CREATE TABLE judgments (
    id            INTEGER PRIMARY KEY,
    query_id      TEXT NOT NULL REFERENCES queries(id) ON DELETE CASCADE,
    best          TEXT,                 -- a backend, 'tie', 'all_wrong' or NULL
    true_answer   TEXT,
    reason        TEXT CHECK (reason IS NULL OR length(reason) <= 2000),
    annotator     TEXT NOT NULL CHECK (length(annotator) BETWEEN 1 AND 100),
    session_id    TEXT,
    client_key    TEXT UNIQUE,          -- idempotency key sent by the page; NULL allowed many times
    created_at    TEXT NOT NULL
);
CREATE INDEX judgments_query ON judgments(query_id);
CREATE INDEX judgments_created ON judgments(created_at);

-- One row per judged backend of a submission; (query_id, backend) must name an answer.
CREATE TABLE verdicts (
    judgment_id   INTEGER NOT NULL REFERENCES judgments(id) ON DELETE CASCADE,
    query_id      TEXT NOT NULL,
    backend       TEXT NOT NULL,
    correct       REAL NOT NULL CHECK (correct >= 0 AND correct <= 1),
    created_at    TEXT NOT NULL,
    PRIMARY KEY (judgment_id, backend),
    FOREIGN KEY (query_id, backend) REFERENCES answers(query_id, backend) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX verdicts_query_backend ON verdicts(query_id, backend, correct);  -- covers the pairs' GROUP BY

-- Performance pairs imported from JSONL (benchmark runs, or judgments exported elsewhere).
CREATE TABLE imported_pairs (
    id            INTEGER PRIMARY KEY,
    query_id      TEXT NOT NULL,
    backend       TEXT NOT NULL,
    source        TEXT NOT NULL CHECK (source IN ('benchmark', 'judgment')),
    question      TEXT NOT NULL,
    image         TEXT,                 -- absolute path, as resolved at import
    image_sha256  TEXT,
    category      TEXT,
    answer        TEXT,
    correct       REAL NOT NULL CHECK (correct >= 0 AND correct <= 1),
    latency_s     REAL,
    extra         TEXT,                 -- JSON object of fields beyond the pairs format, or NULL
    created_at    TEXT NOT NULL,        -- when it was imported
    UNIQUE (query_id, backend, source)
);
CREATE INDEX imported_pairs_created ON imported_pairs(created_at);

CREATE TABLE router_versions (
    version       TEXT PRIMARY KEY,
    path          TEXT NOT NULL,
    card          TEXT NOT NULL,        -- JSON object
    active        INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
    created_at    TEXT NOT NULL,
    activated_at  TEXT
);
CREATE UNIQUE INDEX router_versions_one_active ON router_versions(active) WHERE active = 1;

CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    annotator     TEXT NOT NULL CHECK (length(annotator) BETWEEN 1 AND 100),
    dataset       TEXT NOT NULL,
    total         INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX sessions_annotator ON sessions(annotator, updated_at);

CREATE TABLE session_items (
    session_id    TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    item_id       TEXT NOT NULL,
    done_at       TEXT,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (session_id, position),
    UNIQUE (session_id, item_id)
);
"""


def _initial(db: Database) -> None:
    # executescript() would COMMIT the open transaction, so run the statements one by one.
    for statement in _split_sql(_INITIAL):
        db.execute(statement)


# --------------------------------------------------------------------------------------------------
# Migration 2: studies. Blind judging, several annotators per item, guidelines, adjudications.

_STUDIES = """
-- Guidelines (Markdown) of a session or a dataset; each change is a new version, never an edit.
CREATE TABLE guidelines (
    id            INTEGER PRIMARY KEY,
    scope         TEXT NOT NULL CHECK (scope IN ('session', 'dataset')),
    key           TEXT NOT NULL,        -- the session id, or the dataset spec
    version       INTEGER NOT NULL CHECK (version >= 1),
    text          TEXT NOT NULL CHECK (length(text) <= 50000),
    created_at    TEXT NOT NULL,
    UNIQUE (scope, key, version)
);

-- Whether the judge saw the model names, why a blind judgment is not anonymous (a model named
-- itself), and the guidelines it was made under.
ALTER TABLE judgments ADD COLUMN blind INTEGER NOT NULL DEFAULT 0 CHECK (blind IN (0, 1));
ALTER TABLE judgments ADD COLUMN flag_reason TEXT CHECK (flag_reason IS NULL OR length(flag_reason) <= 500);
ALTER TABLE judgments ADD COLUMN guidelines_id INTEGER REFERENCES guidelines(id);
CREATE INDEX judgments_session ON judgments(session_id);

-- k judgments per item (by k different annotators); blind sessions hide the model names.
ALTER TABLE sessions ADD COLUMN k INTEGER NOT NULL DEFAULT 1 CHECK (k BETWEEN 1 AND 100);
ALTER TABLE sessions ADD COLUMN blind INTEGER NOT NULL DEFAULT 0 CHECK (blind IN (0, 1));

-- Which annotator holds or has judged which item of a session; one row per (item, annotator), so
-- an annotator is never given an item twice.
CREATE TABLE session_assignments (
    session_id    TEXT NOT NULL,
    item_id       TEXT NOT NULL,
    annotator     TEXT NOT NULL CHECK (length(annotator) BETWEEN 1 AND 100),
    assigned_at   TEXT NOT NULL,        -- when it was (last) handed out
    skipped_at    TEXT,                 -- skipped: the hold is released, the item comes back at the end
    done_at       TEXT,                 -- judged
    created_at    TEXT NOT NULL,
    PRIMARY KEY (session_id, item_id, annotator),
    FOREIGN KEY (session_id, item_id) REFERENCES session_items(session_id, item_id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX session_assignments_annotator ON session_assignments(session_id, annotator);

-- A lead annotator's final verdict on a (query, backend) whose annotators split; the latest one
-- replaces the verdicts' mean in the performance pairs.
CREATE TABLE adjudications (
    id            INTEGER PRIMARY KEY,
    query_id      TEXT NOT NULL,
    backend       TEXT NOT NULL,
    correct       REAL NOT NULL CHECK (correct >= 0 AND correct <= 1),
    adjudicator   TEXT NOT NULL CHECK (length(adjudicator) BETWEEN 1 AND 100),
    reason        TEXT CHECK (reason IS NULL OR length(reason) <= 2000),
    created_at    TEXT NOT NULL,
    FOREIGN KEY (query_id, backend) REFERENCES answers(query_id, backend) ON DELETE CASCADE
);
CREATE INDEX adjudications_query_backend ON adjudications(query_id, backend, id);
"""


def _studies(db: Database) -> None:
    for statement in _split_sql(_STUDIES):
        db.execute(statement)


# --------------------------------------------------------------------------------------------------
# Migration 3: judgments changed later. The Annotate tab's undo stores a changed judgment as a new row
# and keeps the old one, marked replaced; statistics, pairs, agreement and training read only the
# judgments that were not replaced (``replaced_by IS NULL``).

_REPLACED = """
ALTER TABLE judgments ADD COLUMN replaced_by INTEGER REFERENCES judgments(id);
ALTER TABLE judgments ADD COLUMN replaced_at TEXT;
CREATE INDEX judgments_replaced ON judgments(replaced_by);
"""


def _replaced(db: Database) -> None:
    for statement in _split_sql(_REPLACED):
        db.execute(statement)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", _initial), Migration(2, "studies", _studies), Migration(3, "replaced judgments", _replaced),
)

#: The schema version this code writes; a database with a higher user_version is refused.
LATEST_VERSION = MIGRATIONS[-1].version


def _split_sql(script: str) -> list[str]:
    """Split a script of plain DDL statements (no triggers) on ';', dropping comments."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


# --------------------------------------------------------------------------------------------------
# The runner.

def _is_busy(error: sqlite3.Error) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


def begin_immediate(conn: sqlite3.Connection, timeout_s: float, *, poll_s: float = 0.004) -> None:
    """``BEGIN IMMEDIATE`` (take the write lock now), waiting while another writer holds it.

    SQLite's own busy handler backs off to sleeps of 25-100 ms, so a waiting process often sleeps
    through the moment the lock is free; here it waits at most a few ms at a time (busy_timeout
    ``poll_s``) and retries after a short random pause, until ``timeout_s`` has passed. This also
    covers the busy cases SQLite does not wait on (WAL recovery). Raises
    ``sqlite3.OperationalError`` ("database is locked") past the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            conn.execute(f"PRAGMA busy_timeout = {max(1, int(min(left, poll_s) * 1000))}")
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as error:
            if not _is_busy(error) or time.monotonic() >= deadline:
                raise
            time.sleep(random.uniform(0, min(poll_s / 2, max(0.0, deadline - time.monotonic()))))


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: Database, *, migrations: Sequence[Migration] = MIGRATIONS, timeout_s: float = 30.0) -> list[int]:
    """Apply every pending migration, each in its own transaction. Returns the versions applied here.

    The connection must be in autocommit mode (``isolation_level=None``). Raises
    :class:`MigrationError` when one fails; earlier ones stay applied.
    """
    applied: list[int] = []
    conn = db.conn
    for migration in sorted(migrations, key=lambda m: m.version):
        if user_version(conn) >= migration.version:
            continue
        begin_immediate(conn, timeout_s)
        try:
            current = user_version(conn)  # again, under the write lock: another process may have won
            if current >= migration.version:
                conn.execute("COMMIT")
                continue
            migration.apply(db)
            db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                [migration.version, migration.name, utc_now()],
            )
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            conn.execute("COMMIT")
        except BaseException as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(error, Exception):
                raise MigrationError(
                    f"migration {migration.version} ({migration.name}) failed: {error}",
                    user_version(conn),
                ) from error
            raise
        applied.append(migration.version)
    return applied
