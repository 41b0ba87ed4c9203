"""The RouteLens store: every query, router decision, backend answer and human judgment, in SQLite.

    store = Store.open("var/routelens.sqlite")     # images go in var/images/
    sha = store.put_image(image)
    qid = store.record_query(image_sha256=sha, question="what is this?", labels=None)
    store.record_decision(qid, decision)
    store.record_answer(qid, "clip-b32", answer)
    store.record_judgment(query_id=qid, verdicts={"clip-b32": True}, client_key=key)

:class:`Store` is the tables' modules put together over one connection-and-transaction core:

- ``data/store_core.py``: opening and checking the file, connections, transactions, errors, counts;
- ``data/store_checks.py``: the input checks and limits (pure, run before any transaction);
- ``data/store_queries.py``: images, queries, decisions, answers, and ``query()``;
- ``data/store_judgments.py``: judgments and their verdicts;
- ``data/store_sessions.py``: annotation sessions and their items;
- ``data/store_routers.py``: router versions;
- ``data/store_pairs.py``: performance pairs and the import of pairs files (format: ``data/pairs.py``);
- ``data/store_stats.py``: accuracy statistics and pairwise outcomes.

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

from data.pairs import SOURCES
from data.store_checks import (
    BEST_SPECIAL,
    MAX_ANNOTATOR_CHARS,
    MAX_KEY_CHARS,
    MAX_LABELS,
    MAX_NAME_CHARS,
    MAX_QUESTION_CHARS,
    MAX_REASON_CHARS,
    MAX_TRUE_ANSWER_CHARS,
)
from data.store_core import (
    DATA_DIR_ENV,
    DB_ENV,
    DB_FILENAME,
    SYNCHRONOUS,
    JudgmentNotSaved,
    StoreError,
    default_db_path,
)
from data.store_judgments import JudgmentTables
from data.store_pairs import ImportReport, PairTables
from data.store_queries import QueryTables
from data.store_routers import RouterVersionTables
from data.store_sessions import SessionTables
from data.store_stats import StatsTables, stats_to_frame

__all__ = [
    "BEST_SPECIAL",
    "DATA_DIR_ENV",
    "DB_ENV",
    "DB_FILENAME",
    "MAX_ANNOTATOR_CHARS",
    "MAX_KEY_CHARS",
    "MAX_LABELS",
    "MAX_NAME_CHARS",
    "MAX_QUESTION_CHARS",
    "MAX_REASON_CHARS",
    "MAX_TRUE_ANSWER_CHARS",
    "SOURCES",
    "SYNCHRONOUS",
    "ImportReport",
    "JudgmentNotSaved",
    "Store",
    "StoreError",
    "default_db_path",
    "stats_to_frame",
]


class Store(QueryTables, JudgmentTables, SessionTables, RouterVersionTables, PairTables, StatsTables):
    """The SQLite store. Create with :meth:`Store.open`; safe to share between threads.

    Each base adds the reads and writes of one group of tables; all of them share the connections
    and transactions of :class:`data.store_core.StoreCore`.
    """
