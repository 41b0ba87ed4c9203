"""router.metrics on hand-computed examples, and the metrics and curve evaluate adds to its report."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from components.cost_quality import OVERALL, cost_quality_figure, cost_quality_scopes
from router.base import BackendChoice, ImageInput, Router, Scores, choose_by_utility, utility_matrix
from router.evaluation import evaluate
from router.metrics import (
    aiq,
    cpt,
    curve_points,
    headroom_captured,
    lambda_grid,
    paired_bootstrap_ci,
    upper_hull,
)
from router.table import PairTable


# ----------------------------------------------------------------------------------------------- AIQ
def test_aiq_of_a_convex_curve_is_the_chord() -> None:
    # (0.5, 0.6) lies under the chord from (0, 0.5) to (1, 0.8): mixing the two ends beats it,
    # so the hull is that chord and the area is (0.5 + 0.8) / 2 = 0.65.
    costs, acc = [0.0, 0.5, 1.0, 0.6], [0.5, 0.6, 0.8, 0.55]
    hx, hy = upper_hull(costs, acc)
    assert hx.tolist() == [0.0, 1.0] and hy.tolist() == [0.5, 0.8]
    assert aiq(costs, acc, (0.0, 1.0)) == pytest.approx(0.65)


def test_aiq_is_flat_after_the_most_accurate_point() -> None:
    # Hull (0, .5) (.25, .7) (.5, .75), then flat at .75 (paying more for .7 is never chosen):
    # .25 * (.5 + .7) / 2 + .25 * (.7 + .75) / 2 + .5 * .75 = .15 + .18125 + .375 = .70625
    costs, acc = [0.0, 0.25, 0.5, 1.0], [0.5, 0.7, 0.75, 0.7]
    hx, hy = upper_hull(costs, acc)
    assert hx.tolist() == [0.0, 0.25, 0.5]
    assert aiq(costs, acc, (0.0, 1.0)) == pytest.approx(0.70625)


def test_aiq_extends_flat_outside_the_points_and_normalises_by_the_range() -> None:
    # Range [0, 1], points (.2, .5) and (.6, .7): .2 * .5 + .4 * .6 + .4 * .7 = .62
    assert aiq([0.2, 0.6], [0.5, 0.7], (0.0, 1.0)) == pytest.approx(0.62)
    # Units do not matter: the same curve in costs ten times larger.
    assert aiq([2.0, 6.0], [0.5, 0.7], (0.0, 10.0)) == pytest.approx(0.62)
    assert aiq([0.3, 0.3], [0.5, 0.7], (0.3, 0.3)) is None  # no cost range: nothing to trade off
    assert aiq([], [], (0.0, 1.0)) is None


# ----------------------------------------------------------------------------------------------- CPT
def test_cpt_two_backends_is_the_share_of_calls_to_the_strong_one() -> None:
    # Weak (cost 0.1, acc .4), strong (1.1, .8): the gap is .4; recovering 50% needs acc >= .6.
    costs = [0.1, 0.35, 0.6, 0.85, 1.1]
    acc = [0.4, 0.55, 0.65, 0.72, 0.8]
    cheap, best = (0.1, 0.4), (1.1, 0.8)
    assert cpt(costs, acc, cheap=cheap, best=best, recover=0.5) == pytest.approx(0.5)  # (0.6 - 0.1) / 1.0
    assert cpt(costs, acc, cheap=cheap, best=best, recover=0.8) == pytest.approx(0.75)  # acc .72 = 80% of the gap
    assert cpt(costs, acc, cheap=cheap, best=best, recover=1.0) == pytest.approx(1.0)
    assert cpt(costs[:3], acc[:3], cheap=cheap, best=best, recover=0.8) is None  # never reached
    assert cpt(costs, acc, cheap=(0.1, 0.8), best=(1.1, 0.8), recover=0.5) is None  # no gap to recover


# --------------------------------------------------------------------------------------- bootstrap
def test_paired_bootstrap_interval_brackets_the_mean_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    routed = (rng.random(400) < 0.7).astype(float)
    single = np.where(rng.random(400) < 0.8, routed, 1 - routed)  # agrees with routed on ~80% of queries
    diff = routed - single
    low, high = paired_bootstrap_ci(diff, resamples=2000, seed=3)
    assert low < diff.mean() < high
    assert high - low < 0.15
    assert paired_bootstrap_ci(diff, resamples=2000, seed=3) == (low, high)
    # Identical choices: no uncertainty at all.
    assert paired_bootstrap_ci(np.zeros(50)) == (0.0, 0.0)
    # A larger sample gives a narrower interval.
    wide = paired_bootstrap_ci(diff[:50], seed=3)
    assert wide[1] - wide[0] > high - low


def test_headroom_captured() -> None:
    assert headroom_captured(0.5, 0.4, 0.6) == pytest.approx(0.5)
    assert headroom_captured(0.3, 0.4, 0.6) == pytest.approx(-0.5)
    assert headroom_captured(0.4, 0.4, 0.4) is None


# ----------------------------------------------------------------------------------------- the sweep
def test_lambda_grid_holds_every_breakpoint_and_ends_at_always_cheapest() -> None:
    probs = np.array([[0.9, 0.5], [0.6, 0.5], [0.2, 0.7]])
    costs = np.array([2.0, 0.0])  # normalised: 1 and 0
    grid = lambda_grid(probs, costs)
    # Backend 0 beats the free one while lambda < p0 - p1: .4 for the first query, .1 for the second.
    assert grid[0] == 0.0 and {0.1, 0.4} <= set(np.round(grid, 9)) and grid[-1] > 0.4
    choices = np.stack([choose_by_utility(utility_matrix(probs, costs, lam), costs) for lam in grid])
    assert choices[0].tolist() == [0, 0, 1] and choices[-1].tolist() == [1, 1, 1]
    y = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    cost, acc = curve_points(choices, y, costs)
    assert cost[0] == pytest.approx(4 / 3) and acc[0] == pytest.approx(2 / 3)
    assert cost[-1] == 0.0 and acc[-1] == pytest.approx(2 / 3)
    assert lambda_grid(probs, [1.0, 1.0]).tolist() == [0.0]  # equal costs: lambda changes nothing


# --------------------------------------------------------------------------------- evaluate's report
BACKENDS = [BackendChoice("cheap", "vlm", 0.1), BackendChoice("dear", "vlm+llm", 1.0)]


class TableRouter(Router):
    """A test double: P(correct) looked up by query id."""

    kind = "table"

    def __init__(self, probs: dict[str, np.ndarray], priors: dict[str, float] | None = None) -> None:
        super().__init__(BACKENDS, version="test")
        self.probs = probs
        self.card = {"priors": {"accuracy": priors, "accuracy_by_category": {}}} if priors else {}

    def _score(self, image: ImageInput, question: str, **context: Any) -> Scores:
        return Scores(self.probs[context["query_id"]], None)


def _table(n: int = 200, seed: int = 0) -> tuple[PairTable, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cats = ["counting" if i % 2 else "object" for i in range(n)]
    y = np.zeros((n, 2))
    y[:, 0] = [float(rng.random() < (0.8 if c == "object" else 0.2)) for c in cats]
    y[:, 1] = (rng.random(n) < 0.6).astype(float)
    qids = [f"q{i}" for i in range(n)]
    table = PairTable.from_columns(
        backends=["cheap", "dear"], query_ids=qids, questions=[f"question {i}" for i in range(n)],
        groups=[f"g{i}" for i in range(n)], query_index=np.repeat(np.arange(n), 2), backend_index=np.tile([0, 1], n),
        correct=y.reshape(-1), categories=cats,
    )
    probs = {q: np.array([0.8 if c == "object" else 0.2, 0.6]) for q, c in zip(qids, cats, strict=True)}
    return table, probs


def test_evaluate_reports_delta_interval_headroom_aiq_and_cpt() -> None:
    table, probs = _table()
    report = evaluate(TableRouter(probs, priors={"cheap": 0.5, "dear": 0.6}), table, timing_sample=0)
    y = table.correct.astype(float)
    routed = report["routed_accuracy"]
    assert report["delta_best_single_backend"] == "dear" and report["delta_best_single_chosen_on"] == "training rows"
    assert report["delta_best_single"] == pytest.approx(routed - y[:, 1].mean(), abs=1e-4)
    low, high = report["delta_best_single_ci95"]
    assert low <= report["delta_best_single"] <= high and high - low > 0
    ece_low, ece_high = report["ece_ci95"]
    assert ece_low <= report["ece"] <= ece_high
    floor, floor_p95 = report["ece_if_calibrated"]
    assert 0 < floor <= floor_p95 < 1
    room = y.max(axis=1).mean() - y[:, 1].mean()
    assert report["headroom_captured"] == pytest.approx(report["delta_best_single"] / room, abs=1e-3)
    assert 0.0 < report["aiq"] <= max(routed, y.mean(axis=0).max()) + 1e-9
    assert report["cpt50"] is not None and report["cpt50"] <= report["cpt80"] <= 1.0
    curve = report["cost_quality"]
    overall = curve["overall"]
    # lambda = 0 is the router's own choice; the last point always takes the cheap backend.
    assert overall["points"][0]["accuracy"] == pytest.approx(routed, abs=1e-4)
    assert overall["points"][-1]["cost"] == pytest.approx(0.1) and overall["points"][-1]["accuracy"] == pytest.approx(y[:, 0].mean(), abs=1e-4)
    assert [b["name"] for b in overall["backends"]] == ["cheap", "dear"]
    assert sorted(curve["by_category"]) == ["counting", "object"]
    assert curve["by_category"]["object"]["n_queries"] == 100


def test_best_single_falls_back_to_the_evaluation_rows_without_priors() -> None:
    table, probs = _table()
    # Priors that disagree with these rows: the training choice stands when the router has them.
    with_priors = evaluate(TableRouter(probs, priors={"cheap": 0.9, "dear": 0.1}), table, timing_sample=0)
    assert with_priors["delta_best_single_backend"] == "cheap"
    without = evaluate(TableRouter(probs), table, timing_sample=0)
    assert without["delta_best_single_backend"] == without["best_single_backend"] == "dear"
    assert without["delta_best_single_chosen_on"] == "evaluation rows"


def test_cost_quality_figure_from_a_report() -> None:
    table, probs = _table()
    report = evaluate(TableRouter(probs), table, timing_sample=0)
    card = {"metrics": report}
    assert cost_quality_scopes(card) == [OVERALL, "counting", "object"]
    figure = cost_quality_figure(card)
    router_trace, backends_trace = figure.data
    assert len(router_trace.x) == len(report["cost_quality"]["overall"]["points"])
    assert list(backends_trace.text) == ["cheap", "dear"]
    assert "AIQ" in figure.layout.title.text
    per_cat = cost_quality_figure(card, "object")
    assert "object" in per_cat.layout.title.text and "100 questions" in per_cat.layout.title.text
    # No data: a message, not an error.
    assert len(cost_quality_figure(None).data) == 0
    assert "too few" in cost_quality_figure(card, "ghost").layout.annotations[0].text


# ----------------------------------------------------------------------------- ECE's interval and its sampling floor
def test_ece_floor_is_the_noise_of_a_calibrated_predictor_and_shrinks_with_data() -> None:
    from router.calibration import ece_if_calibrated, expected_calibration_error

    rng = np.random.default_rng(3)
    small, large = rng.random((66, 2)), rng.random((5000, 2))
    floor_small, p95_small = ece_if_calibrated(small, seed=1)
    floor_large, _ = ece_if_calibrated(large, seed=1)
    assert 0.04 < floor_small < p95_small < 0.2  # 132 cells: a perfect predictor still shows ~0.08
    assert floor_large < floor_small / 4  # ~ 1/sqrt(n)
    # Labels drawn from the probabilities land inside the floor's range; a miscalibrated one does not.
    labels = (rng.random(small.shape) < small).astype(float)
    assert expected_calibration_error(small, labels) < 0.2
    assert expected_calibration_error(np.clip(small + 0.3, 0, 1), labels) > p95_small
    # A masked cell does not count, and nothing to measure is NaN rather than zero.
    mask = np.ones_like(small, dtype=bool)
    mask[:, 1] = False
    assert ece_if_calibrated(small, mask, seed=1) != (floor_small, p95_small)
    assert np.isnan(ece_if_calibrated(np.zeros((0, 2)))[0])


def test_ece_bootstrap_interval_brackets_the_measured_value() -> None:
    from router.calibration import ece_bootstrap_ci, expected_calibration_error

    rng = np.random.default_rng(4)
    p = rng.random((80, 3))
    y = (rng.random(p.shape) < np.clip(p + 0.15, 0, 1)).astype(float)
    low, high = ece_bootstrap_ci(p, y, seed=0)
    assert low <= expected_calibration_error(p, y) <= high and high - low > 0.02
    assert ece_bootstrap_ci(p, y, seed=0) == (low, high)  # seeded
