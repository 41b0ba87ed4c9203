"""Test doubles of backends (tests only): deterministic, slow, failing and hanging ones."""

from __future__ import annotations

import threading
import time

from backends.base import Backend, ModelReply


class EchoBackend(Backend):
    """Answers with the first candidate label, or a fixed word; optional delay."""

    family = "test_echo"

    def __init__(self, name: str, *, delay_s: float = 0.0, word: str = "circle", kind: str = "vlm", **kw) -> None:
        super().__init__(name, **kw)
        self.delay_s = delay_s
        self.word = word
        self.kind = kind
        self.info.kind = kind
        self.calls = 0

    def _load(self) -> None:
        self.info.model_id = f"echo/{self.word}"

    def _answer(self, image, question, labels):
        self.calls += 1
        time.sleep(self.delay_s)
        if labels:
            return ModelReply(text=labels[0], label_scores=[(labels[0], 1.0)] + [(other, 0.0) for other in labels[1:]])
        return ModelReply(text=self.word)


class RaisingBackend(Backend):
    family = "test_raise"

    def __init__(self, name: str, *, exc: BaseException | None = None, kind: str = "vlm", **kw) -> None:
        super().__init__(name, **kw)
        self.exc = exc or RuntimeError("boom")
        self.kind = kind
        self.info.kind = kind

    def _load(self) -> None:
        pass

    def _answer(self, image, question, labels):
        raise self.exc


class FailingLoadBackend(Backend):
    family = "test_load_fail"

    def _load(self) -> None:
        raise FileNotFoundError("weights not found at /nowhere/model.safetensors")

    def _answer(self, image, question, labels):  # pragma: no cover
        raise AssertionError("never called")


class HangingBackend(Backend):
    """Blocks until released (or 30 s), to test per-backend timeouts."""

    family = "test_hang"

    def __init__(self, name: str, **kw) -> None:
        super().__init__(name, **kw)
        self.release = threading.Event()

    def _load(self) -> None:
        pass

    def _answer(self, image, question, labels):
        self.release.wait(30)
        return ModelReply(text="late")
