"""The default router: a frozen text encoder (+ optional image embedding) feeding small trained heads.

The heads are a one-hidden-layer MLP (or a linear map when ``hidden == 0``) with two outputs: one
logit per backend for P(correct) (multi-label: several backends can be right) and one logit per task
category. They are trained in ``router.training`` with torch; here they run in numpy, because for one
question a few small matrix products in numpy take microseconds while torch's dispatch adds more
than the products themselves. A per-backend calibrator maps each logit to a calibrated probability.

Saved state: every array of :class:`HeadWeights` and of the calibrator in one safetensors file; the
card (JSON) says how to rebuild the feature extractor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.base import BackendChoice, ImageInput, Router, RouterError, Scores
from router.calibration import Calibrator
from router.categories import CATEGORIES, classify_question
from router.correction import PriorCorrection
from router.features import FeatureExtractor


@dataclass
class HeadWeights:
    """Input standardisation, an optional hidden layer, and the backend / category output layers."""

    mean: np.ndarray  # (d,)
    scale: np.ndarray  # (d,) 1/std
    hidden_w: np.ndarray | None  # (d, h) or None for a linear head
    hidden_b: np.ndarray | None  # (h,)
    backend_w: np.ndarray  # (h or d, n_backends)
    backend_b: np.ndarray  # (n_backends,)
    category_w: np.ndarray | None  # (h or d, n_categories) or None when no category labels were seen
    category_b: np.ndarray | None

    @property
    def input_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_backends(self) -> int:
        return int(self.backend_b.shape[0])

    def _trunk(self, x: np.ndarray) -> np.ndarray:
        h = (np.asarray(x, dtype=np.float32) - self.mean) * self.scale
        if self.hidden_w is not None:
            h = np.maximum(h @ self.hidden_w + self.hidden_b, 0.0)
        return h

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Backend logits (n, b) and category logits (n, c) or None, for a (n, d) feature matrix."""
        h = self._trunk(x)
        backend = h @ self.backend_w + self.backend_b
        category = None if self.category_w is None else h @ self.category_w + self.category_b
        return backend, category

    def select_backends(self, columns: Sequence[int]) -> HeadWeights:
        """Heads for a subset of the backends (when the app runs fewer backends than were trained)."""
        cols = list(columns)
        return HeadWeights(
            self.mean, self.scale, self.hidden_w, self.hidden_b,
            self.backend_w[:, cols], self.backend_b[cols], self.category_w, self.category_b,
        )

    def to_tensors(self) -> dict[str, np.ndarray]:
        tensors = {
            "input.mean": self.mean,
            "input.scale": self.scale,
            "backend.weight": self.backend_w,
            "backend.bias": self.backend_b,
        }
        if self.hidden_w is not None:
            tensors["hidden.weight"] = self.hidden_w
            tensors["hidden.bias"] = self.hidden_b
        if self.category_w is not None:
            tensors["category.weight"] = self.category_w
            tensors["category.bias"] = self.category_b
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> HeadWeights:
        try:
            weights = cls(
                mean=tensors["input.mean"],
                scale=tensors["input.scale"],
                hidden_w=tensors.get("hidden.weight"),
                hidden_b=tensors.get("hidden.bias"),
                backend_w=tensors["backend.weight"],
                backend_b=tensors["backend.bias"],
                category_w=tensors.get("category.weight"),
                category_b=tensors.get("category.bias"),
            )
        except KeyError as exc:
            raise ValueError(f"router weights lack tensor {exc}") from None
        width = weights.hidden_w.shape[1] if weights.hidden_w is not None else weights.input_dim
        if weights.backend_w.shape != (width, weights.n_backends):
            raise ValueError(f"backend head has shape {weights.backend_w.shape}, expected ({width}, {weights.n_backends})")
        return weights


class EmbeddingRouter(Router):
    """Per-backend P(correct) and a task category from text (+ image) features."""

    kind = "embedding"

    def __init__(
        self,
        backends: Sequence[BackendChoice],
        *,
        extractor: FeatureExtractor,
        heads: HeadWeights,
        calibrator: Calibrator,
        categories: Sequence[str] = CATEGORIES,
        card: dict[str, Any] | None = None,
        correction: PriorCorrection | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backends, **kwargs)
        if heads.n_backends != len(self.backends):
            raise RouterError(f"router heads score {heads.n_backends} backends but {len(self.backends)} were given")
        if heads.input_dim != extractor.config.dim:
            raise RouterError(f"router heads expect {heads.input_dim}-d features; the extractor gives {extractor.config.dim}")
        self.extractor = extractor
        self.heads = heads
        self.calibrator = calibrator
        self.categories = list(categories)
        self.card: dict[str, Any] = dict(card or {})
        #: The per-category prior these heads correct, and the lean back to it for unfamiliar input.
        self.correction = correction

    # ------------------------------------------------------------------ scoring
    def score_features(
        self, features: np.ndarray, questions: Sequence[str] | None = None, labels: Sequence[Any] | None = None
    ) -> tuple[np.ndarray, list[str | None]]:
        """Calibrated P(correct) (n, b) and predicted categories from precomputed feature vectors."""
        probs, cats, _ = self._score_rows(features, questions, labels)
        return probs, cats

    def _score_rows(
        self, features: np.ndarray, questions: Sequence[str] | None, labels: Sequence[Any] | None = None
    ) -> tuple[np.ndarray, list[str | None], np.ndarray]:
        """Probabilities, categories and each row's familiarity weight (1 where there is no correction)."""
        features = np.atleast_2d(features)
        logits, cat_logits = self.heads.forward(features)
        probs = self.calibrator.transform(logits)
        weight = np.ones(probs.shape[0])
        if self.correction is not None and questions is not None:
            probs, weight = self.correction.apply(probs, features, questions, self.backends, labels)
        if cat_logits is not None:
            cats: list[str | None] = [self.categories[i] for i in np.argmax(cat_logits, axis=1)]
        elif questions is not None:
            cats = [classify_question(q) for q in questions]
        else:
            cats = [None] * probs.shape[0]
        return probs, cats, weight

    def _encode(self, image: ImageInput, question: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The question's and the image's features, one after the other on the calling thread.

        Encoding them at once on two threads was no faster on a 2-core CPU: each encoder already uses
        both cores, and four busy threads on two cores cost more than they overlap (docs/router.md has
        the measurements). A photo embedded at upload (``warm``) comes from the cache. Errors of either
        are raised here."""
        extractor = self.extractor
        text = extractor.text_encoder.encode([question])[0]
        if image is None or extractor.config.text_only or extractor.image_features is None:
            return text, None
        return text, extractor.image_vector(image)

    def warm(self, image: ImageInput) -> None:
        """Embed the image now (cached by content), so the decision pays only the question's part."""
        if image is None or self.extractor.config.text_only or self.extractor.image_features is None:
            return
        try:
            self.extractor.image_vector(image)
        except Exception:  # the decision itself will say what is wrong with the image
            return

    def _score(self, image: ImageInput, question: str, **context: Any) -> Scores:
        text, image_vec = self._encode(image, question)
        feats = self.extractor.assemble(text, image_vec)
        labels = context.get("labels")
        probs, cats, weight = self._score_rows(feats[None, :], [question], [labels] if labels else None)
        note = self.correction.note(float(weight[0])) if self.correction is not None else None
        return Scores(probs[0], cats[0], note)

    def score_batch(self, images: Sequence[ImageInput], questions: Sequence[str], **context: Any) -> tuple[np.ndarray, list[str | None]]:
        keys = context.get("image_keys")
        feats = self.extractor.features(images, questions, image_keys=keys)
        return self.score_features(feats, questions)

    def clear_caches(self) -> None:
        """Forget cached text and image features (for cold-latency measurements)."""
        for holder in (self.extractor.text_encoder, self.extractor.image_features):
            cache = getattr(holder, "_cache", None)
            if cache is not None:
                cache.clear()

    def restrict(self, names: Sequence[str]) -> EmbeddingRouter:
        """A copy that chooses only among ``names`` (a subset of this router's backends, in any order)."""
        index = {b.name: i for i, b in enumerate(self.backends)}
        missing = [n for n in names if n not in index]
        if missing:
            raise RouterError(f"router {self.version} was not trained on backend(s) {missing}")
        cols = [index[n] for n in names]
        cal = self.calibrator
        sub_cal = Calibrator(
            cal.method,
            cal.scale[cols],
            cal.bias[cols],
            [cal.knots_x[c] for c in cols] if cal.knots_x else [],
            [cal.knots_y[c] for c in cols] if cal.knots_y else [],
        )
        fallback = self.fallback_backend if self.fallback_backend in names else names[0]
        return type(self)(
            [self.backends[c] for c in cols],
            extractor=self.extractor,
            heads=self.heads.select_backends(cols),
            calibrator=sub_cal,
            categories=self.categories,
            card=self.card,
            correction=self.correction,
            version=self.version,
            lambda_cost=self.lambda_cost,
            min_confidence=self.min_confidence,
            fallback_backend=fallback,
            switch_margin=self.switch_margin if fallback == self.fallback_backend else 0.0,
        )

    def with_costs(self, backends: Sequence[BackendChoice]) -> EmbeddingRouter:
        """Same heads, costs/descriptions/kinds taken from the app's backend list (matched by name)."""
        by_name = {b.name: b for b in backends}
        self.backends = [by_name.get(b.name, b) for b in self.backends]
        return self

    # ------------------------------------------------------------------ persistence
    def state_tensors(self) -> dict[str, np.ndarray]:
        tensors = self.heads.to_tensors()
        tensors.update(self.calibrator.to_tensors())
        if self.correction is not None:
            tensors.update(self.correction.to_tensors())
        return tensors

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            text_only=self.extractor.config.text_only,
            text_encoder=self.extractor.config.text_encoder.get("name"),
            image_embedder=self.extractor.config.image_embedder,
            calibration=self.calibrator.method,
            metrics=self.card.get("metrics", {}),
        )
        return info


__all__ = ["EmbeddingRouter", "HeadWeights"]
