"""Faults the app survives: failing, hanging and out-of-memory backends, a read-only / locked / full
database, a corrupt router file (fast, test doubles), and the app killed during judgments (slow).

Backend-level failure handling is in tests/test_run_all.py and store-level durability in
tests/test_store.py / tests/test_store_durability.py; here each fault goes through the whole flow
(Runtime, the Compare tab's handlers, the /judge API) and the question is what the person sees.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import pytest

from backends.presets import parse_preset
from components.api import Api
from components.compare_tab import CompareView, QueryState
from components.runtime import AppConfig, Runtime
from data.store import Store
from tests.doubles import EchoBackend, HangingBackend, RaisingBackend

ROOT = Path(__file__).resolve().parent.parent
CAT = str(ROOT / "data" / "examples" / "chelsea.jpg")
QUESTION = "Is this a cat or a dog?"


def _runtime(tmp_path: Path, backends) -> Runtime:
    preset = parse_preset({"name": "doubles", "backends": [{"name": b.name, "family": "open_clip"} for b in backends]}, "test")
    rt = Runtime(AppConfig(db_path=tmp_path / "db.sqlite"), preset=preset, backends=backends)
    rt.start_loading()
    assert rt.wait_until_loaded(120)
    return rt


@contextmanager
def runtime_with(tmp_path: Path, *backends) -> Iterator[Runtime]:
    rt = _runtime(tmp_path, list(backends))
    try:
        yield rt
    finally:
        for backend in backends:
            if isinstance(backend, HangingBackend):
                backend.release.set()
        rt.close()


def _final(view: CompareView, question: str = QUESTION, image: str = CAT) -> list:
    frames = list(view.ask(image, question, "", 0.0, None))
    return frames[-1]


def _panels(view: CompareView, final: list) -> dict[str, str]:
    return dict(zip(view.names, final[4:4 + len(view.names)]))


# ------------------------------------------------------------------------------------------ backends
def test_raising_and_out_of_memory_backends_fail_in_their_own_panel_only(tmp_path) -> None:
    backends = [
        EchoBackend("good", kind="vlm"),
        RaisingBackend("raises", kind="vlm+llm"),
        RaisingBackend("host-oom", exc=MemoryError()),
        RaisingBackend("cuda-oom", exc=RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")),
    ]
    with runtime_with(tmp_path, *backends) as rt:
        view = CompareView(rt)
        final = _final(view)
        panels = _panels(view, final)
        state: QueryState = final[-1]
        assert "rl-answer'>cat<" in panels["good"]
        assert "RuntimeError: boom" in panels["raises"]
        assert "out of memory" in panels["host-oom"] and "out of memory" in panels["cuda-oom"]
        assert "CUDA out of memory" in panels["cuda-oom"]
        stored = rt.store.query(state.query_id)["answers"]
        assert stored["good"]["error"] is None and stored["cuda-oom"]["error"].startswith("out of memory")
        # the person can still judge the answer that came back, and the app keeps answering
        assert view.save(state, "✓ correct", None, None, None, "good", "", "", "tester")[0].startswith("✓ Saved 1")
        again = _final(view, "Is it a cat or a dog, now?")
        assert "rl-answer'>" in _panels(view, again)["good"] and again[-1].query_id


def test_hanging_backend_times_out_and_its_panel_says_so(tmp_path) -> None:
    hang = HangingBackend("hang", timeout_s=0.5)
    with runtime_with(tmp_path, EchoBackend("good"), hang) as rt:
        view = CompareView(rt)
        start = time.perf_counter()
        final = _final(view)
        assert time.perf_counter() - start < 3
        panels = _panels(view, final)
        assert "timed out after 0.5 s" in panels["hang"] and "rl-error" in panels["hang"]
        assert "rl-answer'>cat<" in panels["good"]
        stored = rt.store.query(final[-1].query_id)["answers"]
        assert "timed out" in stored["hang"]["error"]
        api = Api(rt)
        result = api.compare(CAT, QUESTION, "")
        assert result["answers"]["good"]["text"] == "cat" and "timed out" in result["answers"]["hang"]["error"]


def test_a_backend_that_keeps_hanging_never_starves_the_others(tmp_path) -> None:
    """Each question leaves one more call stuck in the hung backend. BackendRunner's one shared pool
    (2 workers per backend, 6 here) fills with stuck calls after six questions, and from the seventh on
    every backend waits behind the hung one (up to its 30 s). Fixed by one pool per backend in
    backends/run_all.py (see docs/robustness.md)."""
    hang = HangingBackend("hang", timeout_s=0.3)
    with runtime_with(tmp_path, EchoBackend("good"), EchoBackend("other", kind="vlm+llm"), hang) as rt:
        for i in range(8):
            outcome: dict = {}

            def ask(i: int = i, outcome: dict = outcome) -> None:
                outcome["result"] = rt.compare_all(CAT, f"Which animal, number {i}?", "cat, dog")

            worker = threading.Thread(target=ask, daemon=True)
            started = time.perf_counter()
            worker.start()
            worker.join(5)
            if worker.is_alive():
                hang.release.set()  # let the stuck calls finish so the test ends quickly
                worker.join(30)
                pytest.fail(f"question {i} waited {time.perf_counter() - started:.1f} s behind the hung backend")
            answers = outcome["result"].answers
            assert answers["good"].text == "cat" and answers["other"].text == "cat", answers
            assert "timed out" in answers["hang"].error or "busy" in answers["hang"].error


# ------------------------------------------------------------------------------------------ database
def _read_only(rt: Runtime) -> None:
    rt.store.close()
    rt.store = Store.open(rt.config.resolved_db_path, read_only=True)


def _query_only(rt: Runtime) -> None:
    """SQLite refuses writes on every connection of the store, those of worker threads (and any opened
    later) too: the page answers a question on a pool thread with its own connection."""
    rt.store._db()
    for db in list(rt.store._connections):
        db.conn.execute("PRAGMA query_only = ON")
    connect = rt.store._connect

    def read_only_connect():
        db = connect()
        db.conn.execute("PRAGMA query_only = ON")
        return db

    rt.store._connect = read_only_connect


def _disk_full(rt: Runtime) -> None:
    conn = rt.store._db().conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")


@contextmanager
def _locked(rt: Runtime) -> Iterator[None]:
    """Another connection holds the write lock (BEGIN IMMEDIATE) the whole time; the store gives up after 0.5 s."""
    rt.store.close()
    rt.store = Store.open(rt.config.resolved_db_path, lock_timeout_s=0.5)
    blocker = sqlite3.connect(rt.config.resolved_db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def _heal(rt: Runtime) -> None:
    rt.store.close()
    rt.store = Store.open(rt.config.resolved_db_path)


FAULTS = {
    "read-only-file": (_read_only, "read-only"),
    "sqlite-query-only": (_query_only, "read-only"),
    "disk-full": (_disk_full, "disk is full"),
    "locked-by-another-writer": (None, "locked by another writer for more than 0.5 s"),
}


@contextmanager
def _fault(rt: Runtime, name: str) -> Iterator[None]:
    if name == "locked-by-another-writer":
        with _locked(rt):
            yield
    else:
        FAULTS[name][0](rt)
        yield
    _heal(rt)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_database_fault_tells_the_person_it_was_not_saved_and_answers_still_show(tmp_path, fault) -> None:
    message = FAULTS[fault][1]
    with runtime_with(tmp_path, EchoBackend("clip"), EchoBackend("llava", kind="vlm+llm")) as rt:
        view, api = CompareView(rt), Api(rt)
        asked = _final(view)  # asked while the database was healthy
        state: QueryState = asked[-1]
        assert state.query_id
        judged = ("✓ correct", "✗ wrong", "clip", "cat", "reason")
        before = rt.store.counts()
        with _fault(rt, fault):
            status = None
            for attempt in range(60):  # a full disk refuses once the free pages are used up
                status = view.save(state, *judged[:2], judged[2], judged[3], f"{judged[4]} {attempt} " + "r" * 1500, "tester")[0]
                if not status.startswith("✓"):
                    break
            assert status.startswith("⚠️ **Not saved**") and message in status, status
            with pytest.raises(gr.Error, match=f"not saved: .*{message}"):
                for attempt in range(60):
                    api.judge(state.query_id, json.dumps({"verdicts": {"clip": 1}, "reason": f"{attempt} " + "r" * 1500}), "api")
            # a question asked now is still answered; the page says it was not recorded
            during = _final(view, "Is it a cat or a dog, now?")
            panels = _panels(view, during)
            assert "rl-answer'>cat<" in panels["clip"] and "rl-answer'>" in panels["llava"]
            if fault != "disk-full":  # a full disk may still have room for the small query row
                assert during[-1].query_id is None
                assert "not recorded" in during[0] and message in during[0], during[0]
        # once the database is healthy again, the same judgment (same client key) is saved exactly once
        retry = view.save(state, *judged[:2], judged[2], judged[3], f"{judged[4]} 0 " + "r" * 1500, "tester")[0]
        assert retry.startswith("✓"), retry
        assert view.save(state, *judged[:2], judged[2], judged[3], f"{judged[4]} 0 " + "r" * 1500, "tester")[0].startswith(
            "✓ Already saved"
        )
        after = rt.store.counts()
        assert after["judgments"] >= before["judgments"] + 1
        assert rt.store.integrity_check() == ["ok"]


def test_database_unusable_at_start_the_app_still_answers(tmp_path) -> None:
    """--db pointing at a folder (or a file that is not SQLite): the app starts, answers, and says
    judgments cannot be saved."""
    (tmp_path / "db.sqlite").mkdir()
    with runtime_with(tmp_path, EchoBackend("clip"), EchoBackend("llava", kind="vlm+llm")) as rt:
        assert rt.store is None and "cannot be saved" in rt.store_notice
        view, api = CompareView(rt), Api(rt)
        final = _final(view)
        assert "rl-answer'>cat<" in _panels(view, final)["clip"]
        assert "cannot be saved" in final[0]
        with pytest.raises(gr.Error, match="not saved"):
            api.judge("any", json.dumps({"clip": 1}), "api")
        assert any("cannot be saved" in line for line in rt.status_lines())


# ------------------------------------------------------------------------------------------ router
def _corrupt_router_dir(versions: Path, how: str) -> str:
    """A version folder the registry lists as active, with a damaged card or weights."""
    from router.features import HashingTextEncoder
    from router.lifecycle import train_version
    from router.training import TrainConfig
    from tests.test_router_support import BACKENDS, make_pairs, write_jsonl

    pairs = write_jsonl(make_pairs(80, seed=1), versions.parent / "pairs.jsonl")
    outcome = train_version(
        out_dir=versions, pairs=[pairs], backends=BACKENDS, config=TrainConfig(timing_sample=0),
        text_encoder=HashingTextEncoder(),
    )
    folder = Path(outcome.path)
    if how == "truncated-weights":
        weights = folder / "router.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif how == "garbage-card":
        (folder / "card.json").write_text("{ not json")
    elif how == "random-bytes":
        for path in folder.iterdir():
            path.write_bytes(os.urandom(256))
    return outcome.version


@pytest.mark.parametrize("how", ["truncated-weights", "garbage-card", "random-bytes"])
def test_corrupt_router_file_falls_back_to_the_category_rule_with_a_notice(tmp_path, how) -> None:
    version = _corrupt_router_dir(tmp_path / "routers", how)
    with runtime_with(tmp_path, EchoBackend("clip", kind="vlm"), EchoBackend("llava", kind="vlm+llm")) as rt:
        assert rt.router.active.version == "category-rule"
        assert "category rule" in rt.router.notice and (version in rt.router.notice or "could not" in rt.router.notice)
        assert any("category rule" in line for line in rt.status_lines())
        view = CompareView(rt)
        final = _final(view, "What colour is the cat?")
        card = final[2]
        assert "rl-notice" in card and "category rule" in card
        assert final[-1].decision["choice"] == "clip"  # recognition -> vlm
        assert "rl-answer'>" in _panels(view, final)["clip"]
        decision = Api(rt).route(CAT, "How many cats are there, and why?")
        assert decision["choice"] == "llava" and "category rule" in decision["fallback"]


# ------------------------------------------------------------------------------------------ killed app (slow)


def _app_process(db_path: Path):
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            if str(db_path) in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    raise AssertionError("the launched app process was not found")


@pytest.mark.slow
def test_app_killed_during_judgments_loses_nothing_acknowledged(tmp_path) -> None:
    """SIGKILL the app while four gradio_client users are judging: every judgment the server
    acknowledged is in the database, each once, whole (all its verdicts), and the file is intact."""
    from gradio_client import Client, handle_file

    from tests.live_app import VISION_ONLY_PRESET, launched_app

    preset = tmp_path / "vision-only.toml"
    preset.write_text(VISION_ONLY_PRESET)
    db_path = tmp_path / "routelens.sqlite"
    acknowledged: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    with launched_app(db_path, preset=str(preset)) as url:
        process = _app_process(db_path)
        seed = Client(url, verbose=False)
        query_ids = [
            seed.predict(handle_file(CAT), f"{QUESTION} ({i})", "", api_name="/compare")["query_id"] for i in range(2)
        ]
        stop = threading.Event()

        def judge(user: int) -> None:
            client = Client(url, verbose=False)
            n = 0
            while not stop.is_set():
                key = f"kill-{user}-{n}"
                payload = {"verdicts": {"efficientnet-lite0": n % 2}, "reason": f"user {user} #{n}", "client_key": key}
                try:
                    saved = client.predict(query_ids[n % 2], json.dumps(payload), f"user{user}", api_name="/judge")
                except Exception as exc:
                    with lock:
                        failures.append(f"{key}: {type(exc).__name__}")
                    return
                if saved == {"saved": 1}:
                    with lock:
                        acknowledged.append(key)
                n += 1

        users = [threading.Thread(target=judge, args=(u,), daemon=True) for u in range(4)]
        for user in users:
            user.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acknowledged) >= 40, f"only {len(acknowledged)} judgments in 60 s; failures: {failures[:3]}"
        process.send_signal(signal.SIGKILL)
        process.wait(20)
        stop.set()
        for user in users:
            user.join(30)
    acked = set(acknowledged)
    raw = sqlite3.connect(db_path)  # what is on disk, before the store touches it
    try:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        keys = [r[0] for r in raw.execute("SELECT client_key FROM judgments WHERE client_key LIKE 'kill-%'")]
        assert acked <= set(keys), f"lost acknowledged judgments: {sorted(acked - set(keys))[:5]}"
        assert len(keys) == len(set(keys))  # each stored once
        assert len(keys) - len(acked) <= 4  # at most the one in flight per user: committed, not yet acknowledged
        whole = raw.execute(
            "SELECT COUNT(*) FROM judgments j WHERE client_key LIKE 'kill-%' "
            "AND (SELECT COUNT(*) FROM verdicts v WHERE v.judgment_id = j.id) != 1"
        ).fetchone()[0]
        assert whole == 0
    finally:
        raw.close()
    with Store.open(db_path) as store:  # the app's own open (quick_check, WAL replay) accepts it
        assert store.integrity_check() == ["ok"]
        assert store.counts()["judgments"] == len(keys)
