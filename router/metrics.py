"""The metrics the routing literature reports, on plain arrays (numpy only, no router objects).

* :func:`paired_bootstrap_ci`: a percentile interval for the mean of paired per-query differences
  (routed minus best single on the same queries), resampling queries with replacement.
* :func:`headroom_captured`: the routed gain over the best single backend as a share of the oracle's gain.
* :func:`lambda_grid` and :func:`curve_points`: the cost-quality curve a router traces as the cost weight
  lambda of ``p - lambda * normalised cost`` goes from "always the cheapest" (large lambda) down to 0.
* :func:`aiq` (RouterBench, Hu et al. 2024): the area under the non-decreasing concave hull of the
  curve's (mean cost, accuracy) points, integrated over the backends' cost range and divided by it. A
  point between two curve points is reachable by choosing between the two settings at random, which is
  why the hull, not the raw points, is integrated. Beyond the curve's most accurate point the hull is
  flat (paying more buys nothing); left of its cheapest point it is flat at that point's accuracy.
* :func:`cpt` (RouteLLM, Ong et al. 2024): the cost-performance threshold. RouteLLM has one weak and one
  strong model and reports the smallest share of calls to the strong one that recovers x% of the
  weak-to-strong accuracy gap. With more backends the share of *cost* generalises it:

      cost share = (C - C_cheap) / (C_best - C_cheap),  recovered = (A - A_cheap) / (A_best - A_cheap)

  where ``C``, ``A`` are a curve point's mean cost and accuracy, "cheap" is always using the cheapest
  backend and "best" always using the most accurate one (both on the evaluation rows). With two
  backends the cost share is exactly the share of calls to the strong one. ``cpt(x)`` is the smallest
  cost share among the curve's actual points (not the hull) that recovers at least ``x`` of the gap,
  None when no point does or there is no gap to recover.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from router.base import normalised_costs


def paired_bootstrap_ci(
    differences: Sequence[float] | np.ndarray,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    chunk: int = 250,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of the mean of per-query paired differences.

    Resampling the differences (not the two accuracies separately) keeps the pairing, so the interval
    reflects how often the two choices disagree, not the spread of either accuracy. Seeded.
    """
    d = np.asarray(differences, dtype=np.float64).reshape(-1)
    if d.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(int(resamples), dtype=np.float64)
    for s in range(0, int(resamples), chunk):  # bounded memory for 10k+ queries
        k = min(chunk, int(resamples) - s)
        means[s : s + k] = d[rng.integers(0, d.size, size=(k, d.size))].mean(axis=1)
    alpha = (1.0 - float(level)) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def headroom_captured(routed: float, best_single: float, oracle: float) -> float | None:
    """``(routed - best_single) / (oracle - best_single)``; None when the oracle gains nothing."""
    room = float(oracle) - float(best_single)
    if not np.isfinite(room) or abs(room) < 1e-12:
        return None
    return (float(routed) - float(best_single)) / room


def lambda_grid(probabilities: np.ndarray, costs: Sequence[float] | np.ndarray, *, max_points: int = 200) -> np.ndarray:
    """Cost weights at which a utility router's choices change, from 0 up to "always the cheapest".

    For one query, backend ``j`` beats a cheaper ``k`` while ``lambda < (p_j - p_k) / (c_j - c_k)``
    (normalised costs), so those breakpoints are the only places the curve moves. All of them are used
    when there are at most ``max_points``; otherwise evenly spaced quantiles of them. The grid starts at
    0 and ends past the largest breakpoint, where every query goes to the cheapest backend.
    """
    p = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    c = normalised_costs(costs)
    j, k = np.nonzero(c[:, None] > c[None, :] + 1e-12)  # pairs with c_j > c_k
    if p.size == 0 or j.size == 0:
        return np.array([0.0])
    gain = p[:, j] - p[:, k]
    breaks = (gain / (c[j] - c[k]))[gain > 0]
    breaks = np.unique(breaks[np.isfinite(breaks)])
    if breaks.size > max_points:
        breaks = np.unique(np.quantile(breaks, np.linspace(0.0, 1.0, max_points)))
    top = float(breaks.max()) if breaks.size else 0.0
    return np.unique(np.concatenate([[0.0], breaks, [top * 1.5 + 1e-6]]))


def curve_points(choices: np.ndarray, correct: np.ndarray, costs: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean cost and accuracy of each row of ``choices`` ((settings, queries) backend indices)."""
    ch = np.atleast_2d(np.asarray(choices, dtype=np.int64))
    y = np.asarray(correct, dtype=np.float64)
    cost = np.asarray(costs, dtype=np.float64)
    rows = np.arange(y.shape[0])
    accuracy = y[rows[None, :], ch].mean(axis=1)
    return cost[ch].mean(axis=1), accuracy


def upper_hull(costs: Sequence[float] | np.ndarray, accuracies: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the non-decreasing concave hull of (cost, accuracy) points, by increasing cost.

    The upper hull (monotone chain) cut at its most accurate vertex; everything right of that vertex
    is flat at its accuracy (see :func:`hull_value`).
    """
    x = np.asarray(costs, dtype=np.float64).reshape(-1)
    y = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return x, y
    order = np.lexsort((-y, x))  # by cost, the best accuracy first among equal costs
    hull: list[tuple[float, float]] = []
    for xi, yi in zip(x[order], y[order], strict=True):
        if hull and abs(hull[-1][0] - xi) < 1e-15:
            continue  # same cost, lower accuracy: never on the upper hull
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (yi - y1) - (y2 - y1) * (xi - x1) >= 0:  # hull[-1] is on or under the chord
                hull.pop()
            else:
                break
        hull.append((float(xi), float(yi)))
    hx = np.array([h[0] for h in hull])
    hy = np.array([h[1] for h in hull])
    peak = int(np.argmax(hy))
    return hx[: peak + 1], hy[: peak + 1]


def hull_value(hull_x: np.ndarray, hull_y: np.ndarray, at: np.ndarray | float) -> np.ndarray:
    """The hull curve at costs ``at``, flat outside its vertices."""
    return np.interp(np.asarray(at, dtype=np.float64), hull_x, hull_y, left=hull_y[0], right=hull_y[-1])


def aiq(
    costs: Sequence[float] | np.ndarray,
    accuracies: Sequence[float] | np.ndarray,
    cost_range: tuple[float, float],
) -> float | None:
    """Average quality over ``cost_range``: the hull's integral over it divided by its width.

    ``cost_range`` is (cheapest backend's cost, dearest backend's cost), as RouterBench normalises;
    None when that range is empty (all costs equal: no trade-off to measure) or there are no points.
    """
    lo, hi = float(cost_range[0]), float(cost_range[1])
    x = np.asarray(costs, dtype=np.float64).reshape(-1)
    if x.size == 0 or not hi > lo:
        return None
    hx, hy = upper_hull(x, accuracies)
    inside = hx[(hx > lo) & (hx < hi)]
    knots = np.concatenate([[lo], inside, [hi]])  # the hull is linear between these
    values = hull_value(hx, hy, knots)
    area = float(np.sum((knots[1:] - knots[:-1]) * (values[1:] + values[:-1]) / 2.0))
    return area / (hi - lo)


def cpt(
    costs: Sequence[float] | np.ndarray,
    accuracies: Sequence[float] | np.ndarray,
    *,
    cheap: tuple[float, float],
    best: tuple[float, float],
    recover: float,
) -> float | None:
    """Smallest cost share of a curve point recovering ``recover`` of the cheap-to-best accuracy gap.

    ``cheap`` and ``best`` are (mean cost, accuracy) of always the cheapest and always the most
    accurate backend. None when the gap or the cost difference is not positive, or no point gets there.
    """
    (c0, a0), (c1, a1) = (float(cheap[0]), float(cheap[1])), (float(best[0]), float(best[1]))
    if not (a1 - a0 > 1e-12 and c1 - c0 > 1e-12):
        return None
    x = np.asarray(costs, dtype=np.float64).reshape(-1)
    y = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    recovered = (y - a0) / (a1 - a0)
    ok = recovered >= float(recover) - 1e-9
    if not ok.any():
        return None
    return float(((x[ok] - c0) / (c1 - c0)).min())


__all__ = [
    "aiq",
    "cpt",
    "curve_points",
    "headroom_captured",
    "hull_value",
    "lambda_grid",
    "paired_bootstrap_ci",
    "upper_hull",
]
