"""Peer routers from the literature, fitted on the same feature vectors and rows as the learned router.

They exist to be compared with (``python -m router evaluate`` reports them beside the router), and each
is a :class:`router.base.Router`, so ``decide``, ``score_batch`` and ``choose_batch`` work as for any
kind: given the router's :class:`router.features.FeatureExtractor` they turn a question (and image)
into the same ``[text | image | has_image]`` vector the router's heads read.

* ``knn`` (RouterBench's kNN): the mean correctness of each backend over the ``k`` most similar
  training queries (cosine of standardised features), shrunk by one pseudo-count toward the backend's
  training accuracy so a unanimous neighbourhood does not say 0 or 1.
* ``linear`` and ``mlp`` (RouterBench's MLP baseline, and its linear variant): the router's own heads
  (:func:`router.heads.fit_heads`, ``hidden=0`` / ``hidden=128``) with no category output, no
  calibrator and no prior correction, early-stopped on an image-grouped slice of the training rows.
* ``mf`` (RouteLLM's matrix factorisation): ``P(correct | q, b) = sigmoid(<W x_q, v_b> + c_b)``, a
  learned projection ``W`` of the query features and one embedding ``v_b`` and bias ``c_b`` per backend,
  fitted by full-batch Adam (a few hundred steps, seeded, early-stopped like the heads).
* ``sw_ranking`` (RouteLLM's similarity-weighted ranking): every training query is weighted by
  ``10 * 10 ** (s / s_max)`` (RouteLLM's weighting, i.e. ``exp(ln 10 * s / s_max)`` up to a constant)
  of its cosine similarity ``s`` to the new query. RouteLLM then fits Bradley-Terry scores to weighted
  pairwise *wins* between two models; our data records per-backend correctness instead of a preference,
  so the natural adaptation is each backend's weighted accuracy, which is what this peer returns.

``linear``, ``mlp`` and ``mf`` fit with torch on one thread (the app runs the fitted arrays in numpy);
kNN and sw_ranking only store the rows and score by one matrix product per chunk of queries, so 10k
training rows cost milliseconds.
"""

from __future__ import annotations

import dataclasses
import time
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from router.base import BackendChoice, ImageInput, Router, RouterError, Scores
from router.calibration import sigmoid
from router.categories import classify_question
from router.features import FeatureExtractor
from router.table import group_bucket

#: Share of training images held back to choose when to stop (linear, mlp, mf).
STOP_FRACTION = 0.15
_CHUNK = 1024


class Standardiser:
    """Per-dimension mean and 1/std from the training rows (as the router's heads standardise)."""

    def __init__(self, features: np.ndarray) -> None:
        x = np.asarray(features, dtype=np.float64)
        self.mean = x.mean(axis=0).astype(np.float32)
        std = x.std(axis=0)
        self.scale = (1.0 / np.where(std > 1e-6, std, 1.0)).astype(np.float32)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float32) - self.mean) * self.scale

    def unit(self, features: np.ndarray) -> np.ndarray:
        """Standardised, then L2-normalised rows (dot products are cosines)."""
        z = self(features)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def _labelled(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(correct, dtype=np.float64)
    mask = np.isfinite(y)
    return np.where(mask, y, 0.0), mask.astype(np.float64)


def _prior(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (y.sum(axis=0) + 0.5) / (mask.sum(axis=0) + 1.0)


def stop_split(groups: Sequence[str] | None, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, stop rows): about STOP_FRACTION of the images held back, all of an image's rows together."""
    rows = np.arange(n)
    if groups is None or n < 20:
        return rows, rows[:0]
    held = np.array([group_bucket(str(g), f"peers:{seed}") < STOP_FRACTION for g in groups])
    if held.all() or not held.any():
        return rows, rows[:0]
    return rows[~held], rows[held]


class PeerRouter(Router):
    """Base of the peers: P(correct) per backend from a feature matrix; the rest is the Router base."""

    kind = "peer"

    def __init__(self, backends: Sequence[BackendChoice], *, extractor: FeatureExtractor | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("version", f"peer-{self.kind}")
        super().__init__(backends, **kwargs)
        self.extractor = extractor
        #: How it was fitted (rows, seconds, settings); evaluate reports it.
        self.fit_info: dict[str, Any] = {}

    @abstractmethod
    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(n, backends) P(correct) for a (n, d) feature matrix."""

    def score_features(self, features: np.ndarray, questions: Sequence[str] | None = None) -> tuple[np.ndarray, list[str | None]]:
        probs = np.clip(self.probabilities(np.atleast_2d(features)), 0.0, 1.0)
        cats: list[str | None] = [classify_question(q) for q in questions] if questions is not None else [None] * probs.shape[0]
        return probs, cats

    def _features(self, images: Sequence[ImageInput], questions: Sequence[str], keys: Sequence[str | None] | None) -> np.ndarray:
        if self.extractor is None:
            raise RouterError(f"peer router {self.kind} was fitted without a feature extractor, so it scores feature vectors only")
        return self.extractor.features(images, questions, image_keys=keys)

    def _score(self, image: ImageInput, question: str, **context: Any) -> Scores:
        probs, cats = self.score_features(self._features([image], [question], None), [question])
        return Scores(probs[0], cats[0])

    def score_batch(self, images: Sequence[ImageInput], questions: Sequence[str], **context: Any) -> tuple[np.ndarray, list[str | None]]:
        return self.score_features(self._features(images, questions, context.get("image_keys")), questions)


class KNNRouter(PeerRouter):
    """Mean correctness over the ``k`` nearest training queries, plus one pseudo-count of the prior."""

    kind = "knn"

    def __init__(self, backends: Sequence[BackendChoice], *, features: np.ndarray, correct: np.ndarray, k: int = 10, **kwargs: Any) -> None:
        super().__init__(backends, **kwargs)
        self.standardise = Standardiser(features)
        self.train = self.standardise.unit(features)
        self.y, self.mask = _labelled(correct)
        self.prior = _prior(self.y, self.mask)
        self.k = max(1, min(int(k), self.train.shape[0]))

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        q = self.standardise.unit(features)
        out = np.empty((q.shape[0], self.y.shape[1]))
        for s in range(0, q.shape[0], _CHUNK):
            sims = q[s : s + _CHUNK] @ self.train.T
            near = np.argpartition(-sims, self.k - 1, axis=1)[:, : self.k]
            hits, seen = self.y[near].sum(axis=1), self.mask[near].sum(axis=1)
            out[s : s + _CHUNK] = (hits + self.prior) / (seen + 1.0)
        return out


class SWRankingRouter(PeerRouter):
    """Each backend's accuracy over all training queries weighted by ``10 * 10 ** (s / s_max)``."""

    kind = "sw_ranking"

    def __init__(self, backends: Sequence[BackendChoice], *, features: np.ndarray, correct: np.ndarray, **kwargs: Any) -> None:
        super().__init__(backends, **kwargs)
        self.standardise = Standardiser(features)
        self.train = self.standardise.unit(features)
        self.y, self.mask = _labelled(correct)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        q = self.standardise.unit(features)
        out = np.empty((q.shape[0], self.y.shape[1]))
        for s in range(0, q.shape[0], _CHUNK):
            sims = (q[s : s + _CHUNK] @ self.train.T).astype(np.float64)
            top = np.maximum(sims.max(axis=1, keepdims=True), 1e-6)
            weights = 10.0 * 10.0 ** (sims / top)
            out[s : s + _CHUNK] = (weights @ self.y) / np.maximum(weights @ self.mask, 1e-12)
        return out


class MLPRouter(PeerRouter):
    """The router's heads fitted alone (one hidden layer of ``hidden`` units), with no calibrator."""

    kind = "mlp"
    hidden = 128

    def __init__(self, backends: Sequence[BackendChoice], *, heads: Any, **kwargs: Any) -> None:
        super().__init__(backends, **kwargs)
        self.heads = heads  # router.embedding_router.HeadWeights

    @classmethod
    def fit(
        cls,
        backends: Sequence[BackendChoice],
        features: np.ndarray,
        correct: np.ndarray,
        *,
        groups: Sequence[str] | None = None,
        seed: int = 0,
        max_steps: int = 1000,
        **kwargs: Any,
    ) -> MLPRouter:
        """``router.heads.fit_heads`` on these rows, early-stopped on the raw log-loss of held-back images."""
        from router.heads import fit_heads
        from router.training import TrainConfig

        config = dataclasses.replace(
            TrainConfig(), hidden=cls.hidden, category_weight=0.0, early_stop="raw", max_steps=int(max_steps), seed=int(seed),
            threads=1,  # small matrices: one thread is many times faster than several on a busy CPU
        )
        fit_rows, stop_rows = stop_split(groups, features.shape[0], seed)
        no_categories = np.full(features.shape[0], -1, dtype=np.int64)
        fit = fit_heads(np.asarray(features, dtype=np.float32), np.asarray(correct, dtype=np.float32), no_categories, fit_rows, stop_rows, config)
        router = cls(backends, heads=fit.heads, **kwargs)
        router.fit_info = {"hidden": cls.hidden, "epochs": fit.epochs, "steps": fit.steps, "stop_rows": int(stop_rows.size)}
        return router

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return sigmoid(self.heads.forward(features)[0].astype(np.float64))


class LinearRouter(MLPRouter):
    """The linear variant: the same fit with ``hidden = 0`` (one logistic regression per backend)."""

    kind = "linear"
    hidden = 0


class MFRouter(PeerRouter):
    """``sigmoid(<W x_q, v_b> + c_b)``: RouteLLM's matrix factorisation with per-backend correctness."""

    kind = "mf"

    def __init__(
        self, backends: Sequence[BackendChoice], *, standardise: Standardiser, w: np.ndarray, v: np.ndarray, c: np.ndarray, **kwargs: Any
    ) -> None:
        super().__init__(backends, **kwargs)
        self.standardise, self.w, self.v, self.c = standardise, w, v, c

    @classmethod
    def fit(
        cls,
        backends: Sequence[BackendChoice],
        features: np.ndarray,
        correct: np.ndarray,
        *,
        groups: Sequence[str] | None = None,
        seed: int = 0,
        dim: int = 16,
        steps: int = 300,
        lr: float = 0.01,
        l2: float = 1e-3,
        **kwargs: Any,
    ) -> MFRouter:
        """Full-batch Adam (torch, one thread, seeded) on the masked log-loss plus ``l2`` on W and V; the
        step with the lowest loss on the held-back images is kept (checked every 10 steps)."""
        import torch

        standardise = Standardiser(features)
        y, mask = _labelled(correct)
        fit_rows, stop_rows = stop_split(groups, len(y), seed)
        prior = _prior(y[fit_rows], mask[fit_rows])
        x_t = torch.from_numpy(standardise(features))
        y_t, m_t = torch.from_numpy(y.astype(np.float32)), torch.from_numpy(mask.astype(np.float32))
        fit_t, stop_t = torch.from_numpy(fit_rows), torch.from_numpy(stop_rows)
        old_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small matrices: one thread is many times faster on a busy CPU
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                d, nb = x_t.shape[1], y.shape[1]
                w = (torch.randn(d, dim) / d**0.5).requires_grad_()
                v = (torch.randn(nb, dim) / dim**0.5).requires_grad_()
                c = torch.from_numpy(np.log(prior / (1.0 - prior)).astype(np.float32)).requires_grad_()
                opt = torch.optim.Adam([w, v, c], lr=lr)
                bce = torch.nn.BCEWithLogitsLoss(reduction="none")

                def loss_on(rows: torch.Tensor) -> torch.Tensor:
                    logits = (x_t[rows] @ w) @ v.T + c
                    m = m_t[rows]
                    return (bce(logits, y_t[rows]) * m).sum() / m.sum().clamp(min=1.0)

                best = [t.detach().clone() for t in (w, v, c)]
                best_loss, best_step = float("inf"), int(steps)
                for step in range(1, int(steps) + 1):
                    loss = loss_on(fit_t) + 0.5 * l2 * ((w**2).sum() + (v**2).sum())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if stop_rows.size and step % 10 == 0:
                        with torch.no_grad():
                            held = float(loss_on(stop_t))
                        if held < best_loss - 1e-6:
                            best, best_loss, best_step = [t.detach().clone() for t in (w, v, c)], held, step
                if not stop_rows.size:
                    best = [t.detach().clone() for t in (w, v, c)]
        finally:
            torch.set_num_threads(old_threads)
        wn, vn, cn = (t.numpy().astype(np.float64) for t in best)
        router = cls(backends, standardise=standardise, w=wn, v=vn, c=cn, **kwargs)
        router.fit_info = {"dim": int(dim), "steps": int(steps), "kept_step": best_step, "stop_rows": int(stop_rows.size)}
        return router

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return sigmoid((self.standardise(features).astype(np.float64) @ self.w) @ self.v.T + self.c)


#: The peers ``fit_peers`` builds, in report order.
PEER_NAMES = ("knn", "linear", "mlp", "mf", "sw_ranking")


def fit_peers(
    features: np.ndarray,
    correct: np.ndarray,
    backends: Sequence[BackendChoice],
    *,
    groups: Sequence[str] | None = None,
    extractor: FeatureExtractor | None = None,
    names: Sequence[str] = PEER_NAMES,
    seed: int = 0,
    lambda_cost: float = 0.0,
) -> dict[str, PeerRouter]:
    """Every peer in ``names`` fitted on these rows (rows without any result are left out).

    ``features`` (n, d) and ``correct`` (n, backends; NaN where a backend has no result) are the
    training rows of the router being compared, from the same feature extractor; ``groups`` (split
    keys) keep an image's rows together when a peer holds some back to decide when to stop.
    """
    unknown = [n for n in names if n not in PEER_NAMES]
    if unknown:
        raise RouterError(f"unknown peer router(s) {unknown}; valid: {', '.join(PEER_NAMES)}")
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(correct, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0], len(backends)):
        raise RouterError(f"peers need (n, d) features and (n, {len(backends)}) results; got {x.shape} and {y.shape}")
    keep = np.isfinite(y).any(axis=1)
    x, y = x[keep], y[keep]
    grp = None if groups is None else [g for g, k in zip(groups, keep, strict=True) if k]
    if x.shape[0] < 2:
        raise RouterError(f"peers need at least 2 training rows with results; got {x.shape[0]}")
    common: dict[str, Any] = {"extractor": extractor, "lambda_cost": lambda_cost}
    build = {
        "knn": lambda: KNNRouter(backends, features=x, correct=y, **common),
        "linear": lambda: LinearRouter.fit(backends, x, y, groups=grp, seed=seed, **common),
        "mlp": lambda: MLPRouter.fit(backends, x, y, groups=grp, seed=seed, **common),
        "mf": lambda: MFRouter.fit(backends, x, y, groups=grp, seed=seed, **common),
        "sw_ranking": lambda: SWRankingRouter(backends, features=x, correct=y, **common),
    }
    out: dict[str, PeerRouter] = {}
    for name in names:
        start = time.perf_counter()
        peer = build[name]()
        peer.fit_info = {"rows": int(x.shape[0]), **peer.fit_info, "seconds": round(time.perf_counter() - start, 3)}
        out[name] = peer
    return out


def router_features(router: Router, table: Any, rows: Sequence[int]) -> np.ndarray:
    """Feature vectors of ``table`` rows from a learned router's own extractor (what its heads read)."""
    extractor = getattr(router, "extractor", None)
    if extractor is None:
        raise RouterError(f"router {router.version} ({router.kind}) has no feature extractor to fit peers on")
    rows = list(rows)
    return extractor.features(
        [table.images[i] for i in rows], [table.questions[i] for i in rows], image_keys=[table.image_keys[i] for i in rows]
    )


def fit_peers_for_router(
    router: Router,
    table: Any,  # router.table.PairTable
    *,
    exclude_groups: Sequence[str] = (),
    names: Sequence[str] = PEER_NAMES,
    seed: int = 0,
) -> tuple[dict[str, PeerRouter], dict[str, Any]]:
    """Peers of a trained ``router``, fitted on the rows of ``table`` that its card's split puts on the
    training side (train + calibration folds), minus any whose image is in ``exclude_groups`` (the
    evaluation rows' images, so nothing is fitted on a photo it is then scored on).

    Returns the peers and a summary of the rows used; no peers (and the summary says why) when no row
    is left.
    """
    from router.table import heldout_mask

    split = (getattr(router, "card", None) or {}).get("split", {})
    held = heldout_mask(table.groups, split)
    excluded = set(exclude_groups)
    shared = [i for i in range(table.n_queries) if not held[i] and table.groups[i] in excluded]
    rows = [i for i in range(table.n_queries) if not held[i] and table.groups[i] not in excluded]
    col = {b: j for j, b in enumerate(table.backends)}
    correct = np.full((len(rows), len(router.backends)), np.nan)
    for k, name in enumerate(router.backend_names):
        if name in col:
            correct[:, k] = table.correct[rows, col[name]]
    labelled = [r for r, ok in zip(rows, np.isfinite(correct).any(axis=1), strict=True) if ok]
    info: dict[str, Any] = {
        "rows": len(labelled),
        "heldout_rows_left_out": int(held.sum()),
        "rows_sharing_an_evaluation_image_left_out": len(shared),
        "split_method": split.get("method"),
    }
    if len(labelled) < 2:
        info["note"] = (
            "no training rows for the peers: give the router's training pairs (--train-pairs), or evaluate on its "
            "own pairs with --split heldout"
        )
        return {}, info
    keep = np.isfinite(correct).any(axis=1)
    start = time.perf_counter()
    features = router_features(router, table, labelled)
    info["feature_seconds"] = round(time.perf_counter() - start, 3)
    peers = fit_peers(
        features, correct[keep], router.backends, groups=[table.groups[i] for i in labelled],
        extractor=getattr(router, "extractor", None), names=names, seed=seed, lambda_cost=router.lambda_cost,
    )
    return peers, info


__all__ = [
    "KNNRouter",
    "LinearRouter",
    "MFRouter",
    "MLPRouter",
    "PEER_NAMES",
    "PeerRouter",
    "SWRankingRouter",
    "Standardiser",
    "fit_peers",
    "fit_peers_for_router",
    "router_features",
    "stop_split",
]
