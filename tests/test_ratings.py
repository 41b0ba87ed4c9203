"""data.ratings: Bradley-Terry values checked by hand and against an independent implementation (choix).

data.ratings reports ratings on the Elo scale: ``1000 + 400 * log10(strength)``, centred so the mean is
1000. choix returns natural-log strengths ``theta`` (centred too), so the same fit on that scale is
``1000 + 400 * (theta - mean(theta)) / ln(10)``. data.ratings counts a tie as half a win for each side;
choix takes (winner, loser) pairs only, so every outcome is given to choix twice: a win as two wins, a
tie as one win each way. Doubling every count leaves the maximum-likelihood fit unchanged.
data.ratings adds a tiny l2 prior (1e-3 virtual games), which keeps an unbeaten record finite and moves
the ratings by well under a rating point on the data below.
"""

from __future__ import annotations

import math

import choix
import numpy as np
import pytest

from data.ratings import BASE, SCALE, Rating, bradley_terry_with_ci, fit_bradley_terry

NAMES = ["clip", "siglip", "llava", "qwen"]
TRUE_STRENGTH = np.array([0.8, 0.4, 0.0, -0.6])  # natural-log strengths the outcomes are drawn from


def _elo(theta: np.ndarray) -> np.ndarray:
    """choix's natural-log strengths on data.ratings' scale."""
    return BASE + SCALE * (theta - theta.mean()) / math.log(10)


def _choix_pairs(outcomes: list[tuple[str, str, float]], names: list[str]) -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    for a, b, score in outcomes:
        i, j = names.index(a), names.index(b)
        if score == 1.0:
            pairs += [(i, j), (i, j)]
        elif score == 0.0:
            pairs += [(j, i), (j, i)]
        else:
            assert score == 0.5
            pairs += [(i, j), (j, i)]
    return pairs


def _simulated(n: int, seed: int, tie_rate: float = 0.15) -> list[tuple[str, str, float]]:
    """Battles between random pairs under a known Bradley-Terry model, some of them ties."""
    rng = np.random.default_rng(seed)
    outcomes = []
    for _ in range(n):
        i, j = rng.choice(len(NAMES), 2, replace=False)
        p_i = 1 / (1 + math.exp(-(TRUE_STRENGTH[i] - TRUE_STRENGTH[j])))
        if rng.random() < tie_rate:
            score = 0.5
        else:
            score = 1.0 if rng.random() < p_i else 0.0
        outcomes.append((NAMES[i], NAMES[j], score))
    return outcomes


# ------------------------------------------------------------------------------------ worked examples
def test_three_wins_in_four_is_log_odds_log3() -> None:
    """A beats B 3 of 4 times: P(A beats B) = 3/4, so strength_A / strength_B = 3, a log-odds difference
    of ln 3 in natural units, 400 * log10(3) = 190.85 on the Elo scale, split evenly around 1000."""
    ratings = fit_bradley_terry([("A", "B", 1.0)] * 3 + [("A", "B", 0.0)])
    expected = SCALE * math.log10(3)
    assert ratings["A"] - ratings["B"] == pytest.approx(expected, abs=0.5)  # the l2 prior shrinks it by ~0.06
    assert ratings["A"] - ratings["B"] < expected  # shrunk, never stretched
    assert ratings["A"] == pytest.approx(BASE + expected / 2, abs=0.5)
    assert ratings["B"] == pytest.approx(BASE - expected / 2, abs=0.5)
    # the predicted win probability is the observed 3/4
    p = 1 / (1 + 10 ** (-(ratings["A"] - ratings["B"]) / SCALE))
    assert p == pytest.approx(0.75, abs=1e-3)


def test_score_zero_is_a_win_for_the_second_backend() -> None:
    as_losses = fit_bradley_terry([("A", "B", 1.0)] * 3 + [("A", "B", 0.0)])
    as_wins = fit_bradley_terry([("A", "B", 1.0)] * 3 + [("B", "A", 1.0)])
    assert as_losses == pytest.approx(as_wins, abs=1e-9)


def test_a_tie_is_half_a_win_for_each_side() -> None:
    """One win and one tie is 1.5 wins of 2 games: the same 3:1 odds as three wins in four."""
    win_and_tie = fit_bradley_terry([("A", "B", 1.0), ("A", "B", 0.5)])
    assert win_and_tie["A"] - win_and_tie["B"] == pytest.approx(SCALE * math.log10(3), abs=0.5)
    # which side is named first does not matter for a tie
    assert fit_bradley_terry([("A", "B", 0.5)] * 3) == pytest.approx(fit_bradley_terry([("B", "A", 0.5)] * 3), abs=1e-9)


def test_only_ties_leave_everyone_at_the_base_rating() -> None:
    ratings = fit_bradley_terry([("A", "B", 0.5)] * 3 + [("B", "C", 0.5), ("A", "C", 0.5)])
    assert ratings == pytest.approx({"A": BASE, "B": BASE, "C": BASE}, abs=1e-6)


def test_ties_pull_ratings_together() -> None:
    decisive = fit_bradley_terry([("A", "B", 1.0)] * 3 + [("A", "B", 0.0)])
    with_ties = fit_bradley_terry([("A", "B", 1.0)] * 3 + [("A", "B", 0.0)] + [("A", "B", 0.5)] * 4)
    # 5 wins in 8 games: odds 5:3
    assert with_ties["A"] - with_ties["B"] == pytest.approx(SCALE * math.log10(5 / 3), abs=0.5)
    assert with_ties["A"] - with_ties["B"] < decisive["A"] - decisive["B"]


def test_an_unbeaten_record_stays_finite_and_ranked() -> None:
    ratings = fit_bradley_terry([("A", "B", 1.0)] * 5)
    assert all(math.isfinite(v) for v in ratings.values())
    assert ratings["A"] - ratings["B"] > 1000  # far apart, but not infinitely (the l2 prior)


def test_ratings_are_centred_and_ignore_self_games_and_unknown_names() -> None:
    outcomes = [("A", "B", 1.0), ("B", "C", 1.0), ("C", "A", 0.0), ("A", "A", 1.0), ("A", "ghost", 1.0)]
    ratings = fit_bradley_terry(outcomes, ["A", "B", "C"])
    assert set(ratings) == {"A", "B", "C"}
    assert np.mean(list(ratings.values())) == pytest.approx(BASE, abs=1e-9)
    assert ratings == pytest.approx(fit_bradley_terry(outcomes[:3], ["A", "B", "C"]), abs=1e-9)
    assert ratings["A"] > ratings["B"] > ratings["C"]
    assert fit_bradley_terry([]) == {}


def test_a_backend_without_games_sits_at_the_mean() -> None:
    ratings = fit_bradley_terry([("A", "B", 1.0), ("A", "B", 0.0)], ["A", "B", "idle"])
    assert ratings == pytest.approx({"A": BASE, "B": BASE, "idle": BASE}, abs=1e-3)


# ------------------------------------------------------------------------------------ against choix
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_ratings_match_choix(seed: int) -> None:
    outcomes = _simulated(300, seed)
    ours = fit_bradley_terry(outcomes, NAMES)
    pairs = _choix_pairs(outcomes, NAMES)
    for theta in (choix.ilsr_pairwise(len(NAMES), pairs, alpha=1e-9), choix.opt_pairwise(len(NAMES), pairs, alpha=1e-9)):
        theirs = _elo(theta)
        assert [ours[n] for n in NAMES] == pytest.approx(list(theirs), abs=0.05)
        assert sorted(NAMES, key=lambda n: -ours[n]) == [NAMES[k] for k in np.argsort(-theirs)]
        # differences are what the scale/offset convention leaves free: compare every pair
        for i in range(len(NAMES)):
            for j in range(i + 1, len(NAMES)):
                ours_diff = (ours[NAMES[i]] - ours[NAMES[j]]) * math.log(10) / SCALE  # back to natural log-odds
                assert ours_diff == pytest.approx(theta[i] - theta[j], abs=5e-4)


def test_ratings_recover_the_true_order_from_many_battles() -> None:
    ours = fit_bradley_terry(_simulated(4000, 7, tie_rate=0.0), NAMES)
    assert sorted(NAMES, key=lambda n: -ours[n]) == NAMES
    fitted = np.array([ours[n] for n in NAMES]) * math.log(10) / SCALE
    assert fitted - fitted.mean() == pytest.approx(TRUE_STRENGTH - TRUE_STRENGTH.mean(), abs=0.1)


# ------------------------------------------------------------------------------------ bootstrap intervals
def test_bootstrap_intervals_match_the_same_resamples_fitted_by_choix() -> None:
    """The documented procedure: resample the outcomes with replacement (numpy default_rng(seed), ``rounds``
    resamples), fit each, take the 2.5% and 97.5% quantiles. Redone here with choix as the fitter."""
    outcomes = _simulated(300, 1)
    ratings = bradley_terry_with_ci(outcomes, NAMES, rounds=200, seed=3)
    rng = np.random.default_rng(3)
    samples = []
    for _ in range(200):
        pick = rng.integers(0, len(outcomes), size=len(outcomes))
        theta = choix.ilsr_pairwise(len(NAMES), _choix_pairs([outcomes[i] for i in pick], NAMES), alpha=1e-9)
        samples.append(_elo(theta))
    low, high = np.quantile(samples, 0.025, axis=0), np.quantile(samples, 0.975, axis=0)
    by_name = {r.backend: r for r in ratings}
    for k, name in enumerate(NAMES):
        assert by_name[name].low == pytest.approx(low[k], abs=0.1)
        assert by_name[name].high == pytest.approx(high[k], abs=0.1)


def test_bootstrap_result_shape_order_and_counts() -> None:
    outcomes = _simulated(300, 1)
    ratings = bradley_terry_with_ci(outcomes, NAMES, rounds=100, seed=0)
    assert [r.backend for r in ratings] == sorted(NAMES, key=lambda n: -fit_bradley_terry(outcomes, NAMES)[n])
    assert [r.rating for r in ratings] == sorted((r.rating for r in ratings), reverse=True)
    point = fit_bradley_terry(outcomes, NAMES)
    for r in ratings:
        assert r.rating == pytest.approx(point[r.backend])
        assert r.low < r.rating < r.high
        assert r.games == sum(1 for a, b, _ in outcomes if r.backend in (a, b))
    assert ratings == bradley_terry_with_ci(outcomes, NAMES, rounds=100, seed=0)  # seeded: reproducible


def test_intervals_shrink_like_one_over_root_n() -> None:
    outcomes = _simulated(1200, 4)

    def mean_width(n: int) -> float:
        return float(np.mean([r.high - r.low for r in bradley_terry_with_ci(outcomes[:n], NAMES, rounds=200, seed=0)]))

    ratio = mean_width(1200) / mean_width(300)  # 4x the data: half the width
    assert 0.35 < ratio < 0.7


def test_wider_confidence_gives_wider_intervals() -> None:
    outcomes = _simulated(300, 5)
    narrow = {r.backend: r for r in bradley_terry_with_ci(outcomes, NAMES, rounds=200, seed=0, confidence=0.5)}
    wide = {r.backend: r for r in bradley_terry_with_ci(outcomes, NAMES, rounds=200, seed=0, confidence=0.95)}
    for name in NAMES:
        assert wide[name].low < narrow[name].low < narrow[name].high < wide[name].high


def test_no_outcomes_gives_base_ratings_and_zero_games() -> None:
    assert bradley_terry_with_ci([], ["a", "b"]) == [Rating("a", BASE, BASE, BASE, 0), Rating("b", BASE, BASE, BASE, 0)]
