"""Offline "vlm" backend: EfficientNet-Lite0 ImageNet probabilities, mapped onto the user's labels by MiniLM.

There is no CLIP in any registry here (docs/models.md), so zero-shot labels are done in two steps:

1. EfficientNet-Lite0 gives P(class | image) over the 1000 ImageNet classes.
2. Each class spreads its probability over the candidate labels by text similarity: with ``s[l, c]``
   the MiniLM cosine between "a photo of a {label}" and "a photo of a {class}",
   ``w[l | c] = softmax_l(s[l, c] / T)`` (T = 0.05), and ``score(l) = sum_c P(c) * w[l | c]``.

"None of these" is an explicit extra label that every class resembles at a fixed cosine ``tau``
(default 0.6, about the 99th percentile of the cosine between a label and an unrelated ImageNet
class for labels such as cat, rocket, coffee, circle, red). A class whose best label is less similar
than ``tau`` therefore sends most of its probability to "none of these", so its score is the
probability mass on classes that are not near any label. It wins when the image shows something
none of the labels names (scikit-image's astronaut over [cat, dog]).

The classifier can only say "none of these" about labels it could recognise. So the null label is
offered only when at least one label is *covered*: some ImageNet class is near it (cosine >=
``coverage_similarity``, default 0.7; cat 0.88, coffee 0.90, rocket 0.78, dog 0.82, but circle 0.64,
red 0.69, person 0.66). When no label is covered (easy-VQA's shapes), the mass goes to the nearest
labels as in docs/models.md's measurement, which still beats chance. ``none_similarity=None`` turns the
null label off entirely.

With no labels (and none listed in the question) the answer is the top ImageNet classes.
``postprocess`` and friends are pure functions of arrays so they are tested without any model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from backends.base import Backend, BackendError, ModelReply
from backends.labels import dedupe, labels_from_question

if TYPE_CHECKING:
    from backends.efficientnet_lite import ImageClassifier
    from backends.text_encoder import TextEncoder

NONE_LABEL = "none of these"
PROMPT = "a photo of a {}"
DEFAULT_TEMPERATURE = 0.05
DEFAULT_NONE_SIMILARITY = 0.6
DEFAULT_COVERAGE_SIMILARITY = 0.7
DEFAULT_TOP_K = 5


# ----------------------------------------------------------------------------- pure postprocessing
def label_weights(similarity: np.ndarray, temperature: float, none_similarity: float | None) -> np.ndarray:
    """How each class splits its probability over the labels (and "none of these" as the last row).

    ``similarity`` is (labels, classes); the result is (labels [+ 1], classes) with columns summing to 1.
    """
    logits = np.asarray(similarity, dtype=np.float64)
    if none_similarity is not None:
        logits = np.vstack([logits, np.full((1, logits.shape[1]), float(none_similarity))])
    logits = logits / float(temperature)
    logits -= logits.max(axis=0, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=0, keepdims=True)


def offered_none_similarity(
    similarity: np.ndarray, none_similarity: float | None, coverage_similarity: float = DEFAULT_COVERAGE_SIMILARITY
) -> float | None:
    """``none_similarity`` when every label is near at least one class (the classifier covers them all), else None.

    "None of these" is only a fair outcome when the classifier can see every label: if one label has no
    close ImageNet class (a colour, a shape), the mass that label should get lands on "none" instead,
    and a closed-vocabulary question ("what color is the shape?") would always be answered "none of these".
    """
    if none_similarity is None or similarity.size == 0:
        return None
    covered = np.max(similarity, axis=1) >= coverage_similarity
    return none_similarity if bool(np.all(covered)) else None


def rank_labels(
    class_probs: np.ndarray,
    similarity: np.ndarray,
    labels: Sequence[str],
    temperature: float = DEFAULT_TEMPERATURE,
    none_similarity: float | None = DEFAULT_NONE_SIMILARITY,
    coverage_similarity: float = DEFAULT_COVERAGE_SIMILARITY,
) -> list[tuple[str, float]]:
    """Scores of ``labels`` (plus :data:`NONE_LABEL` when offered), summing to 1, sorted best first.

    ``similarity`` is (labels, all classes). If the user's own labels include "none of these", the
    null mass is added to that label.
    """
    real = [i for i, label in enumerate(labels) if label.casefold() != NONE_LABEL.casefold()]
    none_similarity = offered_none_similarity(similarity[real], none_similarity, coverage_similarity)
    weights = label_weights(similarity, temperature, none_similarity)
    scores = weights @ np.asarray(class_probs, dtype=np.float64)
    # Label-prior correction: a label that many of the 1000 classes resemble ("black", "dog") would win
    # on any image. Dividing by each label's share under a uniform class distribution keeps only the
    # evidence this image brings (Bayes with a flat prior over the labels).
    prior = weights.mean(axis=1)
    scores = scores / np.maximum(prior, 1e-12)
    scores = scores / scores.sum()
    named = list(labels) + ([NONE_LABEL] if none_similarity is not None else [])
    merged: dict[str, tuple[str, float]] = {}
    for label, score in zip(named, scores):
        key = label.casefold()
        shown, total = merged.get(key, (label, 0.0))
        merged[key] = (shown, total + float(score))
    return sorted(merged.values(), key=lambda pair: -pair[1])


def top_classes(class_probs: np.ndarray, class_names: Sequence[str], k: int = DEFAULT_TOP_K) -> list[tuple[str, float]]:
    """The ``k`` most probable class names, with duplicate names (ImageNet has two "missile") summed."""
    totals: dict[str, float] = {}
    for index, prob in enumerate(np.asarray(class_probs, dtype=np.float64)):
        totals[class_names[index]] = totals.get(class_names[index], 0.0) + float(prob)
    return sorted(totals.items(), key=lambda pair: -pair[1])[:k]


def postprocess(
    class_probs: np.ndarray,
    class_names: Sequence[str],
    labels: Sequence[str] | None,
    similarity: np.ndarray | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    none_similarity: float | None = DEFAULT_NONE_SIMILARITY,
    top_k: int = DEFAULT_TOP_K,
    coverage_similarity: float = DEFAULT_COVERAGE_SIMILARITY,
) -> ModelReply:
    """The backend's reply: the top label (or class) as text, with every label's score."""
    if labels:
        if similarity is None:
            raise ValueError("label similarities are needed when labels are given")
        scores = rank_labels(class_probs, similarity, labels, temperature, none_similarity, coverage_similarity)
    else:
        scores = top_classes(class_probs, class_names, top_k)
    return ModelReply(text=scores[0][0], label_scores=scores)


def candidate_labels(question: str, labels: Sequence[str] | None) -> list[str]:
    """The labels given, else the options the question lists ("cat or dog?"), else []."""
    if labels:
        return dedupe([str(label).strip() for label in labels if str(label).strip()])
    return labels_from_question(question or "")


# ----------------------------------------------------------------------------- the backend
class OfflineVisionBackend(Backend):
    """EfficientNet-Lite0 + MiniLM zero-shot labels; everything from PyPI, no hub."""

    kind = "vlm"
    family = "offline_vision"

    def __init__(
        self,
        name: str,
        *,
        model_id: str = "",
        licence: str | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        none_similarity: float | None = DEFAULT_NONE_SIMILARITY,
        coverage_similarity: float = DEFAULT_COVERAGE_SIMILARITY,
        top_k: int = DEFAULT_TOP_K,
        weights: str | None = None,
        **base: Any,
    ) -> None:
        super().__init__(
            name,
            model_id=model_id or "efficientnet-lite0 + all-MiniLM-L6-v2",
            licence=licence or "EfficientNet-Lite0: Apache-2.0; all-MiniLM-L6-v2: Apache-2.0",
            **base,
        )
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.temperature = float(temperature)
        self.none_similarity = None if none_similarity is None else float(none_similarity)
        self.coverage_similarity = float(coverage_similarity)
        self.top_k = int(top_k)
        #: A state_dict file for EfficientNet-Lite0; None means the packaged ImageNet weights.
        self.weights = weights
        self._classifier: ImageClassifier | None = None
        self._encoder: TextEncoder | None = None
        self._class_names: tuple[str, ...] = ()
        self._class_embeddings: np.ndarray | None = None

    def _load(self) -> None:
        from backends.devices import resolve_placement
        from backends.efficientnet_lite import imagenet_class_names, shared_classifier
        from backends.text_encoder import shared_text_encoder

        placement = resolve_placement(self.requested_device)
        self._classifier = shared_classifier(self.shared, placement.device, self.weights)
        self._encoder = shared_text_encoder(self.shared, placement.device)
        self._class_names = imagenet_class_names()
        self._class_embeddings = self._shared_class_embeddings(placement.device)
        self.info.device = placement.device
        self.info.quantization = (
            "none: EfficientNet-Lite0 is convolutional (bitsandbytes quantizes nn.Linear only); "
            "MiniLM float32 (shared)"
        )
        self.info.full_precision_layers = ["EfficientNet-Lite0 (all layers)", "MiniLM text encoder (all layers)"]
        self.info.memory_bytes = self._classifier.memory_bytes() + self._encoder.memory_bytes()

    def _shared_class_embeddings(self, device: str) -> np.ndarray:
        prompts = [PROMPT.format(name) for name in self._class_names]
        encoder = self._encoder
        if self.shared is None:
            return encoder.encode(prompts)
        return self.shared.get(f"imagenet-class-prompts:all-MiniLM-L6-v2@{device}", lambda: encoder.encode(prompts))

    def _answer(self, image: Image.Image, question: str, labels: list[str] | None) -> ModelReply:
        analysis = self._classifier.analyse([image])[0]
        candidates = candidate_labels(question, labels)
        similarity = self._similarity(candidates) if candidates else None
        return postprocess(
            analysis.probabilities,
            self._class_names,
            candidates,
            similarity,
            self.temperature,
            self.none_similarity,
            self.top_k,
            self.coverage_similarity,
        )

    def _similarity(self, labels: Sequence[str]) -> np.ndarray:
        label_embeddings = self._encoder.encode([PROMPT.format(label) for label in labels])
        return label_embeddings @ self._class_embeddings.T

    def embed_image(self, image: Image.Image) -> np.ndarray:
        """The image's pooled EfficientNet-Lite0 features: (1280,) float32, L2-normalised (router input)."""
        if not self.load():
            raise BackendError(self.info.error or f"{self.name} is not loaded")
        return self._classifier.analyse([image])[0].embedding
