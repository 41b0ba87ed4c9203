"""Bradley-Terry ratings with bootstrap confidence intervals, fitted to the battles judgments give
(:mod:`data.battles`: "best answer" votes, and verdicts where no best answer decides a pair).

FastChat moved from online Elo to Bradley-Terry because Elo depends on the order of the games;
BT fits all outcomes at once. Ratings are on the Elo scale (400 * log10 odds, mean 1000).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SCALE = 400.0
BASE = 1000.0


@dataclass(frozen=True)
class Rating:
    backend: str
    rating: float
    low: float
    high: float
    games: int


def fit_bradley_terry(
    outcomes: Sequence[tuple[str, str, float]], names: Sequence[str] | None = None, *, iterations: int = 200, l2: float = 1e-3
) -> dict[str, float]:
    """Maximum-likelihood BT strengths by minorisation-maximisation (ties count half a win each)."""
    names = list(names or sorted({n for a, b, _ in outcomes for n in (a, b)}))
    index = {n: i for i, n in enumerate(names)}
    k = len(names)
    if k == 0:
        return {}
    wins = np.zeros((k, k))
    for a, b, score in outcomes:
        if a in index and b in index and a != b:
            wins[index[a], index[b]] += score
            wins[index[b], index[a]] += 1.0 - score
    games = wins + wins.T
    strength = np.ones(k)
    total_wins = wins.sum(axis=1) + l2
    for _ in range(iterations):
        denom = (games / (strength[:, None] + strength[None, :] + 1e-12)).sum(axis=1) + 2 * l2 / (strength + 1.0)
        updated = total_wins / np.maximum(denom, 1e-12)
        updated /= np.exp(np.mean(np.log(np.maximum(updated, 1e-12))))
        if np.allclose(updated, strength, rtol=1e-7, atol=1e-10):
            strength = updated
            break
        strength = updated
    log_strength = np.log(np.maximum(strength, 1e-12))
    ratings = BASE + SCALE * (log_strength - log_strength.mean()) / np.log(10)
    return {n: float(r) for n, r in zip(names, ratings, strict=True)}


def bradley_terry_with_ci(
    outcomes: Sequence[tuple[str, str, float]], names: Sequence[str] | None = None, *, rounds: int = 200, seed: int = 0,
    confidence: float = 0.95,
) -> list[Rating]:
    """Ratings and percentile bootstrap intervals (resampling the outcomes), best first."""
    names = list(names or sorted({n for a, b, _ in outcomes for n in (a, b)}))
    if not outcomes:
        return [Rating(n, BASE, BASE, BASE, 0) for n in names]
    point = fit_bradley_terry(outcomes, names)
    rng = np.random.default_rng(seed)
    samples = np.zeros((rounds, len(names)))
    data = list(outcomes)
    for r in range(rounds):
        pick = rng.integers(0, len(data), size=len(data))
        fitted = fit_bradley_terry([data[i] for i in pick], names, iterations=100)
        samples[r] = [fitted[n] for n in names]
    alpha = (1 - confidence) / 2
    low = np.quantile(samples, alpha, axis=0)
    high = np.quantile(samples, 1 - alpha, axis=0)
    games = {n: sum(1 for a, b, _ in outcomes if n in (a, b)) for n in names}
    ratings = [Rating(n, point[n], float(lo), float(hi), games[n]) for n, lo, hi in zip(names, low, high, strict=True)]
    return sorted(ratings, key=lambda r: -r.rating)
