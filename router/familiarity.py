"""How familiar a question and image are to a router's training data, and the lean back to the prior.

Familiarity is the mean cosine similarity of a query to its ``k`` nearest training queries, the text and
the image parts each normalised and weighted equally (an image embedding has several times the
dimensions of a sentence embedding and would otherwise decide alone). It is read against the same
measure taken out of fold on the training rows themselves (each row against the rows of *other* images):
at or above the ``high`` quantile of those a query is familiar (weight 1, the learned correction stands);
at or below the ``low`` quantile it is unlike anything seen (weight 0, the per-category prior decides);
in between the weight is linear. A learned router's logit is then
``logit(prior) + weight * (logit(learned) - logit(prior))``: a correction on top of the prior that fades
where the training data has nothing to say.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Anchors kept in a router file: enough to cover the training data, small enough for a fast matmul.
MAX_ANCHORS = 1000
DEFAULT_K = 5
#: Weight below which the card says the router leans on the prior.
UNFAMILIAR_BELOW = 0.5


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass
class Familiarity:
    """Training anchors (unit text and image parts) and the similarity range that maps to [0, 1]."""

    text: np.ndarray  # (m, text_dim)
    image: np.ndarray | None  # (m, image_dim) or None for text-only routers
    low: float
    high: float
    k: int = DEFAULT_K

    @staticmethod
    def _split(features: np.ndarray, text_dim: int, image_dim: int) -> tuple[np.ndarray, np.ndarray | None]:
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        text = _unit(features[:, :text_dim])
        image = _unit(features[:, text_dim : text_dim + image_dim]) if image_dim else None
        return text, image

    @property
    def text_dim(self) -> int:
        return int(self.text.shape[1])

    @property
    def image_dim(self) -> int:
        return 0 if self.image is None else int(self.image.shape[1])

    def _pair_similarity(self, text: np.ndarray, image: np.ndarray | None, anchors: tuple[np.ndarray, np.ndarray | None]) -> np.ndarray:
        sim = text @ anchors[0].T
        if image is not None and anchors[1] is not None:
            # A query with no image (all-zero part) is compared on its text alone.
            has_image = (np.abs(image).sum(axis=1) > 0)[:, None]
            sim = np.where(has_image, 0.5 * sim + 0.5 * (image @ anchors[1].T), sim)
        return sim

    def similarity(self, features: np.ndarray) -> np.ndarray:
        """Mean similarity to the ``k`` nearest anchors, one value per row of ``features``."""
        text, image = self._split(features, self.text_dim, self.image_dim)
        sim = self._pair_similarity(text, image, (self.text, self.image))
        k = min(self.k, sim.shape[1])
        top = np.partition(sim, sim.shape[1] - k, axis=1)[:, -k:]
        return top.mean(axis=1)

    def weight(self, features: np.ndarray) -> np.ndarray:
        """1 for familiar rows, 0 for rows unlike the training data, linear in between."""
        span = max(self.high - self.low, 1e-6)
        return np.clip((self.similarity(features) - self.low) / span, 0.0, 1.0)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        groups: list[str],
        rows: np.ndarray,
        *,
        text_dim: int,
        image_dim: int = 0,
        k: int = DEFAULT_K,
        low_quantile: float = 0.02,
        high_quantile: float = 0.25,
        seed: int = 0,
    ) -> tuple[Familiarity, np.ndarray]:
        """Anchors from ``rows`` and out-of-fold weights for those rows (same-image rows excluded)."""
        rows = np.asarray(rows, dtype=np.int64)
        rng = np.random.default_rng(seed)
        anchor_rows = rows if rows.size <= MAX_ANCHORS else np.sort(rng.choice(rows, MAX_ANCHORS, replace=False))
        text, image = cls._split(features[anchor_rows], text_dim, image_dim)
        probe = cls(text, image, 0.0, 1.0, k)
        q_text, q_image = cls._split(features[rows], text_dim, image_dim)
        sim = probe._pair_similarity(q_text, q_image, (text, image))
        anchor_groups = np.array([groups[i] for i in anchor_rows])
        row_groups = np.array([groups[i] for i in rows])
        sim[row_groups[:, None] == anchor_groups[None, :]] = -np.inf  # never your own image
        kk = min(k, max(1, sim.shape[1] - 1))
        top = np.partition(sim, sim.shape[1] - kk, axis=1)[:, -kk:]
        top = np.where(np.isfinite(top), top, np.nan)
        oof = np.nan_to_num(np.nanmean(top, axis=1), nan=-1.0)
        low, high = (float(v) for v in np.quantile(oof, [low_quantile, high_quantile]))
        fitted = cls(text, image, low, max(high, low + 1e-3), kk)
        weights = np.clip((oof - fitted.low) / (fitted.high - fitted.low), 0.0, 1.0)
        return fitted, weights

    # ------------------------------------------------------------------ persistence
    def to_tensors(self) -> dict[str, np.ndarray]:
        tensors = {"familiarity.text": np.ascontiguousarray(self.text, dtype=np.float32)}
        if self.image is not None:
            tensors["familiarity.image"] = np.ascontiguousarray(self.image, dtype=np.float32)
        return tensors

    def to_json(self) -> dict[str, float | int]:
        return {"low": float(self.low), "high": float(self.high), "k": self.k, "anchors": int(self.text.shape[0])}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], card: dict) -> Familiarity | None:
        if "familiarity.text" not in tensors or not card:
            return None
        image = tensors.get("familiarity.image")
        return cls(
            tensors["familiarity.text"].astype(np.float32),
            None if image is None else image.astype(np.float32),
            float(card["low"]),
            float(card["high"]),
            int(card.get("k", DEFAULT_K)),
        )


__all__ = ["UNFAMILIAR_BELOW", "Familiarity"]
