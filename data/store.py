"""The RouteLens store: every query, router decision, backend answer and human judgment, in SQLite.

    store = Store.open("var/routelens.sqlite")     # images go in var/images/
    sha = store.put_image(image)
    qid = store.record_query(image_sha256=sha, question="what is this?", labels=None)
    store.record_decision(qid, decision)
    store.record_answer(qid, "clip-b32", answer)
    store.record_judgment(query_id=qid, verdicts={"clip-b32": True}, client_key=key)

Concurrency: a ``Store`` is shared by every thread of a process (Gradio runs handlers in a thread
pool). Each thread gets its own SQLite connection (``threading.local`` held by the instance). Writes
take the write lock up front (``BEGIN IMMEDIATE``) and wait for it with a busy timeout plus a retry
loop, so concurrent writers -- threads or processes -- queue instead of failing; only a lock held
longer than ``lock_timeout_s`` (30 s by default) surfaces, as an error.

Durability: WAL journal with ``synchronous=FULL``: a write that returned is in the fsynced WAL, so
it survives the process being killed and the machine losing power. (``NORMAL`` would survive a
killed process but may lose the last commits on power loss; it is an option of :meth:`Store.open`.)

Errors: bad input raises ``ValueError`` and writes nothing. A write that SQLite refuses (read-only
file, full disk, lock held too long, corrupt file) raises :class:`StoreError`, or for judgments its
subclass :class:`JudgmentNotSaved`, whose message can be shown to the person as it is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sqlite3
import threading
import time
import unicodedata
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from PIL import Image
from sqlite_utils import Database

from data import images as _images
from data import schema
from data.pairs import FIELDS as PAIR_FIELDS
from data.pairs import read_pairs

T = TypeVar("T")

#: Environment variable naming the database file (a Space points it at persistent storage).
DB_ENV = "ROUTELENS_DB"
#: Environment variable naming a data folder; the database is ``<folder>/routelens.sqlite``.
DATA_DIR_ENV = "ROUTELENS_DATA_DIR"
DB_FILENAME = "routelens.sqlite"

MAX_REASON_CHARS = 2000
MAX_TRUE_ANSWER_CHARS = 2000
MAX_ANNOTATOR_CHARS = 100
MAX_QUESTION_CHARS = 10_000
MAX_NAME_CHARS = 128
MAX_KEY_CHARS = 200
MAX_LABELS = 1000
#: Values of ``best`` that are not a backend name.
BEST_SPECIAL: tuple[str, ...] = ("tie", "all_wrong")
SYNCHRONOUS: tuple[str, ...] = ("FULL", "NORMAL", "EXTRA")
SOURCES: tuple[str, ...] = ("judgment", "benchmark")

_SQLITE_HEADER = b"SQLite format 3\x00"


class StoreError(Exception):
    """The store cannot do what was asked (corrupt or newer database, read-only file, full disk, ...)."""


class JudgmentNotSaved(StoreError):
    """A judgment was not saved; the message says why in words a person can act on."""


@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0
    #: (line number, message) for every bad line, in line order.
    errors: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def stats_to_frame(stats: Mapping[str, Any]) -> "Any":
    """``Store.stats()`` as a DataFrame (backend, category, n, accuracy), for a caller that has the stats."""
    import pandas as pd  # imported here: only the leaderboard and export need pandas

    rows = [
        {"backend": backend, "category": category, "n": cell["n"], "accuracy": cell["accuracy"]}
        for category, per_backend in stats.get("categories", {}).items()
        for backend, cell in per_backend.items()
    ]
    frame = pd.DataFrame(rows, columns=["backend", "category", "n", "accuracy"])
    return frame.sort_values(["backend", "category"], ignore_index=True)


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


# --------------------------------------------------------------------------------------------------
# Input checks (pure; they run before any transaction).

def _text(value: Any, name: str, max_chars: int, *, required: bool = True) -> str | None:
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_chars:
        raise ValueError(f"{name} is {len(value)} characters long; the limit is {max_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode text") from None
    return value


def _name(value: Any, what: str) -> str:
    """A backend (or similar) name: a short single-line string."""
    name = _text(value, what, MAX_NAME_CHARS)
    assert name is not None
    if name != name.strip() or any(unicodedata.category(c).startswith("C") for c in name):
        raise ValueError(f"{what} {name!r} must not have surrounding spaces or control characters")
    return name


def _backend(value: Any) -> str:
    name = _name(value, "backend name")
    if name in BEST_SPECIAL:
        raise ValueError(f"{name!r} is reserved and cannot be a backend name")
    return name


def _number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
            required: bool = False) -> float | None:
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:  # numpy scalars and the like
            if isinstance(value, (str, bytes, bool)):
                raise TypeError
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {type(value).__name__}") from None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{name} must be in [{low if low is not None else '-inf'}, "
                         f"{high if high is not None else 'inf'}], got {value!r}")
    return number


def _as_mapping(obj: Any, what: str) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if callable(getattr(obj, "to_json", None)):
        data = obj.to_json()
        if isinstance(data, Mapping):
            return dict(data)
    raise ValueError(f"{what} must be a dict (or a dataclass), got {type(obj).__name__}")


def _verdict(value: Any, backend: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return _number(value, f"verdict for {backend!r}", low=0.0, high=1.0)


def _normalize_since(since: Any) -> str | None:
    if since is None:
        return None
    if isinstance(since, datetime):
        moment = since
    elif isinstance(since, date):
        moment = datetime(since.year, since.month, since.day)
    elif isinstance(since, str):
        try:
            moment = datetime.fromisoformat(since.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"since must be an ISO date or time such as 2026-11-01, got {since!r}") from None
    else:
        raise ValueError(f"since must be an ISO date/time string or a datetime, got {type(since).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _describe(error: BaseException, lock_timeout_s: float) -> str:
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


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# --------------------------------------------------------------------------------------------------

_JUDGMENT_PAIRS_SQL = """
SELECT g.query_id, q.question, q.image_sha256, COALESCE(q.category, d.category) AS category,
       g.backend, a.text AS answer, g.correct, a.latency_s
FROM (SELECT query_id, backend, AVG(correct) AS correct FROM verdicts {where}
      GROUP BY query_id, backend) AS g
JOIN queries q ON q.id = g.query_id
JOIN answers a ON a.query_id = g.query_id AND a.backend = g.backend
LEFT JOIN decisions d ON d.query_id = g.query_id
"""

# For statistics: the same rows, without reading the answers (a foreign key guarantees each exists).
_JUDGMENT_SCORES_SQL = """
SELECT g.backend, COALESCE(q.category, d.category) AS category, g.correct
FROM (SELECT query_id, backend, AVG(correct) AS correct FROM verdicts {where}
      GROUP BY query_id, backend) AS g
JOIN queries q ON q.id = g.query_id
LEFT JOIN decisions d ON d.query_id = g.query_id
"""

_IMPORTED_PAIRS_SQL = """
SELECT query_id, question, image_sha256, category, backend, answer, correct, latency_s,
       source, image, extra
FROM imported_pairs {where}
"""


class Store:
    """The SQLite store. Create with :meth:`Store.open`; safe to share between threads."""

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
    ) -> "Store":
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
            version = schema.user_version(conn)
            names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
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
            if db.journal_mode != "wal":
                db.enable_wal()
        except sqlite3.OperationalError as error:
            if "readonly" in str(error).lower() or "read-only" in str(error).lower():
                if version < schema.LATEST_VERSION:
                    raise StoreError(f"{self.path} is read-only and needs a schema upgrade") from error
                self.read_only = True  # reads work; every write raises
                return
            raise StoreError(f"cannot switch {self.path} to WAL mode: {_describe(error, self.lock_timeout_s)}") from error
        try:
            schema.migrate(db, timeout_s=self.lock_timeout_s)
        except schema.MigrationError as error:
            raise StoreError(f"{self.path}: {error}; the database stays at schema version {error.version}") from error
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: cannot upgrade the schema: {_describe(error, self.lock_timeout_s)}") from error

    def _connect(self) -> Database:
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
            raise StoreError(f"cannot open {self.path}: {_describe(error, self.lock_timeout_s)}") from error
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

    def __enter__(self) -> "Store":
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
            raise error_type(f"{what} not saved: {_describe(error, self.lock_timeout_s)}") from error

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
            raise StoreError(f"cannot read {self.path}: {_describe(error, self.lock_timeout_s)}") from error

    # ---------------------------------------------------------------- images

    def put_image(self, image: Image.Image) -> str:
        """Store ``image`` as PNG under its sha256 (idempotent); returns the sha256."""
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

    def image_path(self, sha256: str) -> Path:
        """The file of a stored image (64 hex digits only; ValueError otherwise). It may not exist."""
        return _images.path_for(self.images_dir, sha256)

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
        question = _text(question, "question", MAX_QUESTION_CHARS)
        labels_json = None
        if labels is not None:
            if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
                raise ValueError("labels must be a list of strings or None")
            if len(labels) > MAX_LABELS:
                raise ValueError(f"at most {MAX_LABELS} labels, got {len(labels)}")
            labels_json = json.dumps([_text(label, "label", MAX_KEY_CHARS) for label in labels], ensure_ascii=False)
        source = _name(source, "source")
        session_id = _text(session_id, "session_id", MAX_KEY_CHARS, required=False)
        item_id = _text(item_id, "item_id", MAX_KEY_CHARS, required=False)
        category = _text(category, "category", MAX_KEY_CHARS, required=False)
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

    @staticmethod
    def _require_query(db: Database, query_id: str) -> None:
        if db.execute("SELECT 1 FROM queries WHERE id = ?", [query_id]).fetchone() is None:
            raise ValueError(f"unknown query id {query_id!r}")

    def record_decision(self, query_id: str, decision: Mapping[str, Any] | Any) -> None:
        """Record the router's decision for a query (replacing an earlier one).

        Keys: choice (required), confidence, probabilities (backend -> float), category, version,
        latency_ms, lambda_cost; other keys are ignored.
        """
        query_id = _text(query_id, "query_id", MAX_KEY_CHARS)
        data = _as_mapping(decision, "decision")
        choice = _name(data.get("choice"), "decision choice")
        confidence = _number(data.get("confidence"), "confidence", low=0.0, high=1.0)
        probabilities = data.get("probabilities") or {}
        if not isinstance(probabilities, Mapping):
            raise ValueError("probabilities must be a dict of backend -> number")
        probabilities = {
            _name(k, "probabilities key"): _number(v, f"probability of {k!r}", required=True)
            for k, v in probabilities.items()
        }
        category = _text(data.get("category"), "category", MAX_KEY_CHARS, required=False)
        version = data.get("version")
        version = None if version is None else _text(str(version), "version", MAX_KEY_CHARS)
        latency_ms = _number(data.get("latency_ms"), "latency_ms", low=0.0)
        lambda_cost = _number(data.get("lambda_cost"), "lambda_cost")

        def write(db: Database) -> None:
            self._require_query(db, query_id)
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
        query_id = _text(query_id, "query_id", MAX_KEY_CHARS)
        backend = _backend(backend)
        data = _as_mapping(answer, "answer")
        if data.get("backend") not in (None, backend):
            raise ValueError(f"answer is from backend {data['backend']!r}, not {backend!r}")
        text = data.get("text")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"answer text must be a string, got {type(text).__name__}")
        if text is not None:
            _text(text, "answer text", 10 * MAX_QUESTION_CHARS, required=False)
        scores = data.get("label_scores")
        scores_json = None
        if scores is not None:
            if isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence):
                raise ValueError("label_scores must be a list of [label, score] or None")
            clean = []
            for item in scores:
                if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2:
                    raise ValueError("each label_scores entry must be [label, score]")
                clean.append([_text(item[0], "label", MAX_KEY_CHARS),
                              _number(item[1], f"score of {item[0]!r}", required=True)])
            scores_json = json.dumps(clean, ensure_ascii=False)
        latency = _number(data.get("latency_s"), "latency_s", low=0.0)
        error = data.get("error")
        if error is not None:
            error = _text(str(error), "error", 10_000, required=False)

        def write(db: Database) -> None:
            self._require_query(db, query_id)
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

    # ---------------------------------------------------------------- judgments

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
        query_id = _text(query_id, "query_id", MAX_KEY_CHARS)
        if not isinstance(verdicts, Mapping):
            raise ValueError("verdicts must be a dict of backend -> correct (0..1, true/false or null)")
        clean: dict[str, float] = {}
        for backend, value in verdicts.items():
            backend = _backend(backend)
            score = _verdict(value, backend)
            if score is not None:
                clean[backend] = score
        if best is not None:
            best = _name(best, "best")
            if best == "all_wrong":
                right = sorted(b for b, v in clean.items() if v == 1.0)
                if right:
                    raise ValueError(f"best is 'all_wrong' but the verdicts mark {', '.join(right)} correct")
        if not clean and best is None:
            raise ValueError("nothing to save: no backend was judged and no best answer was chosen")
        true_answer = _text(true_answer, "true answer", MAX_TRUE_ANSWER_CHARS, required=False) or None
        reason = _text(reason, "reason", MAX_REASON_CHARS, required=False) or None
        annotator = "anonymous" if annotator is None else annotator
        annotator = _text(annotator, "annotator", MAX_ANNOTATOR_CHARS)
        annotator = annotator.strip()
        session_id = _text(session_id, "session_id", MAX_KEY_CHARS, required=False)
        client_key = _text(client_key, "client_key", MAX_KEY_CHARS, required=False) or None

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
                self._mark_done(db, session_id, item_id, now)
            return max(1, len(clean))

        return self._transact(write, what="judgment", error_type=JudgmentNotSaved)

    def judgment_rows(self, *, since: Any = None) -> Iterator[dict[str, Any]]:
        """Every judgment, one row per judged backend (a judgment with only ``best`` gives one row
        with backend None), with the query's question and the judged answer. For export."""
        since_iso = _normalize_since(since)
        sql = """
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
        return self._stream(sql, {"since": since_iso}, lambda row: row)

    # ---------------------------------------------------------------- performance pairs

    def _pair_parts(self, source: str | None, backends: Sequence[str] | None, since: Any, *,
                    scores_only: bool = False) -> list[tuple[str, str, list[Any]]]:
        """[(part, sql, params)] for the judgment-derived and the imported pairs."""
        if source is not None and source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)} or None, got {source!r}")
        names: list[str] | None = None
        if backends is not None:
            if isinstance(backends, (str, bytes)):
                raise ValueError("backends must be a list of names")
            names = [_name(b, "backend name") for b in backends]
        since_iso = _normalize_since(since)
        parts = []
        if source in (None, "judgment"):
            where, params = self._filters(names, since_iso)
            sql = _JUDGMENT_SCORES_SQL if scores_only else _JUDGMENT_PAIRS_SQL
            parts.append(("judgment", sql.format(where=where), params))
        where, params = self._filters(names, since_iso)
        if source is not None:
            where = (where + " AND" if where else "WHERE") + " source = ?"
            params.append(source)
        parts.append(("imported", _IMPORTED_PAIRS_SQL.format(where=where), params))
        return parts

    @staticmethod
    def _filters(names: list[str] | None, since_iso: str | None) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if names is not None:
            clauses.append(f"backend IN ({', '.join('?' for _ in names)})" if names else "0")
            params.extend(names)
        if since_iso is not None:
            clauses.append("created_at >= ?")
            params.append(since_iso)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

    def performance_pairs(
        self, *, source: str | None = None, backends: Sequence[str] | None = None, since: Any = None
    ) -> Iterator[dict[str, Any]]:
        """Training rows in the pairs format (DESIGN.md), judgments and imported pairs together.

        Judgment rows (source "judgment"): one per judged (query, backend); ``correct`` is the mean
        of every verdict on it; ``image`` is the absolute path of the stored image (None if the
        file is missing); ``category`` is the query's, else the router's predicted one. Imported rows
        follow, in import order, as imported (extra fields included). Filters: ``source``
        ("judgment" also matches imported rows whose source is "judgment"), ``backends``, ``since``
        (judgments made, or rows imported, at or after that UTC time). Streams from its own
        connection, so it can be consumed slowly or from another thread.
        """
        parts = self._pair_parts(source, backends, since)
        return self._iter_pairs(parts)

    def _iter_pairs(self, parts: list[tuple[str, str, list[Any]]]) -> Iterator[dict[str, Any]]:
        at_hand: dict[str, str | None] = {}

        def image_for(sha: str) -> str | None:
            if sha not in at_hand:
                path = self.image_path(sha)
                at_hand[sha] = str(path) if path.is_file() else None
            return at_hand[sha]

        if self._closed:
            raise StoreError("the store is closed")
        db = self._connect()
        conn = db.conn
        try:
            conn.execute("BEGIN")  # one snapshot across both parts
            for part, sql, params in parts:
                order = " ORDER BY q.created_at, g.query_id, g.backend" if part == "judgment" else " ORDER BY id"
                cursor = conn.execute(sql + order, params)
                while True:
                    batch = cursor.fetchmany(2000)
                    if not batch:
                        break
                    for r in batch:
                        if part == "judgment":
                            yield {
                                "query_id": r[0], "question": r[1], "image": image_for(r[2]),
                                "image_sha256": r[2], "category": r[3], "backend": r[4], "answer": r[5],
                                "correct": float(r[6]), "latency_s": r[7], "source": "judgment",
                            }
                        else:
                            row = {
                                "query_id": r[0], "question": r[1], "image": r[9], "image_sha256": r[2],
                                "category": r[3], "backend": r[4], "answer": r[5], "correct": float(r[6]),
                                "latency_s": r[7], "source": r[8],
                            }
                            if r[10]:
                                row.update(json.loads(r[10]))
                            yield row
        except sqlite3.Error as error:
            raise StoreError(f"cannot read pairs from {self.path}: {_describe(error, self.lock_timeout_s)}") from error
        finally:
            conn.close()

    def _stream(self, sql: str, params: Any, convert: Callable[[dict[str, Any]], dict[str, Any]]
                ) -> Iterator[dict[str, Any]]:
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
                        yield convert(dict(zip(keys, r)))
            except sqlite3.Error as error:
                raise StoreError(f"cannot read {self.path}: {_describe(error, self.lock_timeout_s)}") from error
            finally:
                db.conn.close()

        return rows()

    def import_pairs(self, path: str | os.PathLike[str], *, skip_bad: bool = False) -> ImportReport:
        """Import a pairs JSONL file (benchmark runs, or pairs exported from another store).

        Every bad line is reported by number. With bad lines nothing is imported unless
        ``skip_bad``, which imports the good ones. A row whose (query_id, backend, source) is
        already imported with the same values, or is a judgment pair this store already holds, is
        skipped (so importing a file twice is harmless); with different values it is a bad line.
        All in one transaction. Raises OSError when the file cannot be read.
        """
        result = read_pairs(path, strict=False)
        errors = list(result.errors)

        def write(db: Database) -> ImportReport:
            report = ImportReport()
            fresh: list[dict[str, Any]] = []
            for row, line in zip(result.rows, result.line_numbers):
                extras = {k: v for k, v in row.items() if k not in PAIR_FIELDS}
                record = {key: row[key] for key in PAIR_FIELDS}
                record["extra"] = json.dumps(extras, ensure_ascii=False, sort_keys=True) if extras else None
                existing = db.execute(
                    "SELECT question, image, image_sha256, category, answer, correct, latency_s, extra "
                    "FROM imported_pairs WHERE query_id = ? AND backend = ? AND source = ?",
                    [row["query_id"], row["backend"], row["source"]],
                ).fetchone()
                if existing is not None:
                    mine = tuple(record[k] for k in ("question", "image", "image_sha256", "category", "answer",
                                                     "correct", "latency_s", "extra"))
                    if tuple(existing) == mine:
                        report.skipped += 1
                    else:
                        errors.append((line, "conflicts with a pair imported earlier for the same query_id, "
                                             "backend and source (different values)"))
                    continue
                if row["source"] == "judgment" and db.execute(
                    "SELECT 1 FROM verdicts WHERE query_id = ? AND backend = ? LIMIT 1",
                    [row["query_id"], row["backend"]],
                ).fetchone() is not None:
                    report.skipped += 1  # this store holds the judgments themselves
                    continue
                fresh.append(record)
            report.errors = sorted(errors)
            if report.errors and not skip_bad:
                return report
            now = schema.utc_now()
            for record in fresh:
                record["created_at"] = now
            if fresh:
                db["imported_pairs"].insert_all(fresh, batch_size=500)
            report.imported = len(fresh)
            return report

        return self._transact(write, what="import")

    # ---------------------------------------------------------------- statistics

    def stats(self, *, source: str | None = "judgment") -> dict[str, Any]:
        """Counts, and accuracy per backend and per (category, backend), over performance pairs.

        ``source="judgment"`` (the default) counts human judgments only; "benchmark" imported
        benchmark pairs; None both. Each judged (query, backend) counts once, with the mean of its
        verdicts. Categories without a value are reported as "unknown".
        """
        parts = self._pair_parts(source, None, None, scores_only=True)

        def read(db: Database) -> dict[str, Any]:
            union = " UNION ALL ".join(
                f"SELECT backend, category, correct FROM ({sql})" for _, sql, _ in parts
            )
            params = [p for _, _, ps in parts for p in ps]
            grouped = db.execute(
                f"SELECT backend, COALESCE(category, 'unknown'), COUNT(*), SUM(correct) FROM ({union}) "
                "GROUP BY 1, 2 ORDER BY 1, 2",
                params,
            ).fetchall()
            best = dict(db.execute(
                "SELECT best, COUNT(*) FROM judgments WHERE best IS NOT NULL GROUP BY best"
            ).fetchall()) if source in (None, "judgment") else {}
            return {"grouped": grouped, "counts": self._counts(db), "best": best}

        raw = self._read(read)
        backends: dict[str, dict[str, Any]] = {}
        categories: dict[str, dict[str, dict[str, Any]]] = {}
        for backend, category, n, total in raw["grouped"]:
            entry = backends.setdefault(backend, {"n": 0, "correct": 0.0})
            entry["n"] += n
            entry["correct"] += total
            categories.setdefault(category, {})[backend] = {"n": n, "correct": total, "accuracy": total / n}
        for backend, entry in backends.items():
            entry["accuracy"] = entry["correct"] / entry["n"]
            entry["best"] = raw["best"].get(backend, 0)
        return {
            "source": source or "all",
            "counts": raw["counts"],
            "backends": dict(sorted(backends.items())),
            "categories": dict(sorted(categories.items())),
            # judgments whose best was not a backend
            "best_other": {k: raw["best"].get(k, 0) for k in BEST_SPECIAL},
        }

    @staticmethod
    def _counts(db: Database) -> dict[str, int]:
        counts = {
            table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("images", "queries", "answers", "decisions", "judgments", "verdicts",
                          "imported_pairs", "router_versions", "sessions")
        }
        counts["annotators"] = db.execute("SELECT COUNT(DISTINCT annotator) FROM judgments").fetchone()[0]
        return counts

    def stats_frame(self, *, source: str | None = "judgment") -> "Any":
        """A pandas DataFrame with columns backend, category, n, accuracy (one row per pair)."""
        return stats_to_frame(self.stats(source=source))

    def pairwise_outcomes(self, *, since: Any = None) -> list[tuple[str, str, float]]:
        """Battles for Bradley-Terry from judgments that chose a best answer.

        best = X: (X, Y, 1.0) for every other backend Y that answered the query. "tie" and
        "all_wrong" (FastChat's "both bad"): (A, B, 0.5) for every pair of backends that answered,
        A < B. Oldest judgment first.
        """
        since_iso = _normalize_since(since)

        def read(db: Database) -> list[tuple[str, str, float]]:
            judged = db.execute(
                "SELECT query_id, best FROM judgments WHERE best IS NOT NULL "
                "AND (? IS NULL OR created_at >= ?) ORDER BY id",
                [since_iso, since_iso],
            ).fetchall()
            answered: dict[str, list[str]] = {}
            for query_id, backend in db.execute(
                "SELECT query_id, backend FROM answers WHERE query_id IN "
                "(SELECT query_id FROM judgments WHERE best IS NOT NULL) ORDER BY query_id, backend"
            ):
                answered.setdefault(query_id, []).append(backend)
            outcomes: list[tuple[str, str, float]] = []
            for query_id, best in judged:
                backends = answered.get(query_id, [])
                if best in BEST_SPECIAL:
                    outcomes.extend((a, b, 0.5) for a, b in combinations(backends, 2))
                else:
                    outcomes.extend((best, other, 1.0) for other in backends if other != best)
            return outcomes

        return self._read(read)

    # ---------------------------------------------------------------- router versions

    @staticmethod
    def _router_row(row: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(row)
        out["card"] = _loads(out["card"])
        out["active"] = bool(out["active"])
        return out

    def record_router_version(self, version: str, path: str | os.PathLike[str], card: Mapping[str, Any],
                              active: bool = False) -> None:
        """Record a trained router (path and card as given; re-recording a version updates them)."""
        version = _name(version, "router version")
        path_text = _text(os.fspath(path) if isinstance(path, os.PathLike) else path, "router path", 4096)
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
                self._activate(db, version, now)

        self._transact(write, what="router version")

    @staticmethod
    def _activate(db: Database, version: str, now: str) -> None:
        db.execute("UPDATE router_versions SET active = 0 WHERE active = 1 AND version != ?", [version])
        db.execute(
            "UPDATE router_versions SET active = 1, activated_at = ? WHERE version = ? AND active = 0",
            [now, version],
        )

    def set_active_router(self, version: str) -> None:
        """Make ``version`` the one active router (ValueError if it was never recorded)."""
        version = _name(version, "router version")

        def write(db: Database) -> None:
            if db.execute("SELECT 1 FROM router_versions WHERE version = ?", [version]).fetchone() is None:
                raise ValueError(f"unknown router version {version!r}")
            self._activate(db, version, schema.utc_now())

        self._transact(write, what="router activation")

    def router_versions(self) -> list[dict[str, Any]]:
        """Every recorded router version, oldest first: version, path, card, active, created_at, activated_at."""
        return self._read(lambda db: [
            self._router_row(r) for r in db.query("SELECT * FROM router_versions ORDER BY created_at, version")
        ])

    def active_router(self) -> dict[str, Any] | None:
        rows = self._read(lambda db: list(db.query("SELECT * FROM router_versions WHERE active = 1")))
        return self._router_row(rows[0]) if rows else None

    # ---------------------------------------------------------------- annotation sessions

    def start_session(self, annotator: str, dataset: str, item_ids: Sequence[str]) -> str:
        """Start an annotation session over ``item_ids`` (in this order); returns its id."""
        annotator = _text(annotator, "annotator", MAX_ANNOTATOR_CHARS).strip()
        dataset = _text(dataset, "dataset", MAX_KEY_CHARS)
        if isinstance(item_ids, (str, bytes)) or not isinstance(item_ids, Sequence):
            raise ValueError("item_ids must be a list of strings")
        items = [_text(i, "item id", MAX_KEY_CHARS) for i in item_ids]
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

    def _session_summary(self, db: Database, row: Mapping[str, Any]) -> dict[str, Any]:
        done_count, next_item = db.execute(
            "SELECT COUNT(done_at), (SELECT item_id FROM session_items WHERE session_id = :id AND done_at IS NULL "
            "ORDER BY position LIMIT 1) FROM session_items WHERE session_id = :id",
            {"id": row["id"]},
        ).fetchone()
        return {**dict(row), "done_count": done_count, "next_item": next_item}

    def session(self, session_id: str) -> dict[str, Any]:
        """id, annotator, dataset, item_ids (in order), done (set), done_count, total, next_item
        (the first item not done, None when finished), created_at, updated_at. KeyError if unknown."""
        session_id = _text(session_id, "session_id", MAX_KEY_CHARS)

        def read(db: Database) -> dict[str, Any]:
            rows = list(db.query("SELECT * FROM sessions WHERE id = ?", [session_id]))
            if not rows:
                raise KeyError(f"unknown session {session_id!r}")
            summary = self._session_summary(db, rows[0])
            items = db.execute(
                "SELECT item_id, done_at FROM session_items WHERE session_id = ? ORDER BY position", [session_id]
            ).fetchall()
            summary["item_ids"] = [item for item, _ in items]
            summary["done"] = {item for item, done_at in items if done_at is not None}
            return summary

        return self._read(read)

    @staticmethod
    def _mark_done(db: Database, session_id: str, item_id: str, now: str) -> bool:
        changed = db.execute(
            "UPDATE session_items SET done_at = ? WHERE session_id = ? AND item_id = ? AND done_at IS NULL",
            [now, session_id, item_id],
        ).rowcount
        if changed:
            db.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", [now, session_id])
        return bool(changed)

    def mark_item_done(self, session_id: str, item_id: str) -> None:
        """Mark an item of a session done (idempotent). ``record_judgment`` with the session id does
        this itself for the query's item. ValueError for an unknown session or item."""
        session_id = _text(session_id, "session_id", MAX_KEY_CHARS)
        item_id = _text(item_id, "item id", MAX_KEY_CHARS)

        def write(db: Database) -> None:
            if db.execute("SELECT 1 FROM session_items WHERE session_id = ? AND item_id = ?",
                          [session_id, item_id]).fetchone() is None:
                if db.execute("SELECT 1 FROM sessions WHERE id = ?", [session_id]).fetchone() is None:
                    raise ValueError(f"unknown session {session_id!r}")
                raise ValueError(f"item {item_id!r} is not in session {session_id}")
            self._mark_done(db, session_id, item_id, schema.utc_now())

        self._transact(write, what="session progress")

    def sessions_for(self, annotator: str) -> list[dict[str, Any]]:
        """An annotator's sessions, most recently active first (summaries without the item lists)."""
        annotator = _text(annotator, "annotator", MAX_ANNOTATOR_CHARS).strip()
        return self._read(lambda db: [
            self._session_summary(db, row)
            for row in db.query(
                "SELECT * FROM sessions WHERE annotator = ? ORDER BY updated_at DESC, created_at DESC", [annotator]
            )
        ])

    # ---------------------------------------------------------------- one query, counts, checks

    def query(self, query_id: str) -> dict[str, Any]:
        """A query with its decision, answers (backend -> answer) and judgments. KeyError if unknown."""
        query_id = _text(query_id, "query_id", MAX_KEY_CHARS)

        def read(db: Database) -> dict[str, Any]:
            rows = list(db.query("SELECT * FROM queries WHERE id = ?", [query_id]))
            if not rows:
                raise KeyError(f"unknown query id {query_id!r}")
            out = dict(rows[0])
            out["labels"] = _loads(out["labels"])
            out["image_path"] = str(self.image_path(out["image_sha256"]))
            decisions = list(db.query("SELECT * FROM decisions WHERE query_id = ?", [query_id]))
            decision = None
            if decisions:
                decision = dict(decisions[0])
                decision.pop("query_id")
                decision["probabilities"] = _loads(decision["probabilities"])
            out["decision"] = decision
            answers = {}
            for row in db.query("SELECT * FROM answers WHERE query_id = ? ORDER BY backend", [query_id]):
                answer = dict(row)
                for key in ("id", "query_id"):
                    answer.pop(key)
                answer["label_scores"] = _loads(answer["label_scores"])
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

    def counts(self) -> dict[str, int]:
        """Rows per table, and the number of distinct annotators."""
        return self._read(self._counts)

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check``: ["ok"] when the file is sound."""
        return self._read(lambda db: [row[0] for row in db.execute("PRAGMA integrity_check")])

    def schema_version(self) -> int:
        return self._read(lambda db: schema.user_version(db.conn))


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
