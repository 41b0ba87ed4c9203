"""A learned router as a correction on top of the per-category prior, calibrated out of fold.

``P(correct) = sigmoid(a * (logit(prior) + w * (logit(learned) - logit(prior))) + b)`` per backend, where
``prior`` is :class:`router.prior.CategoryPrior` for the question's keyword category and answer form,
``learned`` the heads' calibrated probability, ``w`` the query's familiarity (:mod:`router.familiarity`)
and ``(a, b)`` one Platt fit on out-of-fold rows, so the blend itself is calibrated. With ``w = 0`` the
router says what the prior says; it can never be further from the rule it replaces than its own data
allow.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.categories import classify_question
from router.familiarity import UNFAMILIAR_BELOW, Familiarity
from router.prior import CategoryPrior, answer_form, logit, sigmoid

UNFAMILIAR_NOTE = "unfamiliar question: leaning on the per-category prior"


@dataclass
class PriorCorrection:
    prior: CategoryPrior
    familiarity: Familiarity | None
    scale: float = 1.0
    bias: float = 0.0

    def prior_matrix(self, backends: Sequence[Any], questions: Sequence[str], labels: Sequence[Any] | None = None) -> np.ndarray:
        labels = list(labels) if labels is not None else [None] * len(questions)
        cats = [classify_question(q) for q in questions]
        forms = [answer_form(q, lab) for q, lab in zip(questions, labels, strict=True)]
        return self.prior.matrix(backends, cats, forms)

    def blend(self, learned: np.ndarray, prior: np.ndarray, weight: np.ndarray) -> np.ndarray:
        z0 = logit(prior)
        z = z0 + weight[:, None] * (logit(learned) - z0)
        return sigmoid(self.scale * z + self.bias)

    def apply(
        self,
        learned: np.ndarray,
        features: np.ndarray,
        questions: Sequence[str],
        backends: Sequence[Any],
        labels: Sequence[Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Corrected probabilities (n, b) and each row's familiarity weight (n,)."""
        learned = np.atleast_2d(learned)
        weight = self.familiarity.weight(features) if self.familiarity is not None else np.ones(learned.shape[0])
        return self.blend(learned, self.prior_matrix(backends, questions, labels), weight), weight

    @staticmethod
    def note(weight: float) -> str | None:
        return UNFAMILIAR_NOTE if weight < UNFAMILIAR_BELOW else None

    # ------------------------------------------------------------------ fitting
    def fit_platt(
        self, learned: np.ndarray, prior: np.ndarray, weight: np.ndarray, correct: np.ndarray, row_weights: np.ndarray | None = None
    ) -> None:
        """One (a, b) for the blended logit, by Newton steps on the (row-weighted) log loss of the judged cells."""
        z0 = logit(prior)
        z = (z0 + weight[:, None] * (logit(learned) - z0)).ravel()
        y = np.asarray(correct, dtype=np.float64).ravel()
        rw = np.ones(prior.shape[0]) if row_weights is None else np.asarray(row_weights, dtype=np.float64)
        v = np.repeat(rw, prior.shape[1])
        keep = np.isfinite(y)
        z, y, v = z[keep], y[keep], v[keep]
        if y.size < 10 or y.min() == y.max():
            return
        a, b = 1.0, 0.0
        for _ in range(50):
            p = sigmoid(a * z + b)
            g = np.array([np.sum(v * (p - y) * z), np.sum(v * (p - y))])
            r = v * p * (1 - p) + 1e-9
            h = np.array([[np.sum(r * z * z), np.sum(r * z)], [np.sum(r * z), np.sum(r)]]) + 1e-6 * np.eye(2)
            step = np.linalg.solve(h, g)
            a, b = a - step[0], b - step[1]
            if np.abs(step).max() < 1e-7:
                break
        if np.isfinite(a) and np.isfinite(b) and a > 0:
            self.scale, self.bias = float(a), float(b)

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {
            "prior": self.prior.to_json(),
            "familiarity": self.familiarity.to_json() if self.familiarity is not None else None,
            "scale": self.scale,
            "bias": self.bias,
        }

    def to_tensors(self) -> dict[str, np.ndarray]:
        return self.familiarity.to_tensors() if self.familiarity is not None else {}

    @classmethod
    def from_parts(cls, tensors: Mapping[str, np.ndarray], card: Mapping[str, Any] | None) -> PriorCorrection | None:
        if not card:
            return None
        return cls(
            CategoryPrior.from_json(card.get("prior")),
            Familiarity.from_parts(dict(tensors), card.get("familiarity") or {}),
            float(card.get("scale", 1.0)),
            float(card.get("bias", 0.0)),
        )


def fit_correction(
    *,
    learned_oof: np.ndarray,
    rows: np.ndarray,
    features: np.ndarray,
    correct: np.ndarray,
    questions: Sequence[str],
    groups: Sequence[str],
    backends: Sequence[Any],
    text_dim: int,
    image_dim: int,
    folds: int = 5,
    seed: int = 0,
    row_weights: np.ndarray | None = None,
) -> PriorCorrection:
    """The correction for a router whose out-of-fold calibrated probabilities on ``rows`` are ``learned_oof``.

    The prior used to fit (a, b) is itself out of fold (image-grouped folds), so no row sees its own label;
    the prior kept in the router is fitted on all ``rows``. ``row_weights`` (aligned with ``rows``) weight
    the prior's counts and the Platt fit (the trainer balances the data's origins with them).
    """
    rows = np.asarray(rows, dtype=np.int64)
    names = [b.name for b in backends]
    kinds = [b.kind for b in backends]
    cats = [classify_question(questions[i]) for i in rows]
    forms = [answer_form(questions[i]) for i in rows]
    y = correct[rows]
    rw = np.ones(rows.size) if row_weights is None else np.asarray(row_weights, dtype=np.float64)
    fold_of = np.array([zlib.crc32(groups[i].encode()) % folds for i in rows]) if folds > 1 else np.zeros(rows.size, dtype=int)
    prior_oof = np.zeros((rows.size, len(names)))
    for f in range(folds):
        inside = fold_of == f
        if not inside.any():
            continue
        outside = ~inside
        p = CategoryPrior.fit(y[outside], names, kinds, [c for c, o in zip(cats, outside, strict=True) if o],
                              [m for m, o in zip(forms, outside, strict=True) if o], weights=rw[outside])
        prior_oof[inside] = p.matrix(backends, [c for c, i in zip(cats, inside, strict=True) if i],
                                     [m for m, i in zip(forms, inside, strict=True) if i])
    familiarity, weight = Familiarity.fit(features, list(groups), rows, text_dim=text_dim, image_dim=image_dim, seed=seed)
    correction = PriorCorrection(CategoryPrior.fit(y, names, kinds, cats, forms, weights=rw), familiarity)
    correction.fit_platt(np.atleast_2d(learned_oof), prior_oof, weight, y, rw)
    return correction


__all__ = ["UNFAMILIAR_NOTE", "PriorCorrection", "fit_correction"]
