"""The Annotate queue's order: the measured strategy, named honestly, refreshed by an incremental retrain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.annotate_order import (
    FALLBACK_STRATEGY,
    MeasuredStrategy,
    QueueRefresher,
    measured_strategy,
    order_items,
    refreshed_order,
)
from data.datasets import EvalItem
from data.store import Store
from router.baselines import CategoryRuleRouter
from router.features import HashingTextEncoder
from router.incremental import Basis, fit_incremental
from router.strategies import STRATEGIES, margin
from router.table import build_table
from router.training import TrainConfig, train_router
from tests.test_router_support import BACKENDS, make_pairs, write_jsonl

IMAGE = Image.new("RGB", (24, 24), (120, 40, 40))


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = write_jsonl(make_pairs(160, seed=5), tmp_path_factory.mktemp("pairs") / "pairs.jsonl")
    table, _ = build_table(pairs=[path], backends=[b.name for b in BACKENDS])
    return train_router(table, BACKENDS, config=TrainConfig(timing_sample=5), text_encoder=HashingTextEncoder()).router


def items_for(questions: list[str]) -> list[EvalItem]:
    return [EvalItem(id=f"i{k}", image=IMAGE, question=q, answer="x") for k, q in enumerate(questions)]


QUESTIONS = ([f"how many cups are there, photo {k}?" for k in range(12)]
             + [f"what color is the ball in photo {k}?" for k in range(12)]
             + [f"why is the dog here in photo {k}?" for k in range(12)])


def test_the_shipped_simulator_result_names_a_measured_strategy(tmp_path: Path) -> None:
    shipped = measured_strategy()
    assert shipped.name in STRATEGIES and shipped.name != "random"
    assert "replay simulator measured it best" in shipped.why and "% of the judgments" in shipped.why
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert measured_strategy(broken) == MeasuredStrategy(FALLBACK_STRATEGY, "no simulator result to choose from")
    never = tmp_path / "never.json"
    never.write_text(json.dumps({"strategies": {}, "judgments_to_match_random": {"random": 1.0, "kcenter": None}}))
    assert measured_strategy(never).name == FALLBACK_STRATEGY


def test_without_a_learned_router_the_queue_spreads_question_kinds_and_says_so() -> None:
    order, words = order_items(CategoryRuleRouter(BACKENDS), items_for(QUESTIONS), [0.05, 1.0, 3.0],
                               MeasuredStrategy("uncertainty", "test"))
    assert "no learned router" in words and "least certain" not in words
    assert sorted(order) == sorted(f"i{k}" for k in range(36))
    # one of each kind in turn: counting, attribute, reasoning, counting, ...
    assert order[:6] == ["i0", "i12", "i24", "i1", "i13", "i25"]


def test_a_learned_router_orders_by_the_strategy_with_one_random_pick_in_ten(learned) -> None:  # type: ignore[no-untyped-def]
    items = items_for(QUESTIONS)
    order, words = order_items(learned, items, list(learned.costs), MeasuredStrategy("uncertainty", "measured"))
    assert words == "least certain first, one pick in 10 random; measured"
    assert sorted(order) == sorted(i.id for i in items)
    probabilities, _ = learned.score_batch([i.image for i in items], [i.question for i in items])
    gaps = dict(zip([i.id for i in items], margin(probabilities, list(learned.costs)), strict=True))
    ranked = [item_id for place, item_id in enumerate(order, start=1) if place % 10]  # the random picks are at 10, 20, ...
    assert [gaps[i] for i in ranked] == sorted(gaps[i] for i in ranked)
    assert gaps[order[0]] == pytest.approx(min(gaps.values()))


def test_verdicts_move_the_refreshed_order(learned) -> None:  # type: ignore[no-untyped-def]
    items = items_for(QUESTIONS)
    names = learned.backend_names
    strategy = MeasuredStrategy("uncertainty", "measured")
    before = refreshed_order(learned, items, {}, names, list(learned.costs), strategy)
    assert len(before) == len(items)
    # Judging every reasoning question: all backends tie on them, so those near them become uncertain.
    judged = {f"i{k}": dict.fromkeys(names, 1.0) for k in range(24, 34)}
    after = refreshed_order(learned, items, judged, names, list(learned.costs), strategy)
    assert set(after) == {i.id for i in items} - set(judged)
    assert after != [i for i in before if i not in judged]
    assert {"i34", "i35"} & set(after[:3])  # the two unjudged reasoning questions come first now


def test_row_weights_of_zero_leave_rows_out_of_the_fit() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    y = (rng.random((80, 2)) < 0.5).astype(np.float64)
    questions = ["what is this?"] * 80
    basis = Basis.from_pool(x, components=4)
    design = basis.transform(x, questions)
    weights = np.r_[np.ones(50), np.zeros(30)]
    weighted = fit_incremental(design, y, basis=basis, backends=["a", "b"], row_weights=weights)
    dropped = fit_incremental(design[:50], y[:50], basis=basis, backends=["a", "b"])
    np.testing.assert_allclose(weighted.coef, dropped.coef, atol=1e-5)


def test_the_store_reorders_only_pending_items_and_reads_a_sessions_verdicts(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db.sqlite")
    try:
        session = store.start_session("ann", "set", ["a", "b", "c", "d", "e"])
        assert store.claim_item(session, "ann") == "a"  # handed out: keeps its place
        query = store.record_query(image_sha256=store.put_image(IMAGE), question="how many?", source="annotation",
                                   session_id=session, item_id="b")
        store.record_answer(query, "clip", {"text": "2", "latency_s": 0.1})
        store.record_answer(query, "llava", {"text": "3", "latency_s": 0.2})
        store.record_judgment(query_id=query, verdicts={"clip": 1.0, "llava": 0.0}, annotator="ann", session_id=session)
        store.mark_item_done(session, "b")
        moved = store.reorder_pending(session, ["e", "b", "a", "d", "c", "zzz"])
        assert moved == 2
        assert store.session(session)["item_ids"] == ["a", "b", "e", "d", "c"]
        assert store.session_item_verdicts(session) == {"b": {"clip": 1.0, "llava": 0.0}}
        with pytest.raises(KeyError):
            store.reorder_pending("nope", ["a"])
    finally:
        store.close()


def test_the_refresher_runs_every_nth_save_once_per_session() -> None:
    refresher = QueueRefresher(every=3)
    calls: list[str] = []
    threads = [refresher.note_saved("s1", lambda: calls.append("s1")) for _ in range(7)]
    started = [t for t in threads if t is not None]
    assert [threads.index(t) for t in started] == [2, 5]
    for thread in started:
        thread.join(10)
    assert calls == ["s1", "s1"] and refresher.refreshes == {"s1": 2}
    failing = refresher.note_saved("s2", lambda: 1 / 0)
    assert failing is None  # first save of s2
    refresher.note_saved("s2", lambda: 1 / 0)
    thread = refresher.note_saved("s2", lambda: 1 / 0)
    thread.join(10)
    assert "s2" not in refresher.refreshes  # a failed refresh is logged, never raised


def test_learning_curve_draws_versions_by_judgments_with_intervals_and_baselines() -> None:
    from components.learning_curve import versions_learning_figure

    versions = [
        {"version": "v2", "active": True, "routed_accuracy": 0.6, "routed_accuracy_ci95": [0.5, 0.7], "judged_queries": 200,
         "best_single_accuracy": 0.55, "category_rule_accuracy": 0.5, "created_at": "2"},
        {"version": "v1", "routed_accuracy": 0.4, "routed_accuracy_ci95": [0.3, 0.45], "judged_queries": 20,
         "best_single_accuracy": 0.5, "category_rule_accuracy": 0.45, "created_at": "1"},
    ]
    figure = versions_learning_figure(versions)
    router, best, rule = figure.data
    assert list(router.x) == [20, 200] and list(router.y) == pytest.approx([40.0, 60.0])
    assert list(router.error_y.array) == pytest.approx([5.0, 10.0]) and list(router.error_y.arrayminus) == pytest.approx([10.0, 10.0])
    assert list(best.y) == pytest.approx([50.0, 55.0]) and list(rule.y) == pytest.approx([45.0, 50.0])
    assert not versions_learning_figure([{"version": "v0", "routed_accuracy": None}]).data  # nothing measured: a message


def test_simulator_figure_draws_each_shipped_strategy_with_its_band() -> None:
    from components.learning_curve import read_simulation, simulator_figure

    result = read_simulation()
    assert result is not None
    figure = simulator_figure(result)
    lines = [trace for trace in figure.data if trace.mode == "lines+markers"]
    bands = [trace for trace in figure.data if trace.fill == "toself"]
    assert len(lines) == len(bands) == len(result["strategies"]) >= 4
    assert all(len(line.x) >= 4 for line in lines)
    assert not simulator_figure(None).data
