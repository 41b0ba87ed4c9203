"""The store: schema and migrations, validation with no partial writes, refusal of bad files, reads."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import threading
from pathlib import Path

import pytest
from PIL import Image
from sqlite_utils import Database

from data import schema
from data.images import image_key
from data.store import JudgmentNotSaved, Store, StoreError, default_db_path

TABLES = {"images", "queries", "answers", "decisions", "judgments", "verdicts", "imported_pairs",
          "router_versions", "sessions", "session_items", "schema_migrations"}


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "data" / "routelens.sqlite"


@pytest.fixture
def store(db_path):
    store = Store.open(db_path)
    yield store
    store.close()


def add_query(store: Store, backends=("a", "b", "c"), *, colour=(200, 30, 30), **query) -> str:
    sha = store.put_image(Image.new("RGB", (8, 8), colour))
    query.setdefault("question", "what colour is it?")
    query.setdefault("labels", ["red", "green"])
    qid = store.record_query(image_sha256=sha, **query)
    store.record_decision(qid, {"choice": backends[0], "confidence": 0.8, "probabilities": dict.fromkeys(backends, 0.5),
                                "category": "attribute", "version": "v1", "latency_ms": 2.0, "lambda_cost": 0.1})
    for backend in backends:
        store.record_answer(qid, backend, {"text": f"{backend} says red", "label_scores": [["red", 0.9]],
                                           "latency_s": 0.2, "error": None})
    return qid


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- schema and opening


def test_open_creates_the_schema_in_wal_with_foreign_keys(store, db_path):
    assert store.data_dir == db_path.parent and store.images_dir == db_path.parent / "images"
    raw = sqlite3.connect(db_path)
    try:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables >= TABLES
        assert raw.execute("PRAGMA user_version").fetchone()[0] == schema.LATEST_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall() == [
            (m.version, m.name) for m in schema.MIGRATIONS]
        for table in TABLES:  # every row timestamped
            columns = {r[1] for r in raw.execute(f"PRAGMA table_info({table})")}
            assert columns & {"created_at", "applied_at"}, table
    finally:
        raw.close()
    conn = store._db().conn
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_reopen_keeps_data_and_does_not_migrate_again(db_path):
    with Store.open(db_path) as store:
        qid = add_query(store)
    with Store.open(db_path) as store:
        assert store.query(qid)["question"] == "what colour is it?"
        assert store.schema_version() == schema.LATEST_VERSION


def _extra_migrations(fail: bool):
    def add_notes(db: Database) -> None:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, created_at TEXT)")
        db.execute("ALTER TABLE judgments ADD COLUMN flagged INTEGER")
        if fail:
            raise RuntimeError("boom")

    return schema.MIGRATIONS + (schema.Migration(schema.LATEST_VERSION + 1, "notes", add_notes),)


def test_a_failing_migration_rolls_back_alone(db_path):
    with Store.open(db_path) as store:
        qid = add_query(store)
    db = Database(sqlite3.connect(db_path, isolation_level=None))
    try:
        with pytest.raises(schema.MigrationError, match=f"migration {schema.LATEST_VERSION + 1} \\(notes\\) failed: boom") as caught:
            schema.migrate(db, migrations=_extra_migrations(fail=True))
        assert caught.value.version == schema.LATEST_VERSION
        assert schema.user_version(db.conn) == schema.LATEST_VERSION and not db["notes"].exists()
        assert "flagged" not in db["judgments"].columns_dict
        assert schema.migrate(db, migrations=_extra_migrations(fail=False)) == [schema.LATEST_VERSION + 1]
        assert schema.user_version(db.conn) == schema.LATEST_VERSION + 1 and db["notes"].exists()
        assert [r["name"] for r in db.query("SELECT name FROM schema_migrations ORDER BY version")] == [m.name for m in schema.MIGRATIONS] + ["notes"]
        assert db.execute("SELECT COUNT(*) FROM queries WHERE id = ?", [qid]).fetchone()[0] == 1
        assert schema.migrate(db, migrations=_extra_migrations(fail=False)) == []
    finally:
        db.conn.close()


def test_threads_opening_a_fresh_database_at_once_migrate_once(db_path):
    errors, stores = [], []
    barrier = threading.Barrier(6)

    def opener():
        barrier.wait()
        try:
            stores.append(Store.open(db_path))
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert errors == []
    with Store.open(db_path) as store:
        assert store._db().execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(schema.MIGRATIONS)


def test_garbage_file_is_refused_and_left_unchanged(db_path):
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(bytes(range(256)) * 64)
    before = file_digest(db_path)
    with pytest.raises(StoreError, match="not a SQLite database.*left unchanged"):
        Store.open(db_path)
    assert file_digest(db_path) == before
    assert sorted(p.name for p in db_path.parent.iterdir()) == [db_path.name]


def test_damaged_pages_are_refused_and_left_unchanged(db_path):
    with Store.open(db_path) as store:
        for i in range(30):
            add_query(store, colour=(i, i, i), question="x" * 500)
    data = bytearray(db_path.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    data[2 * page: 5 * page] = b"\xa5" * (3 * page)  # keep the header page, smash the b-trees
    db_path.write_bytes(bytes(data))
    before = file_digest(db_path)
    with pytest.raises(StoreError, match="corrupt|not a readable"):
        Store.open(db_path)
    assert file_digest(db_path) == before


def test_newer_schema_is_refused_and_left_unchanged(db_path):
    Store.open(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {schema.LATEST_VERSION + 1}")
    raw.close()
    before = file_digest(db_path)
    with pytest.raises(StoreError, match="newer than this RouteLens supports"):
        Store.open(db_path)
    assert file_digest(db_path) == before


def test_another_programs_database_is_refused(db_path):
    db_path.parent.mkdir(parents=True)
    raw = sqlite3.connect(db_path)
    raw.execute("CREATE TABLE accounts (id INTEGER)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="another program"):
        Store.open(db_path)


def test_open_refusals(tmp_path):
    with pytest.raises(StoreError, match="no database"):
        Store.open(tmp_path / "missing.sqlite", create=False)
    with pytest.raises(StoreError, match="is a folder"):
        Store.open(tmp_path)
    with pytest.raises(StoreError, match="file path"):
        Store.open(":memory:")


def test_default_db_path_follows_the_environment():
    assert default_db_path({"ROUTELENS_DB": "/x/y.sqlite"}) == Path("/x/y.sqlite")
    assert default_db_path({"ROUTELENS_DATA_DIR": "/data"}) == Path("/data/routelens.sqlite")
    assert default_db_path({}) == Path("var/routelens.sqlite")


# ----------------------------------------------------------------------------- images


def test_put_image_is_content_addressed_and_idempotent(store):
    image = Image.new("RGB", (5, 3), (1, 2, 3))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    with_exif = Image.open(io.BytesIO(buffer.getvalue()))
    sha = store.put_image(with_exif)
    assert store.put_image(with_exif) == sha
    path = store.image_path(sha)
    assert path == store.images_dir / sha[:2] / f"{sha}.png"
    assert image_key(path) == sha
    assert b"SecretCam" not in path.read_bytes()
    assert store.image_path(sha.upper()) == path
    assert store.counts()["images"] == 1
    path.unlink()  # a lost file is rewritten
    assert store.put_image(with_exif) == sha and path.is_file()


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a" * 63, "g" * 64, "", "/" + "a" * 64, None])
def test_image_path_only_accepts_a_hash(store, bad):
    with pytest.raises(ValueError):
        store.image_path(bad)


def test_unusual_image_modes_are_stored(store):
    for image in (Image.new("CMYK", (4, 4)), Image.new("P", (4, 4)), Image.new("LA", (4, 4)), Image.new("I;16", (4, 4))):
        assert Path(store.image_path(store.put_image(image))).is_file()
    with pytest.raises(ValueError, match="PIL image"):
        store.put_image("cat.png")


# ----------------------------------------------------------------------------- queries and answers


def test_record_query_decision_answers_and_read_back(store):
    qid = add_query(store, source="annotate", session_id="s1", item_id="item-3", category="attribute")
    record = store.query(qid)
    assert record["labels"] == ["red", "green"] and record["item_id"] == "item-3"
    assert Path(record["image_path"]).is_file()
    assert record["decision"]["choice"] == "a" and record["decision"]["probabilities"]["b"] == 0.5
    assert record["answers"]["c"]["label_scores"] == [["red", 0.9]]
    assert record["created_at"].endswith("+00:00")
    with pytest.raises(KeyError):
        store.query("nope")


def test_answer_objects_with_to_json_are_accepted(store):
    from dataclasses import dataclass

    @dataclass
    class Answer:  # the shape of backends.base.Answer
        backend: str
        text: str
        label_scores: list | None = None
        latency_s: float = 0.0
        error: str | None = None

    qid = add_query(store, backends=("a",))
    store.record_answer(qid, "z", Answer("z", "hello", [("x", 0.5)], 0.1))
    assert store.query(qid)["answers"]["z"]["text"] == "hello"
    with pytest.raises(ValueError, match="from backend 'z', not 'y'"):
        store.record_answer(qid, "y", Answer("z", "hello"))


@pytest.mark.parametrize("call, message", [
    (lambda s, q, sha: s.record_query(image_sha256="0" * 64, question="q", labels=None), "unknown image"),
    (lambda s, q, sha: s.record_query(image_sha256=sha, question="  ", labels=None), "question must not be empty"),
    (lambda s, q, sha: s.record_query(image_sha256=sha, question="q", labels="red"), "labels must be a list"),
    (lambda s, q, sha: s.record_decision("nope", {"choice": "a"}), "unknown query id"),
    (lambda s, q, sha: s.record_decision(q, {"choice": "a", "confidence": 2}), "confidence must be in"),
    (lambda s, q, sha: s.record_answer("nope", "a", {"text": "x"}), "unknown query id"),
    (lambda s, q, sha: s.record_answer(q, "tie", {"text": "x"}), "reserved"),
    (lambda s, q, sha: s.record_answer(q, "a", {"text": "x", "latency_s": -1}), "latency_s must be in"),
])
def test_bad_records_raise_and_write_nothing(store, call, message):
    qid = add_query(store)
    sha = store.query(qid)["image_sha256"]
    before = store.counts()
    with pytest.raises(ValueError, match=message):
        call(store, qid, sha)
    assert store.counts() == before


# ----------------------------------------------------------------------------- judgments


def test_judgment_with_the_same_client_key_is_stored_once(store):
    qid = add_query(store)
    assert store.record_judgment(query_id=qid, verdicts={"a": True, "b": 0.5, "c": None}, best="a",
                                 annotator="ann", client_key="page-1") == 2
    assert store.record_judgment(query_id=qid, verdicts={"a": False}, client_key="page-1") == 0
    assert store.record_judgment(query_id=qid, verdicts={}, best="tie") == 1
    counts = store.counts()
    assert counts["judgments"] == 2 and counts["verdicts"] == 2
    judgment = store.query(qid)["judgments"][0]
    assert judgment["verdicts"] == {"a": 1.0, "b": 0.5} and judgment["best"] == "a"


@pytest.mark.parametrize("kwargs, message", [
    ({"query_id": "missing", "verdicts": {"a": True}}, "unknown query id"),
    ({"verdicts": {"zzz": True}}, "no answer from zzz"),
    ({"verdicts": {"a": True}, "best": "zzz"}, "no answer from zzz"),
    ({"verdicts": {"a": 1.5}}, "verdict for 'a' must be in"),
    ({"verdicts": {"a": -0.1}}, "verdict for 'a' must be in"),
    ({"verdicts": {"a": float("nan")}}, "finite"),
    ({"verdicts": {"a": "yes"}}, "must be a number"),
    ({"verdicts": ["a"]}, "verdicts must be a dict"),
    ({"verdicts": {}}, "nothing to save"),
    ({"verdicts": {"a": None}}, "nothing to save"),
    ({"verdicts": {"a": True}, "best": "all_wrong"}, "verdicts mark a correct"),
    ({"verdicts": {"a": True}, "reason": "x" * 2001}, "reason is 2001 characters long; the limit is 2000"),
    ({"verdicts": {"a": True}, "annotator": "n" * 101}, "annotator is 101 characters"),
    ({"verdicts": {"a": True}, "annotator": "   "}, "annotator must not be empty"),
    ({"verdicts": {"a": True}, "true_answer": 5}, "true answer must be a string"),
])
def test_bad_judgments_raise_value_error_and_write_nothing(store, kwargs, message):
    qid = add_query(store)
    kwargs.setdefault("query_id", qid)
    with pytest.raises(ValueError, match=message):
        store.record_judgment(**kwargs)
    counts = store.counts()
    assert counts["judgments"] == 0 and counts["verdicts"] == 0


def test_a_failure_half_way_through_a_judgment_leaves_nothing(store):
    qid = add_query(store)
    store._db().execute(
        "CREATE TRIGGER refuse_c BEFORE INSERT ON verdicts WHEN NEW.backend = 'c' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(JudgmentNotSaved, match="refused"):
        store.record_judgment(query_id=qid, verdicts={"a": True, "b": True, "c": True}, client_key="k")
    counts = store.counts()
    assert counts["judgments"] == 0 and counts["verdicts"] == 0
    store._db().execute("DROP TRIGGER refuse_c")
    assert store.record_judgment(query_id=qid, verdicts={"a": True, "b": True, "c": True}, client_key="k") == 3


def test_judged_answers_cannot_change(store):
    qid = add_query(store)
    store.record_answer(qid, "a", {"text": "changed before judging"})
    store.record_judgment(query_id=qid, verdicts={"a": True})
    with pytest.raises(ValueError, match="already judged"):
        store.record_answer(qid, "a", {"text": "changed after"})


def test_read_only_database_raises_judgment_not_saved(db_path):
    with Store.open(db_path) as store:
        qid = add_query(store)
    with Store.open(db_path, read_only=True) as store:
        assert store.query(qid)["answers"]["a"]["text"] == "a says red"
        with pytest.raises(JudgmentNotSaved, match="read-only"):
            store.record_judgment(query_id=qid, verdicts={"a": True})
    with Store.open(db_path) as store:  # SQLite itself refusing the write
        store._db().execute("PRAGMA query_only = ON")
        with pytest.raises(JudgmentNotSaved, match="read-only"):
            store.record_judgment(query_id=qid, verdicts={"a": True})


def test_full_disk_raises_judgment_not_saved(store):
    qid = add_query(store)
    conn = store._db().conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(JudgmentNotSaved, match="disk is full"):
        for i in range(50):
            store.record_judgment(query_id=qid, verdicts={"a": True}, reason="r" * 2000, client_key=f"k{i}")
    saved = store.counts()["judgments"]
    assert store.counts()["verdicts"] == saved  # no judgment without its verdict
    assert store.integrity_check() == ["ok"]


def test_lock_held_too_long_raises_judgment_not_saved(db_path):
    with Store.open(db_path, lock_timeout_s=0.3) as store:
        qid = add_query(store)
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(JudgmentNotSaved, match="locked by another writer for more than 0.3 s"):
                store.record_judgment(query_id=qid, verdicts={"a": True})
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert store.record_judgment(query_id=qid, verdicts={"a": True}) == 1


def test_closed_store_refuses(db_path):
    store = Store.open(db_path)
    qid = add_query(store)
    store.close()
    with pytest.raises(JudgmentNotSaved, match="closed"):
        store.record_judgment(query_id=qid, verdicts={"a": True})
    with pytest.raises(StoreError, match="closed"):
        store.stats()


# ----------------------------------------------------------------------------- reads for training and the leaderboard


def test_performance_pairs_average_verdicts_and_filter(store):
    q1 = add_query(store, category="object")
    q2 = add_query(store, backends=("a", "b"), colour=(0, 0, 255))
    store.record_judgment(query_id=q1, verdicts={"a": True, "b": False}, annotator="x")
    store.record_judgment(query_id=q1, verdicts={"a": False}, annotator="y")
    store.record_judgment(query_id=q2, verdicts={"b": True})
    pairs = list(store.performance_pairs())
    assert [(p["query_id"], p["backend"], p["correct"]) for p in pairs] == [(q1, "a", 0.5), (q1, "b", 0.0), (q2, "b", 1.0)]
    first = pairs[0]
    assert first["source"] == "judgment" and first["category"] == "object" and first["answer"] == "a says red"
    assert Path(first["image"]).is_absolute() and Path(first["image"]).is_file()
    assert pairs[2]["category"] == "attribute"  # the router's, when the query has none
    assert [p["backend"] for p in store.performance_pairs(backends=["b"])] == ["b", "b"]
    assert list(store.performance_pairs(source="benchmark")) == []
    assert list(store.performance_pairs(since="2999-01-01")) == []
    assert len(list(store.performance_pairs(since="2000-01-01T00:00:00Z"))) == 3
    with pytest.raises(ValueError, match="source must be"):
        store.performance_pairs(source="vibes")
    with pytest.raises(ValueError, match="since must be"):
        store.performance_pairs(since="yesterday")


def test_performance_pairs_stream_from_another_thread_while_writing(store):
    qid = add_query(store)
    for i in range(5):
        store.record_judgment(query_id=qid, verdicts={"a": i % 2, "b": 1}, client_key=str(i))
    pairs = store.performance_pairs()
    first = next(pairs)
    store.record_judgment(query_id=qid, verdicts={"c": 1})  # a write while a read is open
    rest = []
    worker = threading.Thread(target=lambda: rest.extend(pairs))
    worker.start()
    worker.join()
    assert first["backend"] == "a" and [p["backend"] for p in rest] == ["b"]  # one snapshot


def test_stats_and_frame(store):
    q1 = add_query(store, category="object")
    q2 = add_query(store, category="ocr", colour=(1, 1, 1))
    store.record_judgment(query_id=q1, verdicts={"a": True, "b": False}, best="a")
    store.record_judgment(query_id=q2, verdicts={"a": False, "b": True}, best="tie")
    stats = store.stats()
    assert stats["backends"]["a"] == {"n": 2, "correct": 1.0, "accuracy": 0.5, "best": 1}
    assert stats["categories"]["ocr"]["b"]["accuracy"] == 1.0
    assert stats["best_other"] == {"tie": 1, "all_wrong": 0}
    assert stats["counts"]["judgments"] == 2 and stats["counts"]["annotators"] == 1
    frame = store.stats_frame()
    assert list(frame.columns) == ["backend", "category", "n", "accuracy"]
    assert frame.to_dict("records")[0] == {"backend": "a", "category": "object", "n": 1, "accuracy": 1.0}


def test_pairwise_outcomes(store):
    q1 = add_query(store)
    q2 = add_query(store, colour=(0, 1, 0))
    store.record_judgment(query_id=q1, verdicts={"a": True}, best="b")
    store.record_judgment(query_id=q2, verdicts={}, best="tie")
    store.record_judgment(query_id=q2, verdicts={"a": False}, best="all_wrong")
    store.record_judgment(query_id=q2, verdicts={"a": False})  # no best: no battle
    ties = [("a", "b", 0.5), ("a", "c", 0.5), ("b", "c", 0.5)]
    assert store.pairwise_outcomes() == [("b", "a", 1.0), ("b", "c", 1.0)] + ties + ties


# ----------------------------------------------------------------------------- router versions and sessions


def test_router_versions_have_one_active(store):
    assert store.active_router() is None
    store.record_router_version("v1", "routers/v1", {"accuracy": 0.7}, active=True)
    store.record_router_version("v2", Path("routers/v2"), {"accuracy": 0.8})
    assert store.active_router()["version"] == "v1"
    store.set_active_router("v2")
    versions = store.router_versions()
    assert [(v["version"], v["active"]) for v in versions] == [("v1", False), ("v2", True)]
    assert versions[1]["card"] == {"accuracy": 0.8} and versions[1]["activated_at"]
    store.record_router_version("v3", "routers/v3", {}, active=True)
    assert store.active_router()["version"] == "v3"
    with pytest.raises(ValueError, match="unknown router version"):
        store.set_active_router("v9")
    assert store.active_router()["version"] == "v3"


def test_sessions_resume_where_the_annotator_stopped(db_path):
    with Store.open(db_path) as store:
        sid = store.start_session("ann", "easy-vqa", ["i1", "i2", "i3"])
        qid = add_query(store, source="annotate", session_id=sid, item_id="i1")
        store.record_judgment(query_id=qid, verdicts={"a": True}, annotator="ann", session_id=sid)
        store.mark_item_done(sid, "i3")
        store.mark_item_done(sid, "i3")
        with pytest.raises(ValueError, match="not in session"):
            store.mark_item_done(sid, "i9")
        with pytest.raises(ValueError, match="unknown session"):
            store.mark_item_done("nope", "i1")
        with pytest.raises(ValueError, match="must not repeat"):
            store.start_session("ann", "easy-vqa", ["x", "x"])
        later = store.start_session("ann", "other", ["z"])
    with Store.open(db_path) as store:  # tomorrow
        session = store.session(sid)
        assert session["item_ids"] == ["i1", "i2", "i3"] and session["done"] == {"i1", "i3"}
        assert session["done_count"] == 2 and session["total"] == 3 and session["next_item"] == "i2"
        listed = store.sessions_for("ann")
        assert [s["id"] for s in listed] == [later, sid] and listed[1]["next_item"] == "i2"
        assert store.sessions_for("nobody") == []
        with pytest.raises(KeyError):
            store.session("nope")


def test_many_threads_share_one_store(store):
    qid = add_query(store)
    errors = []

    def work(n):
        try:
            for i in range(10):
                store.record_judgment(query_id=qid, verdicts={"a": True}, client_key=f"{n}-{i}")
                store.stats()
        except Exception as error:  # asserted below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and store.counts()["judgments"] == 60
