"""Evaluation: a router against the baselines and the oracle on the same queries.

Only queries with a result for every backend the router can choose are scored (otherwise the oracle
and the routed accuracy would be measured on different rows); the report says how many were skipped.

* ``routed_accuracy``: mean correctness of the chosen backend.
* ``best_single_accuracy``: the best fixed backend *on these rows* (the strongest single baseline).
* ``oracle_accuracy``: the best backend per query; ``random_accuracy``: the exact expectation of a
  uniform choice; ``category_rule_accuracy``: the paper's rule with the data's categories (keyword
  classifier where a row has none) and best-of-kind picked by the router's training priors.
* ``selection_accuracy``: share of queries where the chosen backend is one of the best for that query.
* ``ece``: calibration error of P(correct) over every (query, backend) cell (15 equal-width bins);
  ``ece_ci95``: its bootstrap interval over queries; ``ece_if_calibrated``: ``[mean, p95]`` of the ECE a
  perfectly calibrated router with the same probabilities would show on these cells (labels drawn from
  the probabilities), the part of ``ece`` that sampling noise alone explains; ``ece_choice``: of the
  confidence against the chosen backend's correctness.
* ``decision_ms_p50_image_warmed`` / ``_p95_``: the same with the image embedded before the clock starts,
  as the page does at upload (the decision then pays for the question only).
* ``decision_ms_p50``: ``decide()`` wall time, cold (feature caches cleared before every call), so it
  includes the text embedding.
* ``delta_best_single``: routed minus the best single backend on the same queries, that backend chosen
  on the router's training rows (its card's priors) when it has them, else on these rows
  (``delta_best_single_chosen_on`` says which); ``delta_best_single_ci95``: a paired bootstrap interval
  over queries (2000 resamples, seeded); ``headroom_captured``: delta / (oracle - that backend).
* ``aiq``, ``cpt50``, ``cpt80``: RouterBench's average quality over the cost range and RouteLLM's
  cost-performance thresholds, from the cost-quality curve the router traces as lambda goes from
  "always the cheapest" to 0 (definitions in :mod:`router.metrics`). ``cost_quality`` holds the curve's
  points and every single backend's point, overall and per task category (the Leaderboard draws them).
* ``peers``: other routers given to :func:`evaluate` (fitted on the router's training rows, see
  :mod:`router.peers`), scored on the same rows with the same features and metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from router.base import Router, RouterError
from router.calibration import ece_bootstrap_ci, ece_if_calibrated, expected_calibration_error, reliability_bins
from router.categories import classify_question
from router.metrics import aiq, cpt, curve_points, headroom_captured, lambda_grid, paired_bootstrap_ci, upper_hull

#: Bootstrap resamples for ``delta_best_single_ci95``.
BOOTSTRAP_RESAMPLES = 2000
#: A category gets its own cost-quality curve when the evaluation rows hold at least this many of it.
MIN_CATEGORY_ROWS = 5
#: Curve points kept per scope in the report (and so in the card).
MAX_CURVE_POINTS = 60


def _round(value: float, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _priors_of(router: Router) -> Any:
    from router.baselines import Priors

    card = getattr(router, "card", None) or {}
    if card.get("priors"):
        return Priors.from_json(card["priors"])
    priors = getattr(router, "priors", None)
    return priors if priors is not None else None


def time_decisions(router: Router, images: Sequence[Any], questions: Sequence[str], contexts: Sequence[Mapping[str, Any]] | None = None,
                   *, warm_image: bool = False) -> list[float]:
    """Milliseconds per ``decide`` call, each with cold feature caches (one warm-up call first).

    ``warm_image``: the image is embedded before the clock starts (``Router.warm``), as the page does at
    upload, so only the question's part is timed."""
    if not questions:
        return []
    contexts = contexts or [{}] * len(questions)
    router.decide(images[0], questions[0], **contexts[0])  # loads lazy models; not timed
    times = []
    for image, question, ctx in zip(images, questions, contexts, strict=True):
        router.clear_caches()
        if warm_image:
            router.warm(image)
        start = time.perf_counter()
        router.decide(image, question, **ctx)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def evaluate(
    router: Router,
    table: Any,  # router.training.PairTable
    index: np.ndarray | Sequence[int] | None = None,
    *,
    lambda_cost: float | None = None,
    features: np.ndarray | None = None,
    timing_sample: int = 50,
    seed: int = 0,
    peers: Mapping[str, Router] | None = None,
) -> dict[str, Any]:
    """The evaluate report (a JSON-ready dict) for ``router`` on ``table`` rows ``index``.

    ``features`` (aligned with ``index``) skips feature extraction for routers that accept them (the
    router and the peers alike). ``peers``: fitted routers over the same backends, reported under
    ``peers`` with the same metrics (fitting them on the right rows is the caller's job).
    """
    from router.baselines import CategoryRuleRouter, Priors

    idx = np.arange(table.n_queries) if index is None else np.asarray(index, dtype=np.int64)
    names = router.backend_names
    col = {b: j for j, b in enumerate(table.backends)}
    absent = [n for n in names if n not in col]
    if absent:
        raise RouterError(f"the evaluation data has no results for backend(s) {absent} that router {router.version} chooses from")
    cols = [col[n] for n in names]
    y_all = table.correct[idx][:, cols].astype(np.float64)
    complete = np.isfinite(y_all).all(axis=1)
    if not complete.any():
        raise RouterError(
            f"no query in the evaluation rows has results for every backend ({', '.join(names)}); "
            f"{idx.size} queries were looked at"
        )
    rows = idx[complete]
    y = y_all[complete]
    questions = [table.questions[i] for i in rows]
    images = [table.images[i] for i in rows]
    given_cats = [table.categories[i] for i in rows]
    lam = router.lambda_cost if lambda_cost is None else float(lambda_cost)

    if features is not None and hasattr(router, "score_features"):
        probs, pred_cats = router.score_features(np.asarray(features)[complete], questions)
    else:
        probs, pred_cats = router.score_batch(
            images,
            questions,
            category=given_cats,
            query_id=[table.query_ids[i] for i in rows],
            image_keys=[table.image_keys[i] for i in rows],
        )
    choice = np.asarray(router.choose_batch(probs, lam, categories=pred_cats), dtype=np.int64)
    n = len(rows)
    chosen = y[np.arange(n), choice]
    best = y.max(axis=1)
    per_backend = y.mean(axis=0)
    costs = router.costs

    # Baselines on the same rows.
    trained_priors = _priors_of(router)
    priors = trained_priors or Priors({b: float(a) for b, a in zip(names, per_backend, strict=True)}, {})
    rule = CategoryRuleRouter(router.backends, priors=priors)
    rule_cats = [c or classify_question(q) for c, q in zip(given_cats, questions, strict=True)]
    rule_choice = rule.choose_batch(probs, categories=rule_cats)
    rule_acc = float(y[np.arange(n), rule_choice].mean())

    report: dict[str, Any] = {
        "router_kind": router.kind,
        "version": router.version,
        "lambda_cost": lam,
        "n_queries": int(n),
        "n_pairs": int(np.isfinite(y).sum()),
        "n_skipped_incomplete": int((~complete).sum()),
        "routed_accuracy": _round(float(chosen.mean())),
        "routed_accuracy_ci95": [_round(v) for v in paired_bootstrap_ci(chosen, resamples=BOOTSTRAP_RESAMPLES, seed=seed)],
        "best_single_accuracy": _round(float(per_backend.max())),
        "best_single_backend": names[int(np.argmax(per_backend))],
        "oracle_accuracy": _round(float(best.mean())),
        "random_accuracy": _round(float(y.mean())),
        "category_rule_accuracy": _round(rule_acc),
        "selection_accuracy": _round(float((chosen >= best - 1e-9).mean())),
        "ece": _round(expected_calibration_error(probs, y)),
        "ece_ci95": [_round(v) for v in ece_bootstrap_ci(probs, y, seed=seed)],
        "ece_if_calibrated": [_round(v) for v in ece_if_calibrated(probs, np.isfinite(y), seed=seed)],
        "ece_choice": _round(expected_calibration_error(probs[np.arange(n), choice], chosen)),
        "reliability": reliability_bins(probs, y),
        "mean_cost": _round(float(costs[choice].mean()), 6),
        "best_single_cost": _round(float(costs[int(np.argmax(per_backend))]), 6),
        "per_backend_accuracy": {b: _round(float(a)) for b, a in zip(names, per_backend, strict=True)},
        "choice_share": {b: _round(float((choice == j).mean())) for j, b in enumerate(names)},
    }
    gap = float(best.mean() - per_backend.max())
    report["gap_closed"] = _round((float(chosen.mean()) - float(per_backend.max())) / gap) if gap > 1e-9 else None
    known = [(p, c) for p, c in zip(pred_cats, given_cats, strict=True) if c is not None and p is not None]
    report["category_accuracy"] = _round(float(np.mean([p == c for p, c in known]))) if known else None

    # Against the best single backend, and along the cost-quality curve.
    ref, chosen_on = _reference_backend(trained_priors, names, per_backend)
    report.update(_delta_metrics(chosen, y, ref, names, seed))
    curve = _curve(router, probs, pred_cats, y, costs)
    report.update(_curve_summary(curve, y, costs))
    report["delta_best_single_chosen_on"] = chosen_on
    report["cost_quality"] = _cost_quality(router, curve, y, costs, rule_cats)
    if peers:
        feats = None if features is None else np.asarray(features)[complete]
        context = {"category": given_cats, "query_id": [table.query_ids[i] for i in rows], "image_keys": [table.image_keys[i] for i in rows]}
        report["peers"] = {
            name: _peer_report(peer, feats, images, questions, context, y, lam, ref, seed) for name, peer in peers.items()
        }

    if timing_sample > 0:
        pick = np.random.default_rng(seed).permutation(n)[: int(timing_sample)]
        contexts = [{"category": given_cats[i], "query_id": table.query_ids[rows[i]]} for i in pick]
        times = time_decisions(router, [images[i] for i in pick], [questions[i] for i in pick], contexts)
        report["decision_ms_p50"] = _round(float(np.percentile(times, 50)), 3)
        report["decision_ms_p95"] = _round(float(np.percentile(times, 95)), 3)
        report["timed_decisions"] = len(times)
        warmed = time_decisions(router, [images[i] for i in pick], [questions[i] for i in pick], contexts, warm_image=True)
        report["decision_ms_p50_image_warmed"] = _round(float(np.percentile(warmed, 50)), 3)
        report["decision_ms_p95_image_warmed"] = _round(float(np.percentile(warmed, 95)), 3)
    else:
        report["decision_ms_p50"] = None
    return report


def _reference_backend(priors: Any, names: Sequence[str], per_backend: np.ndarray) -> tuple[int, str]:
    """The best single backend: by training accuracy (priors) where known, else on the evaluation rows."""
    known = {n: float(a) for n, a in (getattr(priors, "accuracy", None) or {}).items() if n in names and math.isfinite(float(a))}
    if known:
        best = max(names, key=lambda n: (known.get(n, -math.inf), -names.index(n)))
        return names.index(best), "training rows"
    return int(np.argmax(per_backend)), "evaluation rows"


def _delta_metrics(chosen: np.ndarray, y: np.ndarray, ref: int, names: Sequence[str], seed: int) -> dict[str, Any]:
    diff = chosen - y[:, ref]
    low, high = paired_bootstrap_ci(diff, resamples=BOOTSTRAP_RESAMPLES, seed=seed)
    headroom = headroom_captured(float(chosen.mean()), float(y[:, ref].mean()), float(y.max(axis=1).mean()))
    return {
        "delta_best_single": _round(float(diff.mean())),
        "delta_best_single_ci95": [_round(low), _round(high)],
        "delta_best_single_backend": names[ref],
        "headroom_captured": None if headroom is None else _round(headroom),
    }


def _curve(router: Router, probs: np.ndarray, cats: Sequence[str | None], y: np.ndarray, costs: np.ndarray) -> dict[str, np.ndarray]:
    """The router's choices at every lambda of the sweep, with the curve's mean cost and accuracy."""
    lambdas = lambda_grid(probs, costs)
    choices = np.stack([np.asarray(router.choose_batch(probs, float(lam), categories=cats), dtype=np.int64) for lam in lambdas])
    cost, accuracy = curve_points(choices, y, costs)
    return {"lambdas": lambdas, "choices": choices, "cost": cost, "accuracy": accuracy}


def _endpoints(y: np.ndarray, costs: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """(cost, accuracy) of always the cheapest backend (the most accurate among equally cheap ones)
    and of always the most accurate one (the cheapest among equally accurate ones)."""
    acc = y.mean(axis=0)
    cheap = min(range(len(costs)), key=lambda j: (costs[j], -acc[j], j))
    best = min(range(len(costs)), key=lambda j: (-acc[j], costs[j], j))
    return (float(costs[cheap]), float(acc[cheap])), (float(costs[best]), float(acc[best]))


def _curve_summary(curve: Mapping[str, np.ndarray], y: np.ndarray, costs: np.ndarray) -> dict[str, Any]:
    cheap, best = _endpoints(y, costs)
    cost, accuracy = curve["cost"], curve["accuracy"]
    value = aiq(cost, accuracy, (float(costs.min()), float(costs.max()))) if costs.size else None
    return {
        "aiq": None if value is None else _round(value),
        "cpt50": _cpt(cost, accuracy, cheap, best, 0.5),
        "cpt80": _cpt(cost, accuracy, cheap, best, 0.8),
    }


def _cpt(cost: np.ndarray, accuracy: np.ndarray, cheap: tuple[float, float], best: tuple[float, float], recover: float) -> float | None:
    value = cpt(cost, accuracy, cheap=cheap, best=best, recover=recover)
    return None if value is None else _round(value)


def _thin(points: list[dict[str, float]]) -> list[dict[str, float]]:
    """Drop points equal to the one before (by cost and accuracy); past MAX_CURVE_POINTS keep evenly spaced
    ones plus every vertex of the hull (so the drawn curve keeps its best points and both ends)."""
    kept = [p for i, p in enumerate(points) if i == 0 or (p["cost"], p["accuracy"]) != (points[i - 1]["cost"], points[i - 1]["accuracy"])]
    if len(kept) > MAX_CURVE_POINTS:
        hx, hy = upper_hull([p["cost"] for p in kept], [p["accuracy"] for p in kept])
        vertices = set(zip(hx.tolist(), hy.tolist(), strict=True))
        even = set(np.linspace(0, len(kept) - 1, MAX_CURVE_POINTS).round().astype(int).tolist())
        kept = [p for i, p in enumerate(kept) if i in even or (p["cost"], p["accuracy"]) in vertices]
    return kept


def _scope(names: Sequence[str], curve: Mapping[str, np.ndarray], y: np.ndarray, costs: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """One scope of ``cost_quality`` (all rows, or one category's): curve points, AIQ and each backend's point."""
    cost, accuracy = curve_points(curve["choices"][:, rows], y[rows], costs)
    points = [
        {"lambda": round(float(lam), 6), "cost": round(float(c), 6), "accuracy": round(float(a), 4)}
        for lam, c, a in zip(curve["lambdas"], cost, accuracy, strict=True)
    ]
    value = aiq(cost, accuracy, (float(costs.min()), float(costs.max())))
    return {
        "n_queries": int(rows.size),
        "aiq": None if value is None else _round(value),
        "points": _thin(points),
        "backends": [
            {"name": b, "cost": round(float(costs[j]), 6), "accuracy": round(float(y[rows, j].mean()), 4)} for j, b in enumerate(names)
        ],
    }


def _cost_quality(router: Router, curve: Mapping[str, np.ndarray], y: np.ndarray, costs: np.ndarray, cats: Sequence[str]) -> dict[str, Any]:
    """The curve data the Leaderboard draws: overall and per category (data's category, else the keyword guess)."""
    names = router.backend_names
    labels = np.array([c or "" for c in cats], dtype=object)
    by_category = {}
    for cat in sorted({c for c in labels if c}):
        rows = np.flatnonzero(labels == cat)
        if rows.size >= MIN_CATEGORY_ROWS:
            by_category[cat] = _scope(names, curve, y, costs, rows)
    return {
        "router": router.version,
        "sweep": "lambda from 0 (most accurate) up to 'always the cheapest'; costs as in the backend list",
        "overall": _scope(names, curve, y, costs, np.arange(y.shape[0])),
        "by_category": by_category,
    }


def _peer_report(
    peer: Router,
    feats: np.ndarray | None,
    images: Sequence[Any],
    questions: Sequence[str],
    context: Mapping[str, Any],
    y: np.ndarray,
    lam: float,
    ref: int,
    seed: int,
) -> dict[str, Any]:
    """A peer router's metrics on the evaluation rows (the same ones the router is scored on)."""
    if feats is not None and hasattr(peer, "score_features"):
        probs, cats = peer.score_features(feats, questions)
    else:
        probs, cats = peer.score_batch(images, questions, **context)
    n = y.shape[0]
    choice = np.asarray(peer.choose_batch(probs, lam, categories=cats), dtype=np.int64)
    chosen = y[np.arange(n), choice]
    costs = peer.costs
    curve = _curve(peer, probs, cats, y, costs)
    out = {
        "kind": peer.kind,
        "routed_accuracy": _round(float(chosen.mean())),
        "ece": _round(expected_calibration_error(probs, y)),
        "mean_cost": _round(float(costs[choice].mean()), 6),
        "delta_best_single": _round(float((chosen - y[:, ref]).mean())),
    }
    out.update(_curve_summary(curve, y, costs))
    fitted = getattr(peer, "fit_info", None)
    if fitted:
        out["fit"] = dict(fitted)
    return out


def side_by_side(reports: Mapping[str, Mapping[str, Any]], keys: Sequence[str] = (
    "routed_accuracy", "selection_accuracy", "ece", "mean_cost", "decision_ms_p50",
)) -> str:
    """A plain-text table of several reports (one column per router)."""
    names = list(reports)
    width = max(12, *(len(n) for n in names))
    lines = ["metric".ljust(22) + "".join(n.rjust(width + 2) for n in names)]
    for key in keys:
        cells = []
        for n in names:
            value = reports[n].get(key)
            cells.append(("-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)).rjust(width + 2))
        lines.append(key.ljust(22) + "".join(cells))
    return "\n".join(lines)


__all__ = ["evaluate", "side_by_side", "time_decisions"]
