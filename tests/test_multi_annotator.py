"""Several annotators per item: k judgments per item by different annotators, handed out atomically, never
twice to one annotator; progress; joining a session in the Annotate tab; guidelines versions; adjudication."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from backends.presets import parse_preset
from components.annotate_tab import AnnotateView
from components.runtime import AppConfig, Runtime
from data.store import Store
from tests.doubles import EchoBackend

REPO = Path(__file__).resolve().parents[1]
CAT = str(REPO / "data" / "examples" / "chelsea.jpg")


@pytest.fixture
def store(tmp_path):
    store = Store.open(tmp_path / "db.sqlite")
    yield store
    store.close()


def session_with_queries(store: Store, items: list[str], *, k: int, backends=("a", "b"), lead: str = "lead") -> str:
    """A session over ``items`` whose every item already has a query answered by ``backends``."""
    sid = store.start_session(lead, "set", items, k=k)
    sha = store.put_image(Image.new("RGB", (4, 4), (9, 9, 9)))
    for item in items:
        qid = store.record_query(image_sha256=sha, question=f"what is {item}?", source="annotation",
                                 session_id=sid, item_id=item)
        for backend in backends:
            store.record_answer(qid, backend, {"text": f"{backend} on {item}", "latency_s": 0.1})
    return sid


def judge(store: Store, sid: str, item: str, annotator: str, verdicts=None) -> None:
    qid = store.item_query(sid, item, ["a", "b"])
    store.record_judgment(query_id=qid, verdicts=verdicts or {"a": 1, "b": 0}, annotator=annotator,
                          session_id=sid, client_key=f"{annotator}:{item}")


def judged_by(db_path: Path, sid: str) -> list[tuple[str, str]]:
    raw = sqlite3.connect(db_path)
    try:
        return raw.execute(
            "SELECT q.item_id, j.annotator FROM judgments j JOIN queries q ON q.id = j.query_id WHERE j.session_id = ?",
            [sid],
        ).fetchall()
    finally:
        raw.close()


# ------------------------------------------------------------------------------------ handing items out
def test_each_item_goes_to_k_different_annotators_then_is_done(store) -> None:
    sid = session_with_queries(store, ["i1", "i2", "i3"], k=2)
    assert store.session(sid)["k"] == 2
    assert store.claim_item(sid, "ana") == "i1"
    assert store.claim_item(sid, "ana") == "i1"  # an open hand-out resumes: a reload gives the same item
    assert store.claim_item(sid, "ben") == "i1"  # i1 has one of its two places taken
    assert store.claim_item(sid, "cy") == "i2"  # i1's two places are held
    judge(store, sid, "i1", "ana")
    assert store.session(sid)["done"] == set()  # one judgment of two
    judge(store, sid, "i1", "ben")
    assert store.session(sid)["done"] == {"i1"}
    assert store.claim_item(sid, "ana") == "i2"  # cy holds one place of i2
    assert store.claim_item(sid, "ben") == "i3"
    for who, item in (("ana", "i2"), ("cy", "i2"), ("ben", "i3")):
        judge(store, sid, item, who)
    assert store.claim_item(sid, "ana") == "i3"
    assert store.claim_item(sid, "ben") is None  # judged i1 and i3, and i2 is complete
    judge(store, sid, "i3", "ana")
    assert store.claim_item(sid, "ana") is None and store.claim_item(sid, "dee") is None
    session = store.session(sid)
    assert session["done"] == {"i1", "i2", "i3"} and session["next_item"] is None and session["judgments"] == 6
    pairs = judged_by(store.path, sid)
    assert len(pairs) == len(set(pairs)) == 6 and Counter(i for i, _ in pairs) == {"i1": 2, "i2": 2, "i3": 2}


def test_a_skip_frees_the_place_and_the_item_comes_back_at_the_end(store) -> None:
    sid = session_with_queries(store, ["i1", "i2"], k=1)
    assert store.claim_item(sid, "ana") == "i1"
    store.skip_item(sid, "ana", "i1")
    assert store.claim_item(sid, "ben") == "i1"  # the skip freed i1's only place
    assert store.claim_item(sid, "ana") == "i2"
    judge(store, sid, "i2", "ana")
    assert store.claim_item(sid, "ana") is None  # ben holds i1
    store.skip_item(sid, "ben", "i1")
    assert store.claim_item(sid, "ana") == "i1"  # ana's skipped item, now that it is free again


def test_a_hold_expires_so_an_abandoned_item_is_not_stuck(store) -> None:
    sid = session_with_queries(store, ["i1"], k=1)
    assert store.claim_item(sid, "ana") == "i1"
    assert store.claim_item(sid, "ben") is None
    assert store.claim_item(sid, "ben", hold_s=0) == "i1"  # ana's hold is older than 0 s


def test_progress_counts_the_sessions_items_and_the_annotators_share(store) -> None:
    sid = session_with_queries(store, ["i1", "i2"], k=3)
    for who in ("ana", "ben", "cy"):
        store.claim_item(sid, who)
        judge(store, sid, "i1", who)
    store.claim_item(sid, "ana")
    judge(store, sid, "i2", "ana")
    progress = store.progress(sid, "ana")
    assert (progress["total"], progress["done"], progress["k"], progress["judgments"], progress["wanted"]) == (2, 1, 3, 4, 6)
    assert progress["mine"] == 2 and progress["mine_items"] == {"i1", "i2"}
    assert store.progress(sid, "ben")["mine"] == 1
    assert [s["id"] for s in store.sessions_for("ben")] == [sid]  # a session joined is listed too
    assert [s["id"] for s in store.open_sessions("set")] == [sid] and store.open_sessions("other") == []
    with pytest.raises(ValueError, match="from 1 to 100"):
        store.start_session("x", "set", ["i"], k=0)


WORKER = r"""
import json, sys
from data.store import Store

path, sid, me = sys.argv[1:4]
print("ready", flush=True)
sys.stdin.readline()
store = Store.open(path)
got, errors = [], []
while True:
    try:
        item = store.claim_item(sid, me)
        if item is None:
            break
        got.append(item)
        qid = store.item_query(sid, item, ["a", "b"])
        store.record_judgment(query_id=qid, verdicts={"a": 1}, annotator=me, session_id=sid, client_key=me + ":" + item)
    except Exception as error:
        errors.append(repr(error))
        break
store.close()
print(json.dumps({"got": got, "errors": errors}), flush=True)
"""


def test_eight_annotator_processes_at_once_never_get_an_item_twice(tmp_path) -> None:
    items = [f"i{n}" for n in range(12)]
    with Store.open(tmp_path / "db.sqlite") as store:
        sid = session_with_queries(store, items, k=3)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "db.sqlite"), sid, f"ann{n}"], cwd=REPO,
                              env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for n in range(8)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:  # all start claiming at once
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [r["errors"] for r in results] == [[]] * 8
    for r in results:
        assert len(r["got"]) == len(set(r["got"]))  # no annotator was handed an item twice
    pairs = judged_by(tmp_path / "db.sqlite", sid)
    assert len(pairs) == len(set(pairs)) == 36  # 12 items x 3, no (item, annotator) twice
    assert Counter(item for item, _ in pairs) == dict.fromkeys(items, 3)  # never past k
    with Store.open(tmp_path / "db.sqlite") as store:
        assert store.session(sid)["done"] == set(items)


def test_eight_annotator_threads_sharing_a_store_never_get_an_item_twice(store) -> None:
    items = [f"i{n}" for n in range(10)]
    sid = session_with_queries(store, items, k=3)
    barrier, errors, got = threading.Barrier(8), [], {}

    def annotate(me: str) -> None:
        barrier.wait()
        mine = got.setdefault(me, [])
        try:
            while (item := store.claim_item(sid, me)) is not None:
                mine.append(item)
                judge(store, sid, item, me)
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=annotate, args=(f"t{n}",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and all(len(v) == len(set(v)) for v in got.values())
    pairs = judged_by(store.path, sid)
    assert len(pairs) == len(set(pairs)) == 30 and Counter(i for i, _ in pairs) == dict.fromkeys(items, 3)


# ------------------------------------------------------------------------------------ guidelines and adjudication
def test_guidelines_are_versioned_and_each_judgment_records_its_version(store) -> None:
    sid = session_with_queries(store, ["i1"], k=1)
    first = store.set_guidelines("session", sid, "Judge the **main** object.")
    assert first["version"] == 1 and store.set_guidelines("session", sid, "Judge the **main** object.")["id"] == first["id"]
    second = store.set_guidelines("session", sid, "Judge the main object; a partly right answer is wrong.")
    assert second["version"] == 2 and store.guidelines("session", sid)["id"] == second["id"]
    qid = store.item_query(sid, "i1", ["a", "b"])
    store.record_judgment(query_id=qid, verdicts={"a": 1}, annotator="ana", guidelines_id=first["id"])
    store.record_judgment(query_id=qid, verdicts={"a": 0}, annotator="ben", guidelines_id=second["id"])
    assert [(r["annotator"], r["guidelines_version"], r["guidelines_scope"]) for r in store.judgment_rows()] == [
        ("ana", 1, "session"), ("ben", 2, "session")]
    with pytest.raises(ValueError, match="unknown guidelines id"):
        store.record_judgment(query_id=qid, verdicts={"a": 1}, annotator="cy", guidelines_id=999)
    with pytest.raises(ValueError, match="scope must be"):
        store.set_guidelines("planet", "x", "text")


def test_a_final_verdict_replaces_the_split_votes_for_training(store) -> None:
    sid = session_with_queries(store, ["i1"], k=3, lead="lead")
    qid = store.item_query(sid, "i1", ["a", "b"])
    for who, verdict in (("ana", 1), ("ben", 1), ("cy", 0)):
        store.record_judgment(query_id=qid, verdicts={"a": verdict, "b": 0}, annotator=who, session_id=sid)
    pairs = {p["backend"]: p["correct"] for p in store.performance_pairs()}
    assert pairs == {"a": pytest.approx(2 / 3), "b": 0.0}  # the mean of the votes
    with pytest.raises(ValueError, match="only the session's lead annotator \\(lead\\)"):
        store.record_adjudication(query_id=qid, verdicts={"a": 0}, adjudicator="ana")
    assert store.record_adjudication(query_id=qid, verdicts={"a": 0}, adjudicator="lead", reason="the sign says no") == 1
    pairs = {p["backend"]: p["correct"] for p in store.performance_pairs()}
    assert pairs == {"a": 0.0, "b": 0.0}
    assert store.stats()["backends"]["a"]["accuracy"] == 0.0
    assert store.adjudications()[(qid, "a")]["reason"] == "the sign says no"
    store.record_adjudication(query_id=qid, verdicts={"a": True}, adjudicator="lead")  # the latest counts
    assert {p["backend"]: p["correct"] for p in store.performance_pairs()}["a"] == 1.0
    with pytest.raises(ValueError, match="no answer from zz"):
        store.record_adjudication(query_id=qid, verdicts={"zz": 1}, adjudicator="lead")


# ------------------------------------------------------------------------------------ the Annotate tab
@pytest.fixture()
def runtime(tmp_path):
    preset = parse_preset({"name": "doubles", "backends": [{"name": "clip", "family": "open_clip"},
                                                           {"name": "llava", "family": "hf_vision"}]}, "test")
    rt = Runtime(AppConfig(db_path=tmp_path / "db.sqlite"), preset=preset,
                 backends=[EchoBackend("clip", kind="vlm"), EchoBackend("llava", kind="vlm+llm", word="a circle")])
    rt.start_loading()
    assert rt.wait_until_loaded(60)
    yield rt
    rt.close()


def test_two_annotators_judge_the_same_answers_in_a_shared_session(runtime, tmp_path) -> None:
    view = AnnotateView(runtime)
    spec = view.dataset_choices()[0][1]
    message, _, ana = view.start("ana", spec, None, blind=True, k=2, guidelines="Judge the *main* object.")
    assert "Each item goes to 2 annotators" in message and ana.k == 2 and ana.lead == "ana"
    ana = list(view.show(ana))[-1][-1]
    assert ana.guidelines_id is not None and ana.current == "chelsea"
    # ben joins ana's session from the session list
    choices = view.session_choices(spec)["choices"]
    assert any(value == ana.session_id and "Join ana's session" in label for label, value in choices)
    message, progress, ben = view.start("ben", spec, None, join=ana.session_id)
    assert "Joined ana's session" in message and ben.session_id == ana.session_id and ben.current == "chelsea"
    queries_before = runtime.store.counts()["queries"]
    frame = list(view.show(ben))[-1]
    ben = frame[-1]
    assert ben.query.query_id == ana.query.query_id  # the same answers, not asked again
    assert runtime.store.counts()["queries"] == queries_before
    assert frame[-2] == "Judge the *main* object." and frame[-3]["visible"] is True
    for state in (ana, ben):
        verdicts = ["✓ correct" if name == "clip" else "✗ wrong" for name in state.query.order]
        view.save(state, *verdicts, None, "", "")
    assert ana.current == "coffee" and ben.current == "coffee"
    assert "you: 1 judged" in view.progress(ben) and "1 / 10 items complete" in view.progress(ben)
    rows = list(runtime.store.judgment_rows())
    assert {(r["annotator"], r["guidelines_version"]) for r in rows} == {("ana", 1), ("ben", 1)}
    assert {r["query_id"] for r in rows} == {ana.query.query_id}
    # the lead changes the guidelines: the next judgments are made under version 2
    assert "version 2" in view.update_guidelines(ana, "Judge the main object; ignore the background.")
    assert "Only the session's lead (ana)" in view.update_guidelines(ben, "no")
    ana = list(view.show(ana))[-1][-1]
    view.save(ana, "✓ correct", "✓ correct", None, "", "")
    assert [r["guidelines_version"] for r in runtime.store.judgment_rows()][-1] == 2


def test_dataset_guidelines_come_from_a_file_beside_the_dataset(runtime, tmp_path) -> None:
    data = tmp_path / "set.jsonl"
    data.write_text(json.dumps({"id": "one", "image": CAT, "question": "What animal?", "answer": "cat"}) + "\n")
    (tmp_path / "set.guidelines.md").write_text("# Cats\nA kitten is a cat.")
    view = AnnotateView(runtime)
    _, _, state = view.start("ana", str(data), None)
    frame = list(view.show(state))[-1]
    assert frame[-2].startswith("# Cats") and "the dataset's, version 1" in frame[-3]["label"]
    state = frame[-1]
    view.save(state, "✓ correct", "✓ correct", None, "", "")
    row = next(runtime.store.judgment_rows())
    assert (row["guidelines_scope"], row["guidelines_version"]) == ("dataset", 1)
    assert "Session complete" in list(view.show(state))[-1][1]
