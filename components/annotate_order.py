"""The Annotate queue's order: the annotation strategy the replay simulator measured best, refreshed
by a background incremental retrain while a person works.

* :func:`measured_strategy` reads the simulator's result shipped in ``data/benchmarks/simulate_offline.json``
  (``scripts/bench_simulate.py`` writes it; ``python -m router simulate --json`` prints the same object)
  and takes the non-random strategy that needed the fewest judgments to match random order.
* :func:`order_items` ranks a dataset's items by that strategy from what the active router believes
  (its P(correct) and its own hidden features), with a share of random picks
  (:data:`router.strategies.RANDOM_SHARE`) so the router's blind spots still get judged. Without a
  learned router there is nothing to be uncertain about: items are spread over question kinds
  (keyword category x answer form) in file order within each kind, and the message says so.
* :class:`QueueRefresher` runs, after every ``every`` saved judgments of a session, one incremental
  retrain (:func:`router.incremental.fit_incremental`) on the session's verdicts plus the router's own
  beliefs about the unjudged items as soft labels, re-scores what is left and reorders the session's
  pending items in the store. It is per view (one per app), keyed by session, never module state.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.incremental import Basis, FeatureCache, content_key, fit_incremental, stratum_codes, warm_coefficients
from router.strategies import RANDOM_SHARE, STRATEGIES, Candidates, kmeans_strata, queue_order

log = logging.getLogger("routelens")

SIMULATION_FILE = Path(__file__).resolve().parent.parent / "data" / "benchmarks" / "simulate_offline.json"
#: The strategy used when no simulator result can be read (margin sampling: the old queue's order).
FALLBACK_STRATEGY = "uncertainty"
#: Saved judgments of a session between two background refreshes of its queue.
REFRESH_EVERY = 20
#: Weight of the router's own beliefs (soft labels on unjudged items) against one real verdict.
BELIEF_WEIGHT = 0.25

STRATEGY_WORDS = {
    "random": "random order",
    "uncertainty": "least certain first",
    "regret": "most to gain first (expected regret)",
    "kcenter": "spread over the feature space, least certain first (k-center)",
    "stratified": "rare question kinds first, least certain within each (stratified)",
}


@dataclass(frozen=True)
class MeasuredStrategy:
    """A strategy name and the sentence that says where its choice comes from."""

    name: str
    why: str


def measured_strategy(path: Path = SIMULATION_FILE) -> MeasuredStrategy:
    """The best non-random strategy in a simulator result file (fallback: :data:`FALLBACK_STRATEGY`)."""
    from router.simulate import best_strategy

    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
        best = best_strategy(result)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        log.warning("cannot read the annotation simulator's result %s (%s); using %s", path, exc, FALLBACK_STRATEGY)
        best = None
    if best is None or best[0] not in STRATEGIES:
        return MeasuredStrategy(FALLBACK_STRATEGY, "no simulator result to choose from")
    name, fraction = best
    return MeasuredStrategy(name, f"the replay simulator measured it best: it matched random order's accuracy "
                                  f"with {fraction:.0%} of the judgments")


def is_learned(router: Any) -> bool:
    """A router with features and trained heads (the queue's strategies need its beliefs)."""
    return (getattr(router, "extractor", None) is not None and getattr(router, "heads", None) is not None
            and callable(getattr(router, "score_features", None)))


@dataclass
class ScoredItems:
    """What a strategy needs about a list of items: the router's beliefs and where the items lie."""

    ids: list[str]
    questions: list[str]
    features: np.ndarray
    design: np.ndarray
    probabilities: np.ndarray
    strata: np.ndarray
    basis: Basis


def score_items(router: Any, items: Sequence[Any], cache: FeatureCache | None = None) -> ScoredItems:
    """Features (cached by content), the incremental basis and P(correct) of ``items`` under ``router``."""
    images = [i.image for i in items]
    questions = [i.question for i in items]
    keys = [content_key(i.question, _image_key(i)) for i in items]
    extractor = router.extractor

    def compute(positions: list[int]) -> np.ndarray:
        return extractor.features([images[p] for p in positions], [questions[p] for p in positions])

    features = (cache or FeatureCache()).rows(keys, compute)
    basis = Basis.from_heads(router.heads, features)
    design = basis.transform(features, questions)
    # Scored from the rows just computed (or cached): the router does not embed everything a second time.
    probabilities, _ = router.score_features(features, questions)
    k = max(2, round(math.sqrt(len(items) / 2)))
    strata = kmeans_strata(design[:, :-1], k, seed=0)
    return ScoredItems([i.id for i in items], questions, features, design, np.asarray(probabilities, dtype=np.float64),
                       strata, basis)


def _image_key(item: Any) -> str:
    """An item's image identity (the key the store and the pairs use), or a per-object key if unreadable."""
    try:
        return str(item.image_sha256)
    except Exception:  # an unreadable image still gets a key; scoring reports the problem itself
        return f"object:{id(item.image)}"


def order_items(router: Any, items: Sequence[Any], costs: Sequence[float], strategy: MeasuredStrategy, *,
                seed: int = 0, cache: FeatureCache | None = None) -> tuple[list[str], str]:
    """The items' ids in queue order and the sentence naming the order really used."""
    if not items:
        return [], "no items"
    if not is_learned(router):
        codes = stratum_codes([i.question for i in items])
        order = _round_robin(codes)
        return [items[k].id for k in order], ("spread over question kinds, file order within each "
                                              "(no learned router yet, so nothing to be uncertain about)")
    scored = score_items(router, items, cache)
    cands = Candidates(probabilities=scored.probabilities, costs=list(costs), design=scored.design, strata=scored.strata)
    order = queue_order(strategy.name, cands, random_share=RANDOM_SHARE, seed=seed)
    words = STRATEGY_WORDS.get(strategy.name, strategy.name)
    share = "" if strategy.name == "random" else f", one pick in {round(1 / RANDOM_SHARE)} random"
    return [scored.ids[k] for k in order], f"{words}{share}; {strategy.why}"


def _round_robin(codes: np.ndarray) -> list[int]:
    """Indices taking one item per kind in turn (kinds in order of first appearance, file order within)."""
    queues: dict[int, list[int]] = {}
    for index, code in enumerate(codes):
        queues.setdefault(int(code), []).append(index)
    out: list[int] = []
    while queues:
        for code in list(queues):
            out.append(queues[code].pop(0))
            if not queues[code]:
                del queues[code]
    return out


def refreshed_order(router: Any, items: Sequence[Any], judged: dict[str, dict[str, float]], backends: Sequence[str],
                    costs: Sequence[float], strategy: MeasuredStrategy, *, cache: FeatureCache | None = None,
                    seed: int = 0) -> list[str]:
    """The pending items' ids re-ranked after an incremental retrain on the session's verdicts.

    The fit's labels: each judged item's verdicts (weight 1), and for every other item the router's
    own P(correct) as soft labels with weight :data:`BELIEF_WEIGHT`, so a few verdicts move the beliefs
    near them without forgetting what the version learned elsewhere.
    """
    scored = score_items(router, items, cache)
    index = {item_id: k for k, item_id in enumerate(scored.ids)}
    labels = scored.probabilities.copy()
    weight = np.full(len(items), BELIEF_WEIGHT)
    for item_id, verdicts in judged.items():
        k = index.get(item_id)
        if k is None:
            continue
        for name, value in verdicts.items():
            if name in backends:
                labels[k, list(backends).index(name)] = float(value)
        weight[k] = 1.0
    warm = warm_coefficients(scored.basis, router.heads)
    model = fit_incremental(scored.design, labels, basis=scored.basis, backends=list(backends), warm=warm,
                            row_weights=weight)
    probabilities = model.probabilities(scored.design)
    pending = [k for k, item_id in enumerate(scored.ids) if item_id not in judged]
    judged_rows = [k for k, item_id in enumerate(scored.ids) if item_id in judged]
    cands = Candidates(
        probabilities=probabilities[pending], costs=list(costs), design=scored.design[pending],
        strata=scored.strata[pending], judged_design=scored.design[judged_rows], judged_strata=scored.strata[judged_rows],
    )
    order = queue_order(strategy.name, cands, random_share=RANDOM_SHARE, seed=seed)
    return [scored.ids[pending[k]] for k in order]


class QueueRefresher:
    """After every ``every`` saved judgments of a session, re-rank its pending items in the background."""

    def __init__(self, every: int = REFRESH_EVERY) -> None:
        self.every = max(1, int(every))
        self.cache = FeatureCache()
        self._lock = threading.Lock()
        self._saved: dict[str, int] = {}
        self._running: dict[str, threading.Thread] = {}
        self.refreshes: dict[str, int] = {}

    def note_saved(self, session_id: str, work: Any) -> threading.Thread | None:
        """Count one saved judgment; every ``every``-th starts ``work()`` in a thread (one per session)."""
        with self._lock:
            count = self._saved[session_id] = self._saved.get(session_id, 0) + 1
            if count % self.every or (session_id in self._running and self._running[session_id].is_alive()):
                return None
            thread = threading.Thread(target=self._run, args=(session_id, work), name=f"queue-refresh-{session_id[:8]}",
                                      daemon=True)
            self._running[session_id] = thread
        thread.start()
        return thread

    def _run(self, session_id: str, work: Any) -> None:
        try:
            work()
            with self._lock:
                self.refreshes[session_id] = self.refreshes.get(session_id, 0) + 1
        except Exception:  # a refresh is a nicety: the queue keeps its order
            log.exception("the Annotate queue's background refresh failed; the order stays as it was")


__all__ = [
    "FALLBACK_STRATEGY",
    "REFRESH_EVERY",
    "MeasuredStrategy",
    "QueueRefresher",
    "is_learned",
    "measured_strategy",
    "order_items",
    "refreshed_order",
    "score_items",
]
