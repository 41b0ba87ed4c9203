"""Annotation orders: which unjudged queries a person should judge next so the router learns fastest.

Each strategy ranks the candidates (the unjudged queries) from what the current router believes about
them; :func:`select` takes the next ``k`` by one strategy. Both the replay simulator
(:mod:`router.simulate`) and the Annotate queue use these, so the order the page uses is the one that
was measured.

* ``random``: the baseline every other order must beat.
* ``uncertainty``: smallest margin between the two best utilities (margin sampling, Scheffer et al. 2001):
  the router is least sure which backend to pick.
* ``regret``: largest expected regret of the router's pick, ``E[max_j y_j] - p_choice`` with the
  backends' outcomes independent Bernoullis at the router's probabilities (an expected-improvement
  style value of the judgment: how much routing stands to gain on this query).
* ``kcenter``: uncertainty-weighted greedy k-center (core-set selection, Sener & Savarese 2018): each
  pick maximises distance to everything judged or picked, times the uncertainty, so picks spread over
  the feature space instead of piling into one confusing region.
* ``kcenter_random``: half k-center, half random picks per step (coverage early without the sampling
  bias pure coverage builds up as the budget grows).
* ``stratified``: rarity-aware stratified sampling: the strata are k-means clusters of the design rows
  (computed once per pool; the rows include the keyword category x answer form); the next pick comes from the
  stratum with the fewest judgments so far, the most uncertain within it. Rare kinds of question get
  judged early, where random order leaves them until last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from router.base import utility_matrix

STRATEGIES: tuple[str, ...] = ("random", "uncertainty", "regret", "kcenter", "stratified", "kcenter_random")
#: Share of each step that ``kcenter_random`` takes at random.
MIXED_RANDOM_SHARE = 0.5
#: Share of random picks mixed into the app's queue so the router's blind spots still get judged.
RANDOM_SHARE = 0.1


@dataclass
class Candidates:
    """What a strategy may look at: the router's P(correct) for the candidates and where they lie.

    ``probabilities`` (m, b); ``design`` (m, w) the incremental fit's design rows; ``strata`` (m,)
    integer stratum per candidate; ``judged_design`` / ``judged_strata`` the same for judged rows.
    """

    probabilities: np.ndarray
    costs: Sequence[float]
    design: np.ndarray | None = None
    strata: np.ndarray | None = None
    judged_design: np.ndarray | None = None
    judged_strata: np.ndarray | None = None
    lambda_cost: float = 0.0

    @property
    def size(self) -> int:
        return int(np.asarray(self.probabilities).shape[0])


def margin(probabilities: np.ndarray, costs: Sequence[float], lambda_cost: float = 0.0) -> np.ndarray:
    """Gap between the best and the second-best utility per row (0 when there is one backend)."""
    util = utility_matrix(np.atleast_2d(probabilities), costs, lambda_cost)
    if util.shape[1] < 2:
        return np.zeros(util.shape[0])
    top = np.sort(util, axis=1)[:, ::-1]
    return top[:, 0] - top[:, 1]


def expected_regret(probabilities: np.ndarray, costs: Sequence[float], lambda_cost: float = 0.0) -> np.ndarray:
    """``E[max_j y_j] - p_choice`` per row, outcomes independent with the router's probabilities."""
    p = np.clip(np.atleast_2d(probabilities).astype(np.float64), 0.0, 1.0)
    util = utility_matrix(p, costs, lambda_cost)
    choice = np.argmax(util, axis=1)
    best_any = 1.0 - np.prod(1.0 - p, axis=1)
    return best_any - p[np.arange(p.shape[0]), choice]


def uncertainty(probabilities: np.ndarray, costs: Sequence[float], lambda_cost: float = 0.0) -> np.ndarray:
    """In [0, 1], 1 where the router cannot tell the two best backends apart."""
    return 1.0 - np.clip(margin(probabilities, costs, lambda_cost), 0.0, 1.0)


def select(name: str, cands: Candidates, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (into the candidates) of the next ``k`` to judge, in order, by strategy ``name``."""
    m = cands.size
    k = int(min(max(k, 0), m))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if name == "random":
        return rng.permutation(m)[:k]
    jitter = rng.random(m) * 1e-9  # breaks ties randomly, never reorders real differences
    if name == "uncertainty":
        return np.argsort(margin(cands.probabilities, cands.costs, cands.lambda_cost) + jitter, kind="stable")[:k]
    if name == "regret":
        return np.argsort(-(expected_regret(cands.probabilities, cands.costs, cands.lambda_cost) + jitter), kind="stable")[:k]
    if name == "kcenter":
        return _kcenter(cands, k, jitter)
    if name == "stratified":
        return _stratified(cands, k, jitter)
    if name == "kcenter_random":
        return _kcenter_random(cands, k, jitter, rng)
    raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")


def _kcenter(cands: Candidates, k: int, jitter: np.ndarray) -> np.ndarray:
    if cands.design is None:
        raise ValueError("kcenter needs the candidates' design rows")
    x = np.asarray(cands.design, dtype=np.float64)
    weight = uncertainty(cands.probabilities, cands.costs, cands.lambda_cost) + 0.05
    sq = (x * x).sum(axis=1)
    if cands.judged_design is not None and len(cands.judged_design):
        nearest = np.full(x.shape[0], np.inf)
        judged = np.asarray(cands.judged_design, dtype=np.float64)
        for s in range(0, judged.shape[0], 2048):
            block = judged[s : s + 2048]
            d = sq[:, None] - 2.0 * x @ block.T + (block * block).sum(axis=1)[None, :]
            nearest = np.minimum(nearest, d.min(axis=1))
    else:
        nearest = np.full(x.shape[0], 1.0)
    nearest = np.sqrt(np.maximum(nearest, 0.0))
    picks: list[int] = []
    taken = np.zeros(x.shape[0], dtype=bool)
    for _ in range(k):
        score = np.where(taken, -np.inf, nearest * weight + jitter)
        i = int(np.argmax(score))
        picks.append(i)
        taken[i] = True
        d_new = np.sqrt(np.maximum(sq - 2.0 * x @ x[i] + sq[i], 0.0))
        nearest = np.minimum(nearest, d_new)
    return np.asarray(picks, dtype=np.int64)


def _kcenter_random(cands: Candidates, k: int, jitter: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half of the picks by :func:`_kcenter`, half uniformly at random from the rest, interleaved.

    Pure coverage picks more and more outliers as the budget grows, so the judged rows stop looking
    like the traffic and a simple router fitted on them drifts (sampling bias: Dasgupta & Hsu 2008);
    the random half keeps the judged rows representative while the k-center half covers rare kinds early.
    """
    n_cover = k - int(round(k * MIXED_RANDOM_SHARE))
    cover = _kcenter(cands, n_cover, jitter) if n_cover else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(cands.size), cover)
    extra = rng.permutation(rest)[: k - cover.size]
    out: list[int] = []
    for i in range(max(cover.size, extra.size)):
        if i < cover.size:
            out.append(int(cover[i]))
        if i < extra.size:
            out.append(int(extra[i]))
    return np.asarray(out[:k], dtype=np.int64)


def _stratified(cands: Candidates, k: int, jitter: np.ndarray) -> np.ndarray:
    if cands.strata is None:
        raise ValueError("stratified needs the candidates' strata")
    strata = np.asarray(cands.strata, dtype=np.int64)
    n_strata = int(strata.max()) + 1 if strata.size else 0
    if cands.judged_strata is not None and len(cands.judged_strata):
        n_strata = max(n_strata, int(np.max(cands.judged_strata)) + 1)
    counts = np.zeros(n_strata, dtype=np.float64)
    if cands.judged_strata is not None and len(cands.judged_strata):
        np.add.at(counts, np.asarray(cands.judged_strata, dtype=np.int64), 1.0)
    unc = uncertainty(cands.probabilities, cands.costs, cands.lambda_cost) + jitter
    # Within each stratum: most uncertain first.
    queues: dict[int, list[int]] = {}
    for i in np.argsort(-unc, kind="stable"):
        queues.setdefault(int(strata[i]), []).append(int(i))
    heads = dict.fromkeys(queues, 0)
    picks: list[int] = []
    while len(picks) < k:
        open_strata = [s for s in queues if heads[s] < len(queues[s])]
        if not open_strata:
            break
        # Fewest judgments first; ties to the stratum whose next candidate is the more uncertain.
        s = min(open_strata, key=lambda c: (counts[c], -unc[queues[c][heads[c]]]))
        picks.append(queues[s][heads[s]])
        heads[s] += 1
        counts[s] += 1.0
    return np.asarray(picks, dtype=np.int64)


def queue_order(name: str, cands: Candidates, *, random_share: float = RANDOM_SHARE, seed: int = 0) -> np.ndarray:
    """A whole queue by ``name`` with every ``1/random_share``-th place a random pick (the app's order)."""
    rng = np.random.default_rng(seed)
    m = cands.size
    ranked = select(name, cands, m, rng) if name != "random" else rng.permutation(m)
    if random_share <= 0 or name == "random" or m < 2:
        return ranked
    every = max(2, round(1.0 / random_share))
    rest = [int(i) for i in ranked]
    pool = set(rest)
    out: list[int] = []
    spare = [int(i) for i in rng.permutation(m)]
    while rest:
        if (len(out) + 1) % every == 0:
            while spare and spare[-1] not in pool:
                spare.pop()
            if spare:
                i = spare.pop()
                out.append(i)
                pool.discard(i)
                rest.remove(i)
                continue
        i = rest.pop(0)
        if i in pool:
            out.append(i)
            pool.discard(i)
    return np.asarray(out, dtype=np.int64)


def kmeans_strata(design: np.ndarray, n_clusters: int, seed: int = 0, iterations: int = 15) -> np.ndarray:
    """Cluster labels of ``design`` rows (plain k-means, k-means++ seeding) for rarity-aware strata."""
    x = np.asarray(design, dtype=np.float64)
    n = x.shape[0]
    k = int(max(1, min(n_clusters, n)))
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d2.sum()
        i = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centres.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(axis=1))
    c = np.vstack(centres)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        dist = (x * x).sum(axis=1)[:, None] - 2.0 * x @ c.T + (c * c).sum(axis=1)[None, :]
        new = np.argmin(dist, axis=1)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        for j in range(k):
            rows = labels == j
            if rows.any():
                c[j] = x[rows].mean(axis=0)
    return labels


__all__ = [
    "RANDOM_SHARE",
    "STRATEGIES",
    "Candidates",
    "expected_regret",
    "kmeans_strata",
    "margin",
    "queue_order",
    "select",
    "uncertainty",
]
