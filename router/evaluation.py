"""Evaluation: a router against the baselines and the oracle on the same queries.

Only queries with a result for every backend the router can choose are scored (otherwise the oracle
and the routed accuracy would be measured on different rows); the report says how many were skipped.

* ``routed_accuracy``: mean correctness of the chosen backend.
* ``best_single_accuracy``: the best fixed backend *on these rows* (the strongest single baseline).
* ``oracle_accuracy``: the best backend per query; ``random_accuracy``: the exact expectation of a
  uniform choice; ``category_rule_accuracy``: the paper's rule with the data's categories (keyword
  classifier where a row has none) and best-of-kind picked by the router's training priors.
* ``selection_accuracy``: share of queries where the chosen backend is one of the best for that query.
* ``ece``: calibration error of P(correct) over every (query, backend) cell; ``ece_choice``: of the
  confidence against the chosen backend's correctness.
* ``decision_ms_p50``: ``decide()`` wall time, cold (feature caches cleared before every call), so it
  includes the text embedding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from router.base import Router, RouterError
from router.calibration import expected_calibration_error, reliability_bins
from router.categories import classify_question


def _round(value: float, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _priors_of(router: Router) -> Any:
    from router.baselines import Priors

    card = getattr(router, "card", None) or {}
    if card.get("priors"):
        return Priors.from_json(card["priors"])
    priors = getattr(router, "priors", None)
    return priors if priors is not None else None


def time_decisions(router: Router, images: Sequence[Any], questions: Sequence[str], contexts: Sequence[Mapping[str, Any]] | None = None) -> list[float]:
    """Milliseconds per ``decide`` call, each with cold feature caches (one warm-up call first)."""
    if not questions:
        return []
    contexts = contexts or [{}] * len(questions)
    router.decide(images[0], questions[0], **contexts[0])  # loads lazy models; not timed
    times = []
    for image, question, ctx in zip(images, questions, contexts, strict=True):
        router.clear_caches()
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
) -> dict[str, Any]:
    """The evaluate report (a JSON-ready dict) for ``router`` on ``table`` rows ``index``.

    ``features`` (aligned with ``index``) skips feature extraction for routers that accept them.
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
    priors = _priors_of(router) or Priors({b: float(a) for b, a in zip(names, per_backend, strict=True)}, {})
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
        "best_single_accuracy": _round(float(per_backend.max())),
        "best_single_backend": names[int(np.argmax(per_backend))],
        "oracle_accuracy": _round(float(best.mean())),
        "random_accuracy": _round(float(y.mean())),
        "category_rule_accuracy": _round(rule_acc),
        "selection_accuracy": _round(float((chosen >= best - 1e-9).mean())),
        "ece": _round(expected_calibration_error(probs, y)),
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

    if timing_sample > 0:
        pick = np.random.default_rng(seed).permutation(n)[: int(timing_sample)]
        contexts = [{"category": given_cats[i], "query_id": table.query_ids[rows[i]]} for i in pick]
        times = time_decisions(router, [images[i] for i in pick], [questions[i] for i in pick], contexts)
        report["decision_ms_p50"] = _round(float(np.percentile(times, 50)), 3)
        report["decision_ms_p95"] = _round(float(np.percentile(times, 95)), 3)
        report["timed_decisions"] = len(times)
    else:
        report["decision_ms_p50"] = None
    return report


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
