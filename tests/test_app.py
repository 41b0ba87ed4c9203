"""The whole Blocks app builds without launching, and its handlers do the right thing (test doubles)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backends.presets import parse_preset
from components import answer_grid
from components.annotate_tab import AnnotateView, AnnotationState
from components.api import Api, parse_verdicts
from components.compare_tab import CompareView, QueryState
from components.runtime import AppConfig, InputError, Runtime, clean_question, resolve_labels
from tests.doubles import EchoBackend, RaisingBackend

CAT = str(Path(__file__).resolve().parent.parent / "data" / "examples" / "chelsea.jpg")


@pytest.fixture()
def runtime(tmp_path):
    preset = parse_preset(
        {"name": "doubles", "backends": [{"name": "clip", "family": "open_clip"}, {"name": "llava", "family": "hf_vision"}]},
        "test",
    )
    backends = [
        EchoBackend("clip", kind="vlm", cost=0.1),
        EchoBackend("llava", kind="vlm+llm", word="a circle", cost=1.0),
        RaisingBackend("broken", kind="vlm+llm"),
    ]
    rt = Runtime(AppConfig(db_path=tmp_path / "db.sqlite"), preset=preset, backends=backends)
    rt.start_loading()
    assert rt.wait_until_loaded(60)
    yield rt
    rt.close()


def test_build_app_without_launching(runtime) -> None:
    import gradio as gr

    import app

    demo = app.build_app(runtime)
    assert isinstance(demo, gr.Blocks)
    api_names = {dep.get("api_name") for dep in demo.config["dependencies"]}
    assert {"route", "compare", "judge", "stats"} <= api_names


def test_compare_streams_decision_then_every_answer_and_records(runtime) -> None:
    events = [event for event, _ in runtime.compare(CAT, "Is this a cat or a dog?", "")]
    assert events[:2] == ["start", "decision"]
    assert events.count("answer") == 3 and events[-1] == "done"
    result = runtime.compare_all(CAT, "Is this a cat or a dog?", "")
    data = result.to_json()
    assert data["labels"] == ["cat", "dog"]
    assert set(data["answers"]) == {"clip", "llava", "broken"}
    assert data["answers"]["broken"]["error"] == "RuntimeError: boom"
    # no trained router yet: the paper's category rule decides, and a recognition question goes to the vlm
    decision = data["decision"]
    assert decision["version"] == "category-rule" and decision["category"] == "object"
    assert decision["choice"] == "clip"
    stored = runtime.store.query(result.query_id)
    assert len(stored["answers"]) == 3
    assert stored["decision"]["choice"] == "clip"


def test_bad_input_is_refused_before_anything_is_recorded(runtime) -> None:
    before = runtime.store.counts()["queries"]
    with pytest.raises(InputError, match="type a question"):
        runtime.compare_all(CAT, "   ")
    with pytest.raises(InputError, match="under 10,000"):
        runtime.compare_all(CAT, "x" * 100_000)
    with pytest.raises(InputError, match="not an image"):
        runtime.compare_all(b"plain text pretending to be a png", "what is it?")
    assert runtime.store.counts()["queries"] == before


def test_questions_and_labels_are_cleaned() -> None:
    assert clean_question("  what\x00 is\u202e this?\n ") == "what is this?"
    assert resolve_labels("Is this a cat or a dog?", "") == ["cat", "dog"]
    assert resolve_labels("Is this a cat or a dog?", "rocket, coffee") == ["rocket", "coffee"]


def test_judge_round_trip_and_idempotence(runtime) -> None:
    result = runtime.compare_all(CAT, "What animal is this?", "cat, dog")
    saved = runtime.judge(result.query_id, {"clip": 1, "llava": 0}, best="clip", client_key="k1")
    again = runtime.judge(result.query_id, {"clip": 1, "llava": 0}, best="clip", client_key="k1")
    assert (saved, again) == (2, 0)
    stats = runtime.stats()
    assert stats["backends"]["clip"]["accuracy"] == 1.0
    with pytest.raises(ValueError, match="unknown query id 'no-such-query'"):
        runtime.judge("no-such-query", {"clip": 1})


def test_compare_view_streams_panels_and_enables_save(runtime) -> None:
    view = CompareView(runtime)
    frames = list(view.ask(CAT, "Is this a cat or a dog?", "", 0.0, QueryState()))
    assert len(frames) >= 3
    final = frames[-1]
    state = final[-1]
    assert state.query_id and state.decision and len(state.answers) == 3
    panels = final[4:7]
    assert state.decision["choice"] == "clip"
    assert ["router pick" in p for p in panels] == [True, False, False]  # only the chosen backend's panel
    assert "RuntimeError: boom" in panels[2]
    status = view.save(state, "✓ correct", "✗ wrong", None, "clip", "cat", "", "tester")[0]
    assert status.startswith("✓ Saved 2 verdict")


def test_compare_view_shows_input_errors(runtime) -> None:
    view = CompareView(runtime)
    frames = list(view.ask(None, "What is this?", "", 0.0, None))
    assert frames[-1][0].startswith("⚠️") and "image" in frames[-1][0]


def test_answers_are_escaped_in_panels(runtime) -> None:
    view = CompareView(runtime)
    frames = list(view.ask(CAT, "what?", "<script>alert(1)</script>, <b>bold</b>", 0.0, None))
    html_out = " ".join(frames[-1][4:7])
    assert "<script>" not in html_out and "&lt;script&gt;" in html_out


def test_rerank_changes_choice_with_cost(runtime) -> None:
    view = CompareView(runtime)
    state = QueryState(query_id="q", decision={
        "choice": "llava", "confidence": 0.6, "probabilities": {"clip": 0.55, "llava": 0.6, "broken": 0.1},
        "category": "object", "version": "v", "latency_ms": 1.0,
    })
    out = view.rerank(1.0, state)
    assert out[-1].decision["choice"] == "clip"


def test_api_endpoints(runtime) -> None:
    api = Api(runtime)
    decision = api.route(CAT, "What animal is this?")
    assert set(decision) >= {"choice", "confidence", "probabilities", "category", "version"}
    result = api.compare(CAT, "Is this a cat or a dog?", "")
    assert set(result) >= {"query_id", "decision", "answers"}
    assert api.judge(result["query_id"], json.dumps({"clip": 1, "llava": 0}), "bot") == {"saved": 2}
    stats = api.stats()
    assert stats["counts"]["judgments"] == 1
    import gradio as gr

    with pytest.raises(gr.Error, match="not saved"):
        api.judge("does-not-exist", '{"clip": 1}', "bot")
    with pytest.raises(gr.Error, match="valid JSON"):
        api.judge(result["query_id"], "{nope", "bot")
    with pytest.raises(gr.Error, match="type a question"):
        api.compare(CAT, "", "")


def test_parse_verdicts_forms() -> None:
    assert parse_verdicts('{"a": 1}') == {"verdicts": {"a": 1}}
    full = parse_verdicts('{"verdicts": {"a": 0}, "best": "tie", "reason": "r"}')
    assert full["best"] == "tie" and full["verdicts"] == {"a": 0}
    with pytest.raises(ValueError, match="must be a JSON object"):
        parse_verdicts("[1, 2]")


def test_annotation_session_resumes_where_it_stopped(runtime) -> None:
    view = AnnotateView(runtime)
    spec = view.dataset_choices()[0][1]
    message, _, state = view.start("ada", spec, None)
    assert "New session" in message and len(state.order) == 10
    # no trained router: every margin is equal, so the items come in file order
    assert state.current == "chelsea"
    frames = list(view.show(state))
    state = frames[-1][-1]
    first = state.current
    verdicts = frames[-1][3 + 3: 3 + 6]
    # pre-filled from the reference answer ("cat"): both doubles answer the first label, "cat"; the
    # failed backend gets no verdict
    assert verdicts == [answer_grid.VERDICTS[0], answer_grid.VERDICTS[0], None]
    assert "pre-filled" in frames[-1][2]
    view.save(state, *verdicts, None, "", "")
    assert first in state.done and state.current == "coffee"
    # "What is in the cup?" (reference "coffee", no labels): the doubles say "circle" and "a circle"
    following = list(view.show(state))[-1]
    assert following[3 + 3: 3 + 6] == [answer_grid.VERDICTS[1], answer_grid.VERDICTS[1], None]
    # a new browser session tomorrow: same annotator and dataset -> same session, one item done
    message, _, resumed = view.start("ada", spec, AnnotationState())
    assert "resuming" in message
    assert resumed.session_id == state.session_id and resumed.done == {first}
    assert resumed.current != first


def test_annotation_skip_brings_item_back_later(runtime) -> None:
    view = AnnotateView(runtime)
    spec = view.dataset_choices()[0][1]
    _, _, state = view.start("bo", spec, None)
    state = list(view.show(state))[-1][-1]
    skipped = state.current
    assert view.skip(state)[0].startswith("Skipped") and state.current != skipped
    on = state.current
    # a reload: resume reopens the item she was on, not the one she skipped
    _, _, state = view.start("bo", spec, AnnotationState())
    assert state.current == on
    seen = []
    while state.current is not None:
        frame = list(view.show(state))[-1]
        state = frame[-1]
        seen.append(state.current)
        view.save(state, *frame[3 + 3: 3 + 6], None, "", "")
    assert seen[-1] == skipped and seen.count(skipped) == 1 and len(seen) == len(state.order)


def test_stats_hold_no_server_paths(runtime, tmp_path) -> None:
    runtime.store.record_router_version("v1", str(tmp_path / "routers" / "v1"), {"metrics": {"routed_accuracy": 0.5}})
    versions = runtime.stats()["router_versions"]
    assert versions and all("path" not in row for row in versions)
    assert str(tmp_path) not in json.dumps(runtime.stats(), default=str)


def test_leaderboard_refresh_draws_judged_accuracy(runtime) -> None:
    from components.leaderboard_tab import LeaderboardView

    result = runtime.compare_all(CAT, "What animal is this?", "cat, dog")
    runtime.judge(result.query_id, {"clip": 1, "llava": 0}, best="clip")
    counts, accuracy, ratings, *_ = LeaderboardView(runtime).refresh()
    assert "**1** judgments" in counts
    heatmap = accuracy.data[0]
    assert list(heatmap.x) == ["object"] and list(heatmap.y) == ["clip", "llava"]
    assert [row[0] for row in heatmap.z] == [100.0, 0.0]  # clip judged correct, llava wrong
    # one judgment per cell: the percentage is hidden and the cell greyed over (fewer than 5)
    assert [row[0] for row in heatmap.text] == ["n=1", "n=1"]
    assert [row[0] for row in accuracy.data[1].z] == [1.0, 1.0]
    # "best = clip" beats both others: clip rated first and above them, the other two level
    (points,) = ratings.data
    assert points.y[0] == "clip" and set(points.y) == {"clip", "llava", "broken"}
    assert points.x[0] > points.x[1] and points.x[1] == pytest.approx(points.x[2])
    assert list(points.customdata) == [2, 1, 1]  # comparisons per backend


def test_annotation_order_names_the_order_it_really_uses(runtime, monkeypatch) -> None:
    from components import annotate_tab
    from data.datasets import EvalItem

    questions = ["How many cats?", "How many dogs?", "What colour is it?", "What colour is the sky?"]
    items = [EvalItem(id=f"i{k}", image=CAT, question=q, answer="cat") for k, q in enumerate(questions)]
    assert runtime.router.active.kind == "category_rule"
    order, words = AnnotateView(runtime).order_items(items)
    assert order == ["i0", "i2", "i1", "i3"]  # one of each kind in turn: nothing learned to be uncertain about
    assert "no learned router" in words
    monkeypatch.setattr(annotate_tab, "order_items", lambda *a, **k: 1 / 0)
    assert AnnotateView(runtime).order_items(items) == (["i0", "i1", "i2", "i3"], "file order (the router could not score these items)")


def test_accuracy_heatmap_shows_counts_and_greys_thin_cells() -> None:
    import pandas as pd

    from components.leaderboard_tab import accuracy_figure

    frame = pd.DataFrame([
        {"backend": "clip", "category": "object", "accuracy": 0.8, "n": 10},
        {"backend": "clip", "category": "counting", "accuracy": 1.0, "n": 2},
    ])
    figure = accuracy_figure(frame)
    main, grey = figure.data
    cells = dict(zip(main.x, main.text[0], strict=True))
    assert cells == {"counting": "n=2", "object": "80%<br>n=10"}
    greyed = dict(zip(grey.x, grey.z[0], strict=True))
    assert greyed == {"counting": 1.0, "object": None}
