"""Replay simulator: which annotation order makes the router learn fastest, measured on existing pairs.

``python -m router simulate --pairs P [--pairs P2 ...] [--strategies random,uncertainty,...] [--seeds N]
[--seed-size K] [--step S] [--budget B] [--encoder minilm|hashing] [--preset NAME] [--json]``

Per seed: the queries are split by image (the split key of :mod:`router.table`, hashed with a salt of
that seed) into a pool (80%) and a held-out part (20%, queries with a result for every backend). Every
strategy starts from the same random seed set of ``K`` pool queries; then, repeatedly, it picks the next
``S`` pool queries (their pair rows are revealed, as a person's judgment would reveal them), the router
is refitted by the incremental retrain the app uses (:mod:`router.incremental`, warm-started from the
previous fit) and its held-out routed accuracy is recorded, until ``B`` queries are judged. Features are
computed once for the whole pool (each question encoded and each image embedded once); every step is
a fit on those cached rows.

``--json`` prints::

    {"strategies": {name: {"budgets": [...], "routed_accuracy": [...], "routed_accuracy_ci95": [[lo, hi], ...]}},
     "judgments_to_match_random": {name: fraction or null}}

``routed_accuracy`` is the mean over seeds at each budget; its interval is a t-interval over seeds (with
one seed, a bootstrap over the held-out queries). A strategy's fraction is the share of random order's
final budget it needed to first reach random order's final mean accuracy, interpolated linearly between
the two budget points around the crossing (null if it never did); random's own is 1.0 by definition.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.base import RouterError
from router.incremental import Basis, fit_incremental, routed_choice
from router.strategies import STRATEGIES, Candidates, kmeans_strata, select
from router.table import SPLIT_SALT, PairTable, group_bucket

#: Two-sided 97.5% t quantiles for 1..10 degrees of freedom (then the normal's 1.96 is close enough).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


@dataclass
class SimulateConfig:
    strategies: Sequence[str] = STRATEGIES
    seeds: int = 5
    seed_size: int | None = None  # None: 5% of the pool, at least 10
    step: int | None = None  # None: (budget - seed_size) / 8
    budget: int | None = None  # None: half the pool
    heldout_fraction: float = 0.2
    lambda_cost: float = 0.0
    components: int = 64
    l2: float = 10.0  # the incremental fit's penalty (router.incremental.DEFAULT_L2)
    clusters: int | None = None  # None: about sqrt(pool / 2)


def plan_budgets(pool_size: int, config: SimulateConfig) -> list[int]:
    """Judgment counts at which the router is refitted and measured (seed set first, budget last)."""
    budget = int(config.budget or max(round(0.5 * pool_size), 2))
    budget = min(budget, pool_size)
    seed = int(config.seed_size or max(10, round(0.05 * pool_size)))
    seed = max(1, min(seed, budget))
    step = int(config.step or max(1, math.ceil((budget - seed) / 8)))
    budgets = list(range(seed, budget + 1, step))
    if budgets[-1] != budget:
        budgets.append(budget)
    return budgets


def _interval(values: np.ndarray, per_query: list[np.ndarray], seed: int) -> tuple[float, float]:
    n = values.size
    if n >= 2:
        t = _T975[n - 2] if n - 2 < len(_T975) else 1.96
        half = t * float(values.std(ddof=1)) / math.sqrt(n)
        return float(values.mean() - half), float(values.mean() + half)
    hits = per_query[0]
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, hits.size, size=(1000, hits.size))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def simulate(table: PairTable, features: np.ndarray, costs: Sequence[float], config: SimulateConfig | None = None) -> dict[str, Any]:
    """The simulator's result (the ``--json`` object) for a query table and its features."""
    config = config or SimulateConfig()
    unknown = [s for s in config.strategies if s not in STRATEGIES]
    if unknown:
        raise RouterError(f"unknown strategy {', '.join(unknown)}; valid: {', '.join(STRATEGIES)}")
    if len(table.backends) < 2:
        raise RouterError("the simulator needs pairs for at least 2 backends")
    correct = table.correct.astype(np.float64)
    basis = Basis.from_pool(features, components=config.components)
    design = basis.transform(features, table.questions)
    complete = np.isfinite(correct).all(axis=1)
    any_result = np.isfinite(correct).any(axis=1)
    groups = np.asarray(table.groups, dtype=object)
    unique_groups, inverse = np.unique(groups.astype(str), return_inverse=True)
    runs: dict[str, list[list[float]]] = {s: [] for s in config.strategies}
    hits_at: dict[str, list[list[np.ndarray]]] = {s: [] for s in config.strategies}
    splits = []
    for seed in range(int(config.seeds)):
        bucket = np.array([group_bucket(g, f"{SPLIT_SALT}:simulate:{seed}") for g in unique_groups])[inverse]
        held = np.flatnonzero((bucket < config.heldout_fraction) & complete)
        pool = np.flatnonzero((bucket >= config.heldout_fraction) & any_result)
        if held.size < 5 or pool.size < 10:
            raise RouterError(f"too few queries to simulate: {pool.size} in the pool and {held.size} held out (need 10 and 5)")
        splits.append((held, pool))
    if not splits:
        raise RouterError("--seeds must be at least 1")
    # One budget plan for every seed (from the smallest pool), so the curves average the same points.
    budgets = plan_budgets(min(p.size for _, p in splits), config)
    k = config.clusters or max(2, round(math.sqrt(min(p.size for _, p in splits) / 2)))
    strata_all = kmeans_strata(design[:, :-1], k, seed=0)  # every column but the intercept
    for seed, (held, pool) in enumerate(splits):
        rng = np.random.default_rng(seed)
        seed_set = rng.choice(pool, size=budgets[0], replace=False)
        for s_index, name in enumerate(config.strategies):
            acc, hits = _run_strategy(name, design, correct, costs, strata_all, pool, held, seed_set, budgets,
                                      basis, table.backends, config.lambda_cost, np.random.default_rng([seed, s_index]),
                                      l2=config.l2)
            runs[name].append(acc)
            hits_at[name].append(hits)
    out: dict[str, Any] = {"strategies": {}, "judgments_to_match_random": {}}
    for name in config.strategies:
        matrix = np.array(runs[name])
        means = matrix.mean(axis=0)
        ci = [_interval(matrix[:, i], [h[i] for h in hits_at[name]], i) for i in range(len(budgets))]
        out["strategies"][name] = {
            "budgets": [int(b) for b in budgets],
            "routed_accuracy": [round(float(m), 4) for m in means],
            "routed_accuracy_ci95": [[round(lo, 4), round(hi, 4)] for lo, hi in ci],
        }
    out["judgments_to_match_random"] = judgments_to_match_random(out["strategies"])
    return out


def _run_strategy(
    name: str, design: np.ndarray, correct: np.ndarray, costs: Sequence[float], strata: np.ndarray, pool: np.ndarray,
    held: np.ndarray, seed_set: np.ndarray, budgets: Sequence[int], basis: Basis, backends: Sequence[str],
    lambda_cost: float, rng: np.random.Generator, *, l2: float = 10.0,
) -> tuple[list[float], list[np.ndarray]]:
    judged = [int(i) for i in seed_set]
    is_judged = np.zeros(correct.shape[0], dtype=bool)
    is_judged[judged] = True
    y_held = correct[held]
    coef = None
    accuracy: list[float] = []
    hits: list[np.ndarray] = []
    for budget in budgets:
        need = budget - len(judged)
        if need > 0:
            candidates = pool[~is_judged[pool]]
            probs = _sigmoid(design[candidates] @ coef) if coef is not None else np.full((candidates.size, correct.shape[1]), 0.5)
            cands = Candidates(
                probabilities=probs, costs=costs, design=design[candidates], strata=strata[candidates],
                judged_design=design[judged], judged_strata=strata[judged], lambda_cost=lambda_cost,
            )
            picked = candidates[select(name, cands, need, rng)]
            judged.extend(int(i) for i in picked)
            is_judged[picked] = True
        rows = np.asarray(judged)
        model = fit_incremental(design[rows], correct[rows], basis=basis, backends=backends, warm=coef, l2=l2)
        coef = model.coef
        choice = routed_choice(model.probabilities(design[held]), costs, lambda_cost)
        got = y_held[np.arange(held.size), choice]
        accuracy.append(float(got.mean()))
        hits.append(got)
    return accuracy, hits


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def judgments_to_match_random(curves: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Share of random order's final budget each strategy needed to reach random's final mean accuracy."""
    if "random" not in curves:
        return {}
    target = curves["random"]["routed_accuracy"][-1]
    final_budget = curves["random"]["budgets"][-1]
    out: dict[str, float | None] = {}
    for name, curve in curves.items():
        if name == "random":
            out[name] = 1.0
            continue
        b, a = curve["budgets"], curve["routed_accuracy"]
        reached: float | None = None
        for i, value in enumerate(a):
            if value >= target - 1e-12:
                if i == 0 or a[i] == a[i - 1]:
                    reached = float(b[i])
                else:
                    reached = b[i - 1] + (target - a[i - 1]) / (a[i] - a[i - 1]) * (b[i] - b[i - 1])
                break
        out[name] = None if reached is None else round(reached / final_budget, 4)
    return out


def best_strategy(result: dict[str, Any]) -> tuple[str, float] | None:
    """The non-random strategy with the smallest fraction (ties: the higher final accuracy), if any reached."""
    fractions = {n: f for n, f in (result.get("judgments_to_match_random") or {}).items() if n != "random" and f is not None}
    if not fractions:
        return None
    final = {n: c["routed_accuracy"][-1] for n, c in result.get("strategies", {}).items()}
    name = min(fractions, key=lambda n: (fractions[n], -final.get(n, 0.0)))
    return name, float(fractions[name])


# ============================================================================ command line
def pool_features(table: PairTable, encoder: str = "minilm", image_embedder: Any = None, image_name: str | None = None) -> np.ndarray:
    """The router's features for every query of the pool, computed once (each question and image once)."""
    from router.features import HashingTextEncoder, MiniLMTextEncoder
    from router.training import build_extractor, compute_features, embed_table_images

    text = HashingTextEncoder() if encoder == "hashing" else MiniLMTextEncoder()
    vectors, _ = embed_table_images(table, image_embedder, image_name or "custom") if image_embedder is not None else ({}, [])
    image_dim = int(next(iter(vectors.values())).size) if vectors else 0
    extractor = build_extractor(kind="embedding", text_encoder=text, image_embedder=image_embedder,
                                image_embedder_name=image_name, image_dim=image_dim, text_only=not vectors)
    return compute_features(table, extractor, vectors)


def costs_for(table: PairTable, preset: Any = None) -> list[float]:
    """Backend costs from the preset when given, else each backend's mean latency (the router's default)."""
    if preset is not None:
        from router.base import choices_from_preset

        by_name = {c.name: c.cost for c in choices_from_preset(preset)}
        if all(b in by_name for b in table.backends):
            return [float(by_name[b]) for b in table.backends]
    lat = np.nanmean(np.where(np.isfinite(table.latency), table.latency, np.nan), axis=0) if table.n_queries else []
    return [float(v) if np.isfinite(v) else 0.0 for v in lat]


def _preset_parts(name: str) -> tuple[Any, Any, str | None]:
    """A preset and its ``[router] image_features`` backend's ``embed_image`` (None when it has none)."""
    from backends.presets import PresetError, load_preset

    try:
        preset = load_preset(name)
    except PresetError as exc:
        raise RouterError(str(exc)) from None
    wanted = (getattr(preset, "router", {}) or {}).get("image_features")
    if not wanted:
        return preset, None, None
    try:
        from backends.registry import build_backend

        backend = build_backend(preset.spec(wanted))
        return preset, getattr(backend, "embed_image", None), wanted
    except Exception as exc:  # image features are optional: fall back to the question text
        print(f"warning: image features from {wanted} unavailable ({exc}); simulating on the question text only")
        return preset, None, None


def cmd_simulate(args: argparse.Namespace) -> int:
    from router.table import build_table

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    preset = None
    embedder, embedder_name = None, None
    if args.preset:
        preset, embedder, embedder_name = _preset_parts(args.preset)
    start = time.perf_counter()
    table, warnings = build_table(pairs=args.pairs, strict=not args.lenient)
    features = pool_features(table, args.encoder, embedder, embedder_name)
    t_features = time.perf_counter() - start
    config = SimulateConfig(strategies=strategies, seeds=args.seeds, seed_size=args.seed_size, step=args.step,
                            budget=args.budget, lambda_cost=args.lambda_cost)
    result = simulate(table, features, costs_for(table, preset), config)
    if args.json:
        print(json.dumps(result))
        return 0
    for message in warnings:
        print(f"warning: {message}")
    print(f"{table.n_queries} queries, {len(table.backends)} backends; features {t_features:.1f} s, "
          f"simulation {time.perf_counter() - start - t_features:.1f} s")
    for name, curve in result["strategies"].items():
        points = ", ".join(f"{b}: {a:.3f}" for b, a in zip(curve["budgets"], curve["routed_accuracy"], strict=True))
        print(f"{name:>12}: {points}")
    print("judgments to match random: " + json.dumps(result["judgments_to_match_random"]))
    return 0


def add_parser(sub: Any) -> None:
    """``python -m router simulate`` (its options live here, beside the simulator)."""
    p = sub.add_parser("simulate", help="replay annotation orders on existing pairs: which one makes the router learn fastest")
    p.add_argument("--pairs", action="append", required=True, help="performance pairs JSONL (repeatable)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma list of {', '.join(STRATEGIES)}")
    p.add_argument("--seeds", type=int, default=5, help="repetitions (each its own split and seed set)")
    p.add_argument("--seed-size", type=int, default=None, help="judgments every strategy starts from (default 5%% of the pool)")
    p.add_argument("--step", type=int, default=None, help="judgments between refits (default: 8 steps to the budget)")
    p.add_argument("--budget", type=int, default=None, help="judgments at the end (default: half the pool)")
    p.add_argument("--encoder", choices=("minilm", "hashing"), default="minilm", help="question encoder (the router's)")
    p.add_argument("--preset", help="preset whose costs and image features to use (default: latencies, text only)")
    p.add_argument("--lambda-cost", type=float, default=0.0)
    p.add_argument("--lenient", action="store_true", help="skip bad pair lines instead of stopping")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_simulate)


__all__ = ["SimulateConfig", "add_parser", "best_strategy", "judgments_to_match_random", "plan_budgets", "pool_features", "simulate"]
