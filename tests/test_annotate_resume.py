"""Annotate tab in store terms, without a browser: resume reopens the item the annotator was on and skipped
items come back only after the pending ones; Undo stores a changed judgment as a new row and marks the
old one replaced, and statistics, pairs, battles, agreement and the queue's retrain read only the rows
in force; a judgment that cannot be saved says why in the status line and keeps the item."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from backends.presets import parse_preset
from components import answer_grid
from components.annotate_tab import AnnotateView, AnnotationState
from components.runtime import AppConfig, Runtime
from data import schema
from data.store import Store
from tests.doubles import EchoBackend
from tests.live_app import db_rows

CAT = str(Path(__file__).resolve().parent.parent / "data" / "examples" / "chelsea.jpg")
CORRECT, WRONG, SKIP = answer_grid.VERDICTS


@pytest.fixture
def store(tmp_path):
    store = Store.open(tmp_path / "db.sqlite")
    yield store
    store.close()


def session(store: Store, items: list[str], *, annotator: str = "ana") -> tuple[str, dict[str, str]]:
    """A session over ``items`` whose every item has a query answered by backends "a" and "b"."""
    sid = store.start_session(annotator, "set", items)
    sha = store.put_image(Image.new("RGB", (4, 4), (9, 9, 9)))
    queries = {}
    for item in items:
        queries[item] = store.record_query(image_sha256=sha, question=f"what is {item}?", source="annotation",
                                           session_id=sid, item_id=item)
        for backend in ("a", "b"):
            store.record_answer(queries[item], backend, {"text": f"{backend} on {item}", "latency_s": 0.1})
    return sid, queries


# ------------------------------------------------------------------------------------ resume order
def test_resume_reopens_the_open_item_and_skipped_items_come_after_the_pending_ones(store) -> None:
    sid, queries = session(store, ["i1", "i2", "i3", "i4"])
    assert store.claim_item(sid, "ana") == "i1"
    store.skip_item(sid, "ana", "i1")
    assert store.claim_item(sid, "ana") == "i2"
    for _ in range(3):  # reloads, and tomorrow (the hold of an own hand-out never expires for its annotator)
        assert store.claim_item(sid, "ana") == "i2"
    assert store.claim_item(sid, "ana", hold_s=0) == "i2"
    store.record_judgment(query_id=queries["i2"], verdicts={"a": 1}, annotator="ana", session_id=sid)
    assert store.claim_item(sid, "ana") == "i3"  # a pending item, not the skipped i1
    store.skip_item(sid, "ana", "i3")
    assert store.claim_item(sid, "ana") == "i4"
    assert store.claim_item(sid, "ana") == "i4"  # resume: the item she is on, not a skipped one
    store.record_judgment(query_id=queries["i4"], verdicts={"a": 0}, annotator="ana", session_id=sid)
    assert store.claim_item(sid, "ana") == "i1"  # nothing pending: the oldest skip comes back
    assert store.claim_item(sid, "ana") == "i1"  # and is now the open one a reload reopens
    store.record_judgment(query_id=queries["i1"], verdicts={"b": 1}, annotator="ana", session_id=sid)
    assert store.claim_item(sid, "ana") == "i3"
    assert store.judged_items(sid, "ana") == ["i2", "i4", "i1"]


# ------------------------------------------------------------------------------------ undo in store terms


def test_a_changed_judgment_is_a_new_row_and_only_the_new_one_counts(store) -> None:
    sid, queries = session(store, ["i1", "i2"])
    store.claim_item(sid, "ana")
    store.record_judgment(query_id=queries["i1"], verdicts={"a": 1, "b": 1}, best="a", annotator="ana", session_id=sid)
    old = store.active_judgment(sid, "ana", "i1")
    assert (old["best"], old["verdicts"]) == ("a", {"a": 1.0, "b": 1.0})
    before = store.stats()["backends"]
    assert before["b"]["accuracy"] == 1.0 and before["a"]["best"] == 1

    store.record_judgment(query_id=queries["i1"], verdicts={"a": 0, "b": 0}, best="all_wrong", annotator="ana",
                          session_id=sid, replaces=old["id"], reason="looked again")
    new = store.active_judgment(sid, "ana", "i1")
    assert new["id"] != old["id"] and (new["best"], new["verdicts"], new["reason"]) == (
        "all_wrong", {"a": 0.0, "b": 0.0}, "looked again")
    rows = db_rows(store.path, "SELECT id, best, replaced_by, replaced_at IS NOT NULL FROM judgments ORDER BY id")
    assert rows == [(old["id"], "a", new["id"], 1), (new["id"], "all_wrong", None, 0)]  # the old row is kept

    stats = store.stats()
    assert {b: (s["n"], s["accuracy"], s["best"]) for b, s in stats["backends"].items()} == {"a": (1, 0.0, 0), "b": (1, 0.0, 0)}
    assert stats["best_other"]["all_wrong"] == 1
    assert sorted((p["backend"], p["correct"]) for p in store.performance_pairs()) == [("a", 0.0), ("b", 0.0)]
    assert store.pairwise_outcomes() == [("a", "b", 0.5)]
    assert len(store.battles()) == 1
    assert [v["judgment_id"] for v in store.annotator_verdicts()] == [new["id"], new["id"]]
    assert store.session_item_verdicts(sid) == {"i1": {"a": 0.0, "b": 0.0}}
    exported = {r["judgment_id"]: r["replaced_by"] for r in store.judgment_rows()}
    assert exported == {old["id"]: new["id"], new["id"]: None}
    # the session's progress does not change: the item was judged once, by her
    assert store.progress(sid, "ana")["mine"] == 1 and store.judged_items(sid, "ana") == ["i1"]
    counts = store.counts()  # the page's "N judgments" counts the one that stands
    assert (counts["judgments"], counts["judgments_replaced"], counts["annotators"]) == (1, 1, 1)


def test_only_its_annotator_replaces_a_judgment_once_and_of_the_same_query(store) -> None:
    sid, queries = session(store, ["i1", "i2"])
    store.record_judgment(query_id=queries["i1"], verdicts={"a": 1}, annotator="ana", session_id=sid)
    first = store.active_judgment(sid, "ana", "i1")["id"]
    with pytest.raises(ValueError, match="only its annotator"):
        store.record_judgment(query_id=queries["i1"], verdicts={"a": 0}, annotator="ben", replaces=first)
    with pytest.raises(ValueError, match="of another query"):
        store.record_judgment(query_id=queries["i2"], verdicts={"a": 0}, annotator="ana", replaces=first)
    with pytest.raises(ValueError, match="unknown judgment 999"):
        store.record_judgment(query_id=queries["i1"], verdicts={"a": 0}, annotator="ana", replaces=999)
    store.record_judgment(query_id=queries["i1"], verdicts={"a": 0}, annotator="ana", session_id=sid, replaces=first)
    with pytest.raises(ValueError, match="already replaced"):
        store.record_judgment(query_id=queries["i1"], verdicts={"a": 1}, annotator="ana", replaces=first)
    assert db_rows(store.path, "SELECT COUNT(*) FROM judgments") == [(2,)]  # the refused ones wrote nothing


def test_migration_3_adds_the_replaced_columns_to_a_version_2_database(tmp_path) -> None:
    from sqlite_utils import Database

    path = tmp_path / "old.sqlite"
    db = Database(sqlite3.connect(path, isolation_level=None))
    assert schema.migrate(db, migrations=schema.MIGRATIONS[:2]) == [1, 2]
    db.conn.close()
    with Store.open(path) as store:
        assert store.schema_version() == schema.LATEST_VERSION == 3
    columns = {row[1] for row in db_rows(path, "PRAGMA table_info(judgments)")}
    assert {"replaced_by", "replaced_at"} <= columns


# ------------------------------------------------------------------------------------ the view
@pytest.fixture()
def view(tmp_path):
    preset = parse_preset({"name": "doubles", "backends": [{"name": "clip", "family": "open_clip"},
                                                           {"name": "llava", "family": "hf_vision"}]}, "test")
    backends = [EchoBackend("clip", kind="vlm", cost=0.1), EchoBackend("llava", kind="vlm+llm", word="a circle", cost=1.0)]
    runtime = Runtime(AppConfig(db_path=tmp_path / "db.sqlite"), preset=preset, backends=backends)
    runtime.start_loading()
    assert runtime.wait_until_loaded(60)
    yield AnnotateView(runtime)
    runtime.close()


def _shown(view: AnnotateView, state: AnnotationState) -> tuple[AnnotationState, list]:
    frames = list(view.advance(state))
    return frames[-1][-1], frames[-1]


def _verdicts(frame: list) -> list:
    return frame[3 + 2: 3 + 4]  # image, question, reference, 2 panels, then 2 verdicts


def test_all_wrong_saves_and_a_contradiction_is_a_message_not_an_error(view) -> None:
    spec = view.dataset_choices()[0][1]
    _, _, state = view.start("ada", spec, AnnotationState())
    state, frame = _shown(view, state)
    first = state.current
    assert state.shown == first and _verdicts(frame) == [CORRECT, CORRECT]  # pre-filled: both said "cat"
    status, _, _, state = view.save(state, CORRECT, CORRECT, "all_wrong", "", "")
    assert status.startswith("⚠️ **Not saved:**") and "panel 1 (clip)" in status and "All wrong" in status
    assert state.current == first and not state.advance  # the item and its verdicts stay
    import gradio as gr

    (unchanged,) = list(view.advance(state))  # the step after a failed save changes nothing on the page
    assert unchanged[:-1] == [gr.skip()] * (len(unchanged) - 1)
    status, _, submit, state = view.save(state, WRONG, WRONG, "all_wrong", "", "")
    assert status == "✓ Saved." and submit["interactive"] is False and state.current != first and state.advance
    saved = view.runtime.store.active_judgment(state.session_id, "ada", first)
    assert (saved["best"], saved["verdicts"]) == ("all_wrong", {"clip": 0.0, "llava": 0.0})
    # a second Enter while the next item loads saves nothing
    assert view.save(state, WRONG, WRONG, "all_wrong", "", "")[0].startswith("⚠️ Nothing to save yet")


def test_undo_reopens_the_previous_item_and_saving_replaces_its_judgment(view) -> None:
    store = view.runtime.store
    spec = view.dataset_choices()[0][1]
    _, _, state = view.start("ada", spec, AnnotationState())
    state, _ = _shown(view, state)
    first = state.current
    view.save(state, CORRECT, WRONG, "clip", "cat", "first look")
    state, _ = _shown(view, state)
    second = state.current
    assert view.undo(state)[0].startswith("↩") and state.current == first
    state, frame = _shown(view, state)
    assert _verdicts(frame) == [CORRECT, WRONG]  # the saved judgment, to change
    assert frame[3 + 4 + 1]["value"] == "clip" and frame[3 + 4 + 2: 3 + 4 + 4] == ["cat", "first look"]
    assert "changing your saved judgment" in frame[2]
    status, _, _, state = view.save(state, WRONG, WRONG, "all_wrong", "", "second look")
    assert "replaces" in status and state.current == second  # back to the item she was on
    rows = store.judgment_rows()
    by_id = {}
    for row in rows:
        by_id.setdefault(row["judgment_id"], row)
    old, new = sorted(by_id)
    assert by_id[old]["replaced_by"] == new and by_id[new]["replaced_by"] is None
    assert by_id[new]["reason"] == "second look" and by_id[new]["best"] == "all_wrong"
    # undo again, then n: the judgment stays as it is and she is back on her item
    view.undo(state)
    state, _ = _shown(view, state)
    assert state.current == first and view.skip(state)[0].startswith("Kept") and state.current == second
    assert db_rows(store.path, "SELECT COUNT(*) FROM judgments") == [(2,)]
    # after a reload, undo still knows her previous item
    _, _, reloaded = view.start("ada", spec, AnnotationState())
    assert reloaded.current == second and reloaded.history == [first]
    view.undo(reloaded)
    assert reloaded.current == first and reloaded.replacing["id"] == new
