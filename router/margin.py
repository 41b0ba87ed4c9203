"""How large a predicted edge must be before the router leaves the best single backend.

A router trained on a few thousand pairs predicts P(correct) with an error of a few points, so many of its
switches away from the best single backend ride on noise; on questions unlike the training rows those
switches cost more than they win (docs/benchmarks.md: the router lost one to three real-photo questions
to "always ask Gemma" this way). :func:`fit_switch_margin` picks the margin of
:func:`router.base.choose_with_margin` on out-of-fold probabilities of the training rows, never on
evaluation rows: the largest margin whose routed accuracy is within one standard error of the best
margin's, the standard error taken over the paired per-query differences (the one-standard-error rule,
which prefers the more conservative of two routers the data cannot tell apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from router.base import choose_with_margin, utility_matrix

#: Margins tried, in probability points of utility.
MARGIN_GRID: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)


def fit_switch_margin(
    probabilities: np.ndarray,
    correct: np.ndarray,
    costs: Sequence[float] | np.ndarray,
    default_index: int,
    *,
    lambda_cost: float = 0.0,
    grid: Sequence[float] = MARGIN_GRID,
    row_weights: np.ndarray | None = None,
) -> tuple[float, dict[str, Any]]:
    """(margin, report) from out-of-fold ``probabilities`` and the measured ``correct`` matrix (queries x
    backends, NaN where a backend was not measured; such queries are left out). ``row_weights`` give each
    query's weight (every origin of the data counting the same)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(correct, dtype=np.float64)
    full = np.all(np.isfinite(truth), axis=1) & np.all(np.isfinite(probs), axis=1)
    if full.sum() < 20:
        return 0.0, {"rule": "too few out-of-fold queries with every backend measured", "queries": int(full.sum())}
    probs, truth = probs[full], truth[full]
    weights = np.ones(len(probs)) if row_weights is None else np.asarray(row_weights, dtype=np.float64)[full]
    weights = weights / weights.sum()
    utilities = utility_matrix(probs, costs, lambda_cost)
    rows = np.arange(len(probs))
    per_margin = {float(m): truth[rows, np.asarray(choose_with_margin(utilities, costs, default_index, float(m)))]
                  for m in grid}
    accuracy = {m: float(weights @ got) for m, got in per_margin.items()}
    best = max(accuracy, key=lambda m: (accuracy[m], -m))
    n_eff = 1.0 / float(np.sum(weights**2))
    chosen = 0.0
    for margin in sorted(per_margin):
        diff = per_margin[margin] - per_margin[best]
        mean = float(weights @ diff)
        se = float(np.sqrt(max(0.0, weights @ (diff - mean) ** 2) / max(1.0, n_eff - 1)))
        if mean >= -se:
            chosen = margin
    return chosen, {
        "rule": "largest margin within one paired standard error of the best, on out-of-fold training rows",
        "queries": int(full.sum()),
        "best_margin": best,
        "accuracy": {f"{m:g}": round(a, 4) for m, a in accuracy.items()},
    }
