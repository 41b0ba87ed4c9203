"""The replay simulator, the annotation strategies and the incremental retrain (router/simulate.py etc.)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.pairs import write_pairs
from router.incremental import Basis, FeatureCache, fit_incremental, routed_choice
from router.simulate import SimulateConfig, judgments_to_match_random, plan_budgets
from router.strategies import Candidates, queue_order, select

ROOT = Path(__file__).resolve().parent.parent

#: (question template, share of the pool, P(correct) of backends vlm-a, llm-b, ocr-c): two common kinds
#: where vlm-a is best, five rare kinds where another backend is far better.
KINDS = [
    ("what colour is the {w} car", 0.30, (0.80, 0.55, 0.50)),
    ("what shape is the {w} sign", 0.30, (0.75, 0.55, 0.45)),
    ("how many {w} birds are flying", 0.08, (0.15, 0.85, 0.40)),
    ("what does the {w} poster say", 0.08, (0.10, 0.40, 0.90)),
    ("why is the {w} door open", 0.08, (0.20, 0.85, 0.35)),
    ("which breed is the {w} dog", 0.08, (0.25, 0.30, 0.85)),
    ("where is the {w} lamp placed", 0.08, (0.20, 0.80, 0.30)),
]
WORDS = ["red", "small", "old", "tall", "bright", "wet", "far", "new", "dark", "big", "tiny", "odd"]
BACKENDS = [("vlm-a", 0.1), ("llm-b", 1.0), ("ocr-c", 0.5)]


def synthetic_pool(path: Path, n: int = 1200, seed: int = 0) -> Path:
    """A pairs file (the real format, written by data.pairs) where rare kinds need another backend."""
    rng = np.random.default_rng(seed)
    shares = np.array([k[1] for k in KINDS])
    shares /= shares.sum()
    rows = []
    for q in range(n):
        template, _, probs = KINDS[rng.choice(len(KINDS), p=shares)]
        question = template.format(w=WORDS[rng.integers(len(WORDS))])
        sha = hashlib.sha256(f"img-{seed}-{q}".encode()).hexdigest()
        for (name, latency), p in zip(BACKENDS, probs, strict=True):
            rows.append({"query_id": f"q{q}", "question": question, "image_sha256": sha, "backend": name,
                         "correct": float(rng.random() < p), "latency_s": latency})
    write_pairs(rows, path)
    return path


def test_simulate_cli_json_and_a_strategy_beats_random(tmp_path: Path) -> None:
    pool = synthetic_pool(tmp_path / "pool.jsonl")
    proc = subprocess.run(
        [sys.executable, "-m", "router", "simulate", "--pairs", str(pool), "--seeds", "3", "--json"],  # the default encoder (MiniLM), as a user runs it
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"strategies", "judgments_to_match_random"}
    assert {"random", "uncertainty", "kcenter"} <= set(result["strategies"])
    for curve in result["strategies"].values():
        assert set(curve) == {"budgets", "routed_accuracy", "routed_accuracy_ci95"}
        assert len(curve["budgets"]) >= 4
        assert curve["budgets"] == sorted(curve["budgets"])
        for acc, (lo, hi) in zip(curve["routed_accuracy"], curve["routed_accuracy_ci95"], strict=True):
            assert lo <= acc <= hi
    fractions = result["judgments_to_match_random"]
    assert fractions["random"] == 1.0
    best = min(f for n, f in fractions.items() if n != "random" and f is not None)
    assert best <= 0.9, fractions


def test_judgments_to_match_random_interpolates_and_reports_never() -> None:
    curves = {
        "random": {"budgets": [10, 20, 30, 40], "routed_accuracy": [0.5, 0.6, 0.65, 0.7]},
        "fast": {"budgets": [10, 20, 30, 40], "routed_accuracy": [0.5, 0.6, 0.8, 0.8]},
        "slow": {"budgets": [10, 20, 30, 40], "routed_accuracy": [0.5, 0.55, 0.6, 0.69]},
    }
    out = judgments_to_match_random(curves)
    assert out["random"] == 1.0
    assert out["fast"] == pytest.approx((20 + 10 * (0.1 / 0.2)) / 40)
    assert out["slow"] is None


def test_plan_budgets_has_four_points_and_ends_at_the_budget() -> None:
    budgets = plan_budgets(400, SimulateConfig())
    assert len(budgets) >= 4 and budgets[0] == 20 and budgets[-1] == 200
    assert plan_budgets(100, SimulateConfig(seed_size=10, step=30, budget=70)) == [10, 40, 70]


def test_incremental_fit_learns_the_better_backend_per_kind() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    kind = rng.integers(0, 2, n)
    features = np.hstack([np.eye(2)[kind] + rng.normal(0, 0.1, (n, 2)), rng.normal(0, 1, (n, 6))]).astype(np.float32)
    p = np.where(kind[:, None] == 0, [0.9, 0.2], [0.2, 0.9])
    correct = (rng.random((n, 2)) < p).astype(np.float64)
    correct[rng.random((n, 2)) < 0.1] = np.nan  # missing cells are skipped, not zeros
    questions = ["what is this"] * n
    basis = Basis.from_pool(features, components=4)
    design = basis.transform(features, questions)
    model = fit_incremental(design[:1500], correct[:1500], basis=basis, backends=["a", "b"])
    choice = routed_choice(model.probabilities(design[1500:]), [0.0, 0.0])
    assert (choice == (kind[1500:] == 1)).mean() > 0.95
    again = fit_incremental(design[:1500], correct[:1500], basis=basis, backends=["a", "b"], warm=model.coef)
    assert again.newton_steps < model.newton_steps  # the warm start is already at the optimum
    assert np.allclose(again.coef, model.coef, atol=1e-3)


def test_feature_cache_computes_each_content_once() -> None:
    cache = FeatureCache()
    calls: list[list[int]] = []

    def compute(positions: list[int]) -> np.ndarray:
        calls.append(positions)
        return np.arange(len(positions) * 2, dtype=np.float32).reshape(-1, 2)

    first = cache.rows(["a", "b"], compute)
    second = cache.rows(["b", "c", "a"], compute)
    assert calls == [[0, 1], [1]]
    assert np.array_equal(second[0], first[1]) and np.array_equal(second[2], first[0])


def test_strategies_pick_distinct_items_and_the_queue_mixes_random_picks() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((50, 2))
    design = rng.normal(size=(50, 5))
    cands = Candidates(probabilities=probs, costs=[0.0, 0.0], design=design, strata=rng.integers(0, 4, 50),
                       judged_design=design[:0], judged_strata=np.zeros(0, dtype=np.int64))
    for name in ("random", "uncertainty", "regret", "kcenter", "stratified"):
        picks = select(name, cands, 10, np.random.default_rng(1))
        assert len(set(picks.tolist())) == 10
    margins = np.abs(probs[:, 0] - probs[:, 1])
    assert set(select("uncertainty", cands, 5, rng).tolist()) == set(np.argsort(margins)[:5].tolist())
    order = queue_order("uncertainty", cands, random_share=0.1, seed=3)
    assert sorted(order.tolist()) == list(range(50))
    assert order.tolist() != np.argsort(margins).tolist()  # random picks are mixed in
    with pytest.raises(ValueError):
        select("nope", cands, 3, rng)
