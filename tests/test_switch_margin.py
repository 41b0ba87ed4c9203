"""The switch margin: the best single backend keeps a question unless another's predicted edge is larger
than a margin fitted on out-of-fold training rows (router/margin.py)."""

from __future__ import annotations

import numpy as np

from components.router_card import rerank
from router.base import choose_with_margin
from router.margin import fit_switch_margin

COSTS = np.array([0.05, 1.0])


def test_the_default_backend_keeps_questions_unless_the_edge_beats_the_margin() -> None:
    utilities = np.array([[0.55, 0.50], [0.80, 0.40], [0.30, 0.60]])
    assert list(choose_with_margin(utilities, COSTS, 1, 0.0)) == [0, 0, 1]
    assert list(choose_with_margin(utilities, COSTS, 1, 0.1)) == [1, 0, 1]  # a 0.05 edge is not enough
    assert choose_with_margin(utilities[0], COSTS, 1, 0.1) == 1
    assert choose_with_margin(utilities[1], COSTS, None, 0.1) == 0  # no default: plain argmax


def _pool(rng: np.random.Generator, n: int, *, real_edge: bool) -> tuple[np.ndarray, np.ndarray]:
    """Backend 1 is right 60% of the time. With ``real_edge`` backend 0 is right exactly where its predicted
    edge is large; otherwise the predicted edges are noise around equal skill."""
    p1 = np.full(n, 0.6)
    p0 = 0.6 + rng.normal(0, 0.06, n)
    correct1 = (rng.random(n) < 0.6).astype(float)
    if real_edge:
        correct0 = np.where(p0 - p1 > 0.03, 1.0, np.where(p0 - p1 > 0, correct1, 0.0))
    else:
        correct0 = (rng.random(n) < 0.55).astype(float)
    return np.column_stack([p0, p1]), np.column_stack([correct0, correct1])


def test_noise_edges_get_a_margin_real_edges_keep_switching() -> None:
    rng = np.random.default_rng(0)
    probs, correct = _pool(rng, 800, real_edge=False)
    margin, report = fit_switch_margin(probs, correct, COSTS, 1)
    assert margin >= 0.1, report  # switching on noise only loses: stay with the best single backend
    probs, correct = _pool(rng, 800, real_edge=True)
    margin, report = fit_switch_margin(probs, correct, COSTS, 1)
    assert margin <= 0.03, report  # the edges are real: keep taking them
    assert report["accuracy"]["0"] > report["accuracy"]["0.2"]


def test_too_few_measured_queries_fit_no_margin() -> None:
    probs = np.full((10, 2), 0.5)
    correct = np.full((10, 2), np.nan)
    margin, report = fit_switch_margin(probs, correct, COSTS, 1)
    assert margin == 0.0 and "too few" in report["rule"]


def test_the_cards_rerank_applies_the_same_margin() -> None:
    decision = {"choice": "gemma", "confidence": 0.6, "probabilities": {"eff": 0.65, "gemma": 0.6},
                "default_backend": "gemma", "switch_margin": 0.1, "category": "object"}
    assert rerank(decision, {"eff": 0.05, "gemma": 1.0}, 0.0)["choice"] == "gemma"
    assert rerank(decision, {"eff": 0.05, "gemma": 1.0}, 0.5)["choice"] == "eff"  # the cost weight can still move it
    plain = {k: v for k, v in decision.items() if k not in ("default_backend", "switch_margin")}
    assert rerank(plain, {"eff": 0.05, "gemma": 1.0}, 0.0)["choice"] == "eff"
