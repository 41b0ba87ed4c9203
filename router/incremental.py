"""A retrain fast enough to run between two annotated items: a closed-form-ish fit on cached features.

The full retrain (:func:`router.training.train_router`) fits an MLP with early stopping, cross-fits a
calibrator and a prior correction: 35-65 s on this CPU, so the loop cannot turn while a person works.
This module keeps it for promotion and adds the fast path the Annotate queue and the replay simulator
(:mod:`router.simulate`) share:

* :class:`FeatureCache` holds the router's feature rows keyed by content (the question text, the
  image's content key), so each question is encoded and each image embedded once per process.
* :class:`Basis` maps those rows to a small design matrix: the active version's trained hidden layer
  when there is one (its weights are the warm start), else the top principal components of the pool
  (unsupervised), plus a one-hot of the question's keyword category x answer form (what the
  per-category prior conditions on) and an intercept.
* :func:`fit_incremental` fits one L2-regularised logistic regression per backend on that matrix by
  Newton steps (soft labels, missing cells masked), warm-started from the previous coefficients.

At 10,000 judged queries the fit takes well under the 5 s budget (``scripts/bench_simulate.py``
measures it): the matrices are (n, <= 160) and a Newton step is one (160 x 160) solve per backend.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from router.base import choose_by_utility, utility_matrix
from router.categories import CATEGORIES, classify_question
from router.prior import ANSWER_FORMS, answer_form

#: Principal components kept when there is no trained hidden layer to reuse.
DEFAULT_COMPONENTS = 64
#: L2 penalty on the (unit-variance) basis coefficients; the intercept is not penalised. 10 rather than 1:
#: on three synthetic rare-kind pools it let the best order reach random order's final accuracy sooner on all three.
DEFAULT_L2 = 10.0
#: Newton steps per fit (a warm start usually converges in 3-4).
MAX_NEWTON_STEPS = 12
#: Entries a FeatureCache keeps (about 70 MB of 1.7k-d float32 rows).
CACHE_ENTRIES = 20_000


def content_key(question: str, image_key: str | None) -> str:
    """The cache key of one query's features: its question text and its image's content key."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(question).encode("utf-8"))
    digest.update(b"\x00")
    digest.update(str(image_key or "").encode("utf-8"))
    return digest.hexdigest()


class FeatureCache:
    """Feature rows by content, computed once per process (per instance: never shared between users).

    ``compute(indices)`` gets the rows a caller lacks, for the positions it is asked about, in one
    batched call (the router's ``extractor.features`` for the app, ``compute_features`` for a table).
    """

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self.max_entries = int(max_entries)
        self._rows: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, keys: Sequence[str], compute: Callable[[list[int]], np.ndarray]) -> np.ndarray:
        """(len(keys), d) rows; those not cached come from ``compute(positions)`` and are kept."""
        with self._lock:
            found = [self._rows.get(k) for k in keys]
        missing = [i for i, row in enumerate(found) if row is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = np.asarray(compute(missing), dtype=np.float32)
            with self._lock:
                for pos, row in zip(missing, fresh, strict=True):
                    found[pos] = row
                    if len(self._rows) < self.max_entries:
                        self._rows[keys[pos]] = row
        if not found:
            return np.zeros((0, 0), dtype=np.float32)
        return np.vstack(found).astype(np.float32, copy=False)


# ============================================================================ basis
_FORM_OF = {f: i for i, f in enumerate(ANSWER_FORMS)}
_CAT_OF = {c: i for i, c in enumerate(CATEGORIES)}
N_STRATA = len(CATEGORIES) * len(ANSWER_FORMS)


def stratum_codes(questions: Sequence[str]) -> np.ndarray:
    """Keyword category x answer form of each question, as one integer code (what the prior conditions on)."""
    return np.array(
        [_CAT_OF.get(classify_question(q), len(CATEGORIES) - 1) * len(ANSWER_FORMS) + _FORM_OF[answer_form(q)] for q in questions],
        dtype=np.int64,
    )


@dataclass
class Basis:
    """Router features -> the incremental fit's design matrix ``[basis | category x form one-hot | 1]``."""

    mean: np.ndarray
    scale: np.ndarray
    projection: np.ndarray  # (d, k)
    bias: np.ndarray | None = None  # (k,) with ``relu``: a trained hidden layer
    relu: bool = False
    out_mean: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    out_scale: np.ndarray = field(default_factory=lambda: np.ones(0, dtype=np.float32))
    source: str = "pca"

    @property
    def width(self) -> int:
        return int(self.projection.shape[1]) + N_STRATA + 1

    def _project(self, x: np.ndarray) -> np.ndarray:
        h = ((np.asarray(x, dtype=np.float32) - self.mean) * self.scale) @ self.projection
        if self.bias is not None:
            h = h + self.bias
        return np.maximum(h, 0.0) if self.relu else h

    def transform(self, features: np.ndarray, questions: Sequence[str], strata: np.ndarray | None = None) -> np.ndarray:
        x = np.atleast_2d(features)
        h = self._project(x)
        if self.out_mean.size:
            h = (h - self.out_mean) * self.out_scale
        codes = stratum_codes(questions) if strata is None else np.asarray(strata)
        onehot = np.zeros((x.shape[0], N_STRATA), dtype=np.float32)
        onehot[np.arange(x.shape[0]), codes] = 1.0
        return np.hstack([h.astype(np.float32), onehot, np.ones((x.shape[0], 1), dtype=np.float32)])

    def _standardise_outputs(self, sample: np.ndarray) -> Basis:
        h = self._project(sample)
        self.out_mean = h.mean(axis=0).astype(np.float32)
        std = h.std(axis=0)
        self.out_scale = (1.0 / np.where(std > 1e-6, std, 1.0)).astype(np.float32)
        return self

    @classmethod
    def from_pool(cls, features: np.ndarray, components: int = DEFAULT_COMPONENTS, seed: int = 0, sample: int = 5000) -> Basis:
        """Top principal components of the (unlabelled) pool's standardised features."""
        x = np.asarray(features, dtype=np.float32)
        rng = np.random.default_rng(seed)
        rows = x if x.shape[0] <= sample else x[np.sort(rng.choice(x.shape[0], sample, replace=False))]
        mean = rows.mean(axis=0)
        std = rows.std(axis=0)
        scale = (1.0 / np.where(std > 1e-6, std, 1.0)).astype(np.float32)
        z = (rows - mean) * scale
        k = int(max(1, min(components, z.shape[0] - 1, z.shape[1])))
        _, _, vt = np.linalg.svd(z.astype(np.float64), full_matrices=False)
        basis = cls(mean.astype(np.float32), scale, vt[:k].T.astype(np.float32), source=f"pca-{k}")
        return basis._standardise_outputs(rows)

    @classmethod
    def from_heads(cls, heads: Any, sample_features: np.ndarray | None = None) -> Basis:
        """The trained hidden layer of a router version (``HeadWeights``); a linear head reuses its inputs."""
        if heads.hidden_w is None:
            d = heads.input_dim
            basis = cls(heads.mean, heads.scale, np.eye(d, dtype=np.float32), source="version-linear")
        else:
            basis = cls(heads.mean, heads.scale, heads.hidden_w, heads.hidden_b, relu=True, source="version-hidden")
        if sample_features is not None and len(sample_features):
            basis._standardise_outputs(np.atleast_2d(sample_features))
        return basis


# ============================================================================ the fit
@dataclass
class IncrementalModel:
    """Per-backend logistic regressions on a :class:`Basis`; ``coef`` is (width, n_backends)."""

    basis: Basis
    coef: np.ndarray
    backends: list[str]
    n_judged: int = 0
    newton_steps: int = 0

    def probabilities(self, design: np.ndarray) -> np.ndarray:
        return _sigmoid(design @ self.coef)

    def score(self, features: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        """P(correct) (n, b) for raw router features."""
        return self.probabilities(self.basis.transform(features, questions))


def warm_coefficients(basis: Basis, heads: Any, columns: Sequence[int] | None = None) -> np.ndarray | None:
    """Starting coefficients from a version's output layer (only meaningful for its own hidden basis)."""
    if basis.source != "version-hidden" or heads is None:
        return None
    w = np.asarray(heads.backend_w, dtype=np.float64)
    b = np.asarray(heads.backend_b, dtype=np.float64)
    if columns is not None:
        w, b = w[:, list(columns)], b[list(columns)]
    # The basis standardises the hidden units: h' = (h - m) * s, so h = h'/s + m.
    inv = 1.0 / basis.out_scale.astype(np.float64)
    coef = np.zeros((basis.width, w.shape[1]))
    coef[: w.shape[0]] = w * inv[:, None]
    coef[-1] = b + basis.out_mean.astype(np.float64) @ w
    return coef


def fit_incremental(
    design: np.ndarray,
    correct: np.ndarray,
    *,
    basis: Basis,
    backends: Sequence[str],
    warm: np.ndarray | None = None,
    l2: float = DEFAULT_L2,
    max_steps: int = MAX_NEWTON_STEPS,
    tol: float = 1e-4,
    row_weights: np.ndarray | None = None,
) -> IncrementalModel:
    """One L2 logistic regression per backend on ``design`` rows (NaN cells of ``correct`` are skipped);
    ``row_weights`` (n,) weigh each row's log loss (default 1)."""
    z = np.asarray(design, dtype=np.float64)
    y_all = np.asarray(correct, dtype=np.float64)
    weights_all = np.ones(z.shape[0]) if row_weights is None else np.asarray(row_weights, dtype=np.float64)
    width, nb = z.shape[1], y_all.shape[1]
    coef = np.zeros((width, nb)) if warm is None or warm.shape != (width, nb) else np.array(warm, dtype=np.float64)
    penalty = np.full(width, float(l2))
    penalty[-1] = 1e-6  # the intercept
    total_steps = 0
    for j in range(nb):
        seen = np.isfinite(y_all[:, j])
        if not seen.any():
            continue
        zj, yj, vj = z[seen], y_all[seen, j], weights_all[seen]
        w = coef[:, j]
        loss = _objective(zj, yj, w, penalty, vj)
        for _ in range(max_steps):
            total_steps += 1
            p = _sigmoid(zj @ w)
            grad = zj.T @ (vj * (p - yj)) + penalty * w
            r = vj * (p * (1.0 - p) + 1e-6)
            hess = (zj * r[:, None]).T @ zj + np.diag(penalty)
            try:
                step = np.linalg.solve(hess, grad)
            except np.linalg.LinAlgError:
                break
            # Damped Newton: halve the step until the penalised loss falls (a far warm start can overshoot).
            t = 1.0
            while t > 1e-3:
                trial = w - t * step
                trial_loss = _objective(zj, yj, trial, penalty, vj)
                if trial_loss <= loss:
                    break
                t *= 0.5
            else:
                break
            w, loss = trial, trial_loss
            if np.abs(t * step).max() < tol:
                break
        coef[:, j] = w
    judged = int(np.isfinite(y_all).any(axis=1).sum())
    return IncrementalModel(basis, coef.astype(np.float64), list(backends), judged, total_steps)


def routed_choice(probabilities: np.ndarray, costs: Sequence[float], lambda_cost: float = 0.0) -> np.ndarray:
    """The backend index the router's rule picks per row (same rule as ``Router.choose_batch``)."""
    return np.asarray(choose_by_utility(utility_matrix(probabilities, costs, lambda_cost), costs))


def _objective(z: np.ndarray, y: np.ndarray, w: np.ndarray, penalty: np.ndarray, weights: np.ndarray) -> float:
    """Penalised, row-weighted log loss (soft labels) of logistic coefficients ``w``."""
    s = z @ w
    return float(np.sum(weights * (np.logaddexp(0.0, s) - y * s)) + 0.5 * np.sum(penalty * w * w))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


__all__ = [
    "Basis",
    "FeatureCache",
    "IncrementalModel",
    "N_STRATA",
    "content_key",
    "fit_incremental",
    "routed_choice",
    "stratum_codes",
    "warm_coefficients",
]
