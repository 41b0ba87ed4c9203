"""The backend contract: what every model family implements and what the rest of RouteLens sees.

A family subclasses :class:`Backend` and writes two methods, ``_load`` and ``_answer``. The base class
owns everything families must not get wrong on their own: loading exactly once (thread-safe), timing,
turning any exception (out-of-memory included) into an :class:`Answer` with ``error`` set, and the
``describe()`` card the UI shows. ``answer()`` never raises.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from PIL import Image

KINDS: tuple[str, ...] = ("vlm", "vlm+llm")

#: Longest question any backend is given; longer ones are cut (and the UI says so).
MAX_QUESTION_CHARS = 2000
#: Most candidate labels any backend ranks.
MAX_LABELS = 200


@dataclass(frozen=True)
class Answer:
    """One backend's reply to one question. ``label_scores`` is sorted best first."""

    backend: str
    text: str = ""
    label_scores: list[tuple[str, float]] | None = None
    latency_s: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.label_scores is not None:
            data["label_scores"] = [[label, round(float(score), 6)] for label, score in self.label_scores]
        data["latency_s"] = round(self.latency_s, 4)
        return data


@dataclass
class ModelReply:
    """What a family's ``_answer`` returns; the base class adds timing and the backend name."""

    text: str
    label_scores: list[tuple[str, float]] | None = None


@dataclass
class BackendInfo:
    """The card shown in each answer panel and by ``python -m backends list``."""

    name: str
    kind: str
    family: str
    model_id: str
    status: str  # "not loaded" | "loading" | "ready" | "failed"
    device: str = "cpu"
    quantization: str = "none"
    full_precision_layers: list[str] = field(default_factory=list)
    memory_bytes: int | None = None
    load_time_s: float | None = None
    cost: float = 0.0
    error: str | None = None
    licence: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def memory_mb(self) -> float | None:
        return None if self.memory_bytes is None else self.memory_bytes / 2**20


#: Serialises local model loads in this process (see ``Backend.serialize_load``). A lock, not data.
_PROCESS_LOAD_LOCK = threading.Lock()


class BackendError(RuntimeError):
    """A failure with a message fit to show a person (no stack trace needed)."""


def describe_exception(exc: BaseException) -> str:
    """One line a person can act on, for any exception a model may raise."""
    text = str(exc).strip() or exc.__class__.__name__
    lowered = text.lower()
    if isinstance(exc, MemoryError) or "out of memory" in lowered or exc.__class__.__name__ == "OutOfMemoryError":
        return f"out of memory: {text.splitlines()[0][:300]}"
    if isinstance(exc, BackendError):
        return text
    return f"{exc.__class__.__name__}: {text.splitlines()[0][:300]}"


class Backend(ABC):
    """Base class of every model family.

    Subclasses set ``kind`` and ``family`` and implement ``_load`` (build the model, fill
    ``self.info`` fields such as ``model_id``/``quantization``/``memory_bytes``) and ``_answer``.
    Options come from the preset file as keyword arguments, so adding a backend is a config change.
    """

    kind: ClassVar[str] = "vlm"
    family: ClassVar[str] = "base"
    #: Seconds after which a failed load is tried again (None: never). A remote server that was down
    #: at start-up may come back; a local model whose weights are missing will not.
    retry_failed_load_after_s: float | None = None
    #: Local models load one at a time per process: transformers' lazy imports are not thread-safe
    #: (two threads importing it at once fail with "cannot import name ..."), and two loads on the
    #: same cores are no faster than one after the other. Remote backends only open a connection.
    serialize_load: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        *,
        model_id: str = "",
        quantize: bool = True,
        device: str = "auto",
        cost: float = 0.0,
        timeout_s: float = 120.0,
        licence: str | None = None,
        shared: Any | None = None,
    ) -> None:
        self.name = name
        self.quantize = quantize
        self.requested_device = device
        self.cost = float(cost)
        self.timeout_s = float(timeout_s)
        #: A ``backends.shared.SharedModels`` pool: models that several backends use are loaded once.
        self.shared = shared
        self.info = BackendInfo(
            name=name,
            kind=self.kind,
            family=self.family,
            model_id=model_id,
            status="not loaded",
            cost=self.cost,
            licence=licence,
        )
        self._load_lock = threading.Lock()
        self._loaded = False
        self._failed_at: float | None = None

    # ------------------------------------------------------------------ loading
    def load(self) -> bool:
        """Load the model once; safe to call from many threads. Returns True when ready."""
        if self._loaded and not self._should_retry_load():
            return self.info.status == "ready"
        with self._load_lock:
            if self._loaded and not self._should_retry_load():
                return self.info.status == "ready"
            self.info.status = "loading"
            start = time.perf_counter()
            try:
                if self.serialize_load:
                    with _PROCESS_LOAD_LOCK:
                        self._load()
                else:
                    self._load()
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self.info.status = "failed"
                self.info.error = f"could not load: {describe_exception(exc)}"
                self._failed_at = time.monotonic()
                logging.getLogger("routelens").warning("backend %s failed to load", self.name, exc_info=True)
            else:
                self.info.status = "ready"
                self.info.error = None
            finally:
                self.info.load_time_s = round(time.perf_counter() - start, 3)
                self._loaded = True
        return self.info.status == "ready"

    def _should_retry_load(self) -> bool:
        return (
            self.retry_failed_load_after_s is not None
            and self.info.status == "failed"
            and self._failed_at is not None
            and time.monotonic() - self._failed_at >= self.retry_failed_load_after_s
        )

    @abstractmethod
    def _load(self) -> None:
        """Build the model and fill ``self.info``. Raise with a clear message when it cannot."""

    # ---------------------------------------------------------------- answering
    def answer(self, image: Image.Image, question: str, labels: Sequence[str] | None = None) -> Answer:
        """Answer one question about one image. Never raises: failures come back in ``Answer.error``."""
        start = time.perf_counter()
        if not self.load():
            return Answer(backend=self.name, error=self.info.error, latency_s=time.perf_counter() - start)
        clean_labels = list(labels)[:MAX_LABELS] if labels else None
        try:
            reply = self._answer(image, question[:MAX_QUESTION_CHARS], clean_labels)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._after_failure(exc)
            return Answer(backend=self.name, error=describe_exception(exc), latency_s=time.perf_counter() - start)
        return Answer(
            backend=self.name,
            text=reply.text,
            label_scores=reply.label_scores,
            latency_s=time.perf_counter() - start,
        )

    @abstractmethod
    def _answer(self, image: Image.Image, question: str, labels: list[str] | None) -> ModelReply:
        """Run the model. ``image`` is RGB and already size-capped; ``labels`` is None or non-empty."""

    def _after_failure(self, exc: BaseException) -> None:
        """Free what a failed call left behind (CUDA cache after an out-of-memory error)."""
        if "out of memory" in str(exc).lower():
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:
                pass

    def describe(self) -> BackendInfo:
        return self.info

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, status={self.info.status!r})"
