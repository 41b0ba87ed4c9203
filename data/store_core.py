"""The store's one connection-and-transaction core: opening a file, connections per thread, transactions.

Every table module of the store (``data/store_*.py``) subclasses :class:`StoreCore` and reaches the
database only through it: :meth:`StoreCore._transact` for a write (one ``BEGIN IMMEDIATE``
transaction; SQLite failures become :class:`StoreError` with a message for people),
:meth:`StoreCore._read` for a consistent snapshot on this thread's connection, and
:meth:`StoreCore._stream` for rows read from a connection of their own. ``data.store.Store`` puts the
table modules together; see that module for the concurrency and durability rules.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

from sqlite_utils import Database

from data import images as _images
from data import schema

T = TypeVar("T")

#: Environment variable naming the database file (a Space points it at persistent storage).
DB_ENV = "ROUTELENS_DB"
#: Environment variable naming a data folder; the database is ``<folder>/routelens.sqlite``.
DATA_DIR_ENV = "ROUTELENS_DATA_DIR"
DB_FILENAME = "routelens.sqlite"
SYNCHRONOUS: tuple[str, ...] = ("FULL", "NORMAL", "EXTRA")
#: Tables :meth:`StoreCore.counts` reports, in that order.
COUNTED_TABLES: tuple[str, ...] = (
    "images", "queries", "answers", "decisions", "judgments", "verdicts", "imported_pairs", "router_versions",
    "sessions",
)

_SQLITE_HEADER = b"SQLite format 3\x00"


class StoreError(Exception):
    """The store cannot do what was asked (corrupt or newer database, read-only file, full disk, ...)."""


class JudgmentNotSaved(StoreError):
    """A judgment was not saved; the message says why in words a person can act on."""


def default_db_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$ROUTELENS_DB``, else ``$ROUTELENS_DATA_DIR/routelens.sqlite``, else on a Hugging Face Space with
    persistent storage ``/data/routelens/routelens.sqlite``, else ``var/routelens.sqlite``."""
    env = os.environ if environ is None else environ
    if env.get(DB_ENV):
        return Path(env[DB_ENV])
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV]) / DB_FILENAME
    if env.get("SPACE_ID") and os.access("/data", os.W_OK):
        return Path("/data/routelens") / DB_FILENAME
    return Path("var") / DB_FILENAME


def describe_error(error: BaseException, lock_timeout_s: float) -> str:
    """A SQLite failure in words a person can act on."""
    text = str(error)
    low = text.lower()
    if "readonly" in low or "read-only" in low or "read only" in low:
        return "the database is read-only"
    if "is full" in low:
        return "the disk is full"
    if "locked" in low or "busy" in low:
        return f"the database stayed locked by another writer for more than {lock_timeout_s:g} s"
    if "malformed" in low or "not a database" in low:
        return f"the database file is corrupt ({text})"
    if "closed" in low:
        return "the store is closed"
    return text


def count_rows(db: Database) -> dict[str, int]:
    """Rows per table, and the number of distinct annotators.

    ``judgments`` counts the judgments that stand; one a person took back (undo, a changed verdict)
    stays in the table, marked replaced, and is counted under ``judgments_replaced`` instead.
    """
    counts = {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in COUNTED_TABLES}
    replaced = db.execute("SELECT COUNT(*) FROM judgments WHERE replaced_by IS NOT NULL").fetchone()[0]
    counts["judgments"] -= replaced
    counts["judgments_replaced"] = replaced
    counts["annotators"] = db.execute("SELECT COUNT(DISTINCT annotator) FROM judgments WHERE replaced_by IS NULL").fetchone()[0]
    return counts


def _check_header(path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except OSError as error:
        raise StoreError(f"cannot read {path}: {error}") from error
    if header and header != _SQLITE_HEADER:
        raise StoreError(
            f"{path} is not a SQLite database (corrupt, or another kind of file); it was left unchanged. "
            "Restore a backup or choose another --db path."
        )


class StoreCore:
    """Opening, connections and transactions; the table modules add the reads and writes."""

    def __init__(self, path: Path, *, read_only: bool, synchronous: str, lock_timeout_s: float) -> None:
        self.path = path
        self.data_dir = path.parent
        self.images_dir = self.data_dir / "images"
        self.read_only = read_only
        self.synchronous = synchronous
        self.lock_timeout_s = lock_timeout_s
        self._local = threading.local()
        self._connections: list[Database] = []
        self._guard = threading.Lock()
        # Threads of this process queue here for the write lock, handing it over at once, instead
        # of each polling SQLite's lock with sleeps (which halves throughput under contention).
        self._write_lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()

    # ---------------------------------------------------------------- opening and connections

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        read_only: bool = False,
        synchronous: str = "FULL",
        lock_timeout_s: float = 30.0,
        check: bool = True,
    ) -> Self:
        """Open (or create) the database at ``path`` and bring its schema up to date.

        Raises :class:`StoreError`, leaving the file untouched, when it is not a SQLite database or
        is corrupt, belongs to a newer RouteLens (schema version above ours), or is another
        program's database. ``check`` runs ``PRAGMA quick_check`` (linear in the file size).
        ``read_only`` opens it for reading only (every write then raises). ``create=False`` refuses
        to create a missing file.
        """
        synchronous = str(synchronous).upper()
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}, got {synchronous!r}")
        if not lock_timeout_s > 0:
            raise ValueError("lock_timeout_s must be > 0")
        if str(path) in ("", ":memory:"):
            raise StoreError("the store needs a database file path (in-memory databases are not supported)")
        path = Path(os.path.abspath(Path(path).expanduser()))
        if path.is_dir():
            raise StoreError(f"{path} is a folder; --db must name the database file, e.g. {path / DB_FILENAME}")
        if not path.exists():
            if not create or read_only:
                raise StoreError(f"no database at {path}")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(f"cannot create the data folder {path.parent}: {error}") from error
        else:
            _check_header(path)

        store = cls(path, read_only=read_only, synchronous=synchronous, lock_timeout_s=lock_timeout_s)
        try:
            store._prepare(check=check)
        except BaseException:
            store.close()
            raise
        return store

    def _prepare(self, *, check: bool) -> None:
        db = self._db()
        conn = db.conn
        # Read-only inspection first: nothing is written before we know the file is ours.
        try:
            # One read transaction, so the version and the table list come from the same snapshot: read
            # apart, another process's migration could commit between them and its fresh tables would
            # look like "another program's database" at version 0.
            conn.execute("BEGIN")
            try:
                version = schema.user_version(conn)
                names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            finally:
                conn.execute("COMMIT")
            if check:
                problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise StoreError(
                        f"{self.path} is corrupt (quick_check: {'; '.join(problems[:3])}); it was left "
                        "unchanged. Restore a backup, or try: sqlite3 FILE .recover"
                    )
        except sqlite3.DatabaseError as error:
            if "unable to open" in str(error).lower() or "readonly" in str(error).lower():
                raise StoreError(f"cannot read {self.path} ({error}): check the file's permissions") from error
            raise StoreError(
                f"{self.path} is not a readable SQLite database ({error}); it was left unchanged"
            ) from error
        if version > schema.LATEST_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this RouteLens supports "
                f"({schema.LATEST_VERSION}); upgrade RouteLens. The file was left unchanged."
            )
        ours = [n for n in names if not n.startswith("sqlite_")]
        if version == 0 and ours:
            raise StoreError(
                f"{self.path} is a SQLite database of another program (tables: {', '.join(sorted(ours)[:5])}); "
                "it was left unchanged. Choose another --db path."
            )
        if version < schema.LATEST_VERSION and self.read_only:
            raise StoreError(f"{self.path} needs a schema upgrade (version {version}) but was opened read-only")
        if self.read_only:
            return
        try:
            self._switch_to_wal(db)
        except sqlite3.OperationalError as error:
            if "readonly" in str(error).lower() or "read-only" in str(error).lower():
                if version < schema.LATEST_VERSION:
                    raise StoreError(f"{self.path} is read-only and needs a schema upgrade") from error
                self.read_only = True  # reads work; every write raises
                return
            raise StoreError(f"cannot switch {self.path} to WAL mode: {self._describe(error)}") from error
        try:
            schema.migrate(db, timeout_s=self.lock_timeout_s)
        except schema.MigrationError as error:
            raise StoreError(f"{self.path}: {error}; the database stays at schema version {error.version}") from error
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: cannot upgrade the schema: {self._describe(error)}") from error

    def _switch_to_wal(self, db: Database) -> None:
        """Put the file in WAL mode, retrying while another process holds a lock.

        Changing the journal mode needs an exclusive lock, and SQLite does not always run the busy
        handler for it (a reader upgrading its lock gets SQLITE_BUSY at once to avoid a deadlock), so
        several processes opening a fresh file together can see "database is locked" immediately.
        Retry with a little jitter until ``lock_timeout_s``; another process may well have switched
        the mode meanwhile, which is checked on every try.
        """
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.01
        while True:
            try:
                if db.journal_mode != "wal":
                    db.enable_wal()
                return
            except sqlite3.OperationalError as error:
                text = str(error).lower()
                if ("locked" not in text and "busy" not in text) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)

    def _describe(self, error: BaseException) -> str:
        return describe_error(error, self.lock_timeout_s)

    def _connect(self) -> Database:
        """A new connection with the store's settings (foreign keys on, the chosen ``synchronous``)."""
        try:
            if self.read_only:
                conn = sqlite3.connect(
                    self.path.as_uri() + "?mode=ro", uri=True, timeout=self.lock_timeout_s,
                    isolation_level=None, check_same_thread=False,
                )
            else:
                conn = sqlite3.connect(
                    str(self.path), timeout=self.lock_timeout_s, isolation_level=None, check_same_thread=False
                )
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as error:
            raise StoreError(f"cannot open {self.path}: {self._describe(error)}") from error
        return Database(conn, recursive_triggers=False, execute_plugins=False)

    def _db(self) -> Database:
        """This thread's connection (opened on first use)."""
        if self._closed:
            raise StoreError("the store is closed")
        if self._pid != os.getpid():
            # A forked child must not use its parent's connections: start afresh (leave them open,
            # they belong to the parent).
            self._pid = os.getpid()
            self._local = threading.local()
            self._connections = []
            self._guard = threading.Lock()
            self._write_lock = threading.Lock()
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            with self._guard:
                if self._closed:
                    db.conn.close()
                    raise StoreError("the store is closed")
                self._connections.append(db)
            self._local.db = db
        return db

    def close(self) -> None:
        """Close every connection this store opened (any thread's). The store cannot be used after."""
        with self._guard:
            self._closed = True
            connections, self._connections = self._connections, []
        for db in connections:
            try:
                db.conn.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}{', read-only' if self.read_only else ''})"

    # ---------------------------------------------------------------- transactions

    @contextmanager
    def _write(self) -> Iterator[Database]:
        if self.read_only:
            raise StoreError("the database is read-only")
        db = self._db()
        conn = db.conn
        if conn.in_transaction:
            raise StoreError("internal error: a write transaction is already open on this thread")
        started = time.monotonic()
        if not self._write_lock.acquire(timeout=self.lock_timeout_s):
            raise sqlite3.OperationalError("database is locked")
        try:
            remaining = max(0.001, self.lock_timeout_s - (time.monotonic() - started))
            schema.begin_immediate(conn, remaining)
            try:
                yield db
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        finally:
            self._write_lock.release()

    def _transact(self, fn: Callable[[Database], T], *, what: str,
                  error_type: type[StoreError] = StoreError) -> T:
        """Run ``fn`` in one write transaction. ValueError passes through (nothing written);
        any SQLite failure becomes ``error_type`` with a message for people."""
        try:
            with self._write() as db:
                return fn(db)
        except ValueError:
            raise
        except (sqlite3.Error, StoreError) as error:
            if isinstance(error, error_type):
                raise
            raise error_type(f"{what} not saved: {self._describe(error)}") from error

    def _read(self, fn: Callable[[Database], T]) -> T:
        """Run ``fn`` on one consistent snapshot."""
        db = self._db()
        conn = db.conn
        try:
            conn.execute("BEGIN")
            try:
                return fn(db)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise StoreError(f"cannot read {self.path}: {self._describe(error)}") from error

    def _stream(self, sql: str, params: Any, convert: Callable[[dict[str, Any]], dict[str, Any]]
                ) -> Iterator[dict[str, Any]]:
        """Rows of ``sql`` as dicts, read lazily from a connection of their own (closed when done)."""
        if self._closed:
            raise StoreError("the store is closed")

        def rows() -> Iterator[dict[str, Any]]:
            db = self._connect()
            try:
                cursor = db.conn.execute(sql, params)
                keys = [d[0] for d in cursor.description]
                while True:
                    batch = cursor.fetchmany(2000)
                    if not batch:
                        break
                    for r in batch:
                        yield convert(dict(zip(keys, r, strict=True)))
            except sqlite3.Error as error:
                raise StoreError(f"cannot read {self.path}: {self._describe(error)}") from error
            finally:
                db.conn.close()

        return rows()

    # ---------------------------------------------------------------- the whole database

    def image_path(self, sha256: str) -> Path:
        """The file of a stored image (64 hex digits only; ValueError otherwise). It may not exist."""
        return _images.path_for(self.images_dir, sha256)

    def counts(self) -> dict[str, int]:
        """Rows per table, and the number of distinct annotators."""
        return self._read(count_rows)

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check``: ["ok"] when the file is sound."""
        return self._read(lambda db: [row[0] for row in db.execute("PRAGMA integrity_check")])

    def schema_version(self) -> int:
        return self._read(lambda db: schema.user_version(db.conn))
