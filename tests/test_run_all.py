"""run_all streams answers as they finish; one failing, hanging or OOM backend never stops the rest."""

from __future__ import annotations

import threading
import time

from PIL import Image

from backends.base import Answer
from backends.run_all import BackendRunner, run_all
from tests.doubles import EchoBackend, FailingLoadBackend, HangingBackend, RaisingBackend

IMAGE = Image.new("RGB", (32, 32))


def test_answers_stream_in_finishing_order() -> None:
    slow = EchoBackend("slow", delay_s=0.6)
    fast = EchoBackend("fast", delay_s=0.0)
    order = [a.backend for a in run_all([slow, fast], IMAGE, "what shape?")]
    assert order == ["fast", "slow"]


def test_backends_answer_at_the_same_time() -> None:
    """Every backend is inside its answer at once (a structural check, not a timing threshold)."""
    inside = threading.Barrier(3, timeout=10)

    class Meeting(EchoBackend):
        def _answer(self, image, question, labels):
            inside.wait()  # raises BrokenBarrierError unless all three are answering together
            return super()._answer(image, question, labels)

    answers = list(run_all([Meeting(f"b{i}") for i in range(3)], IMAGE, "q"))
    assert [a.error for a in answers] == [None, None, None]


def test_failures_are_answers_not_exceptions() -> None:
    backends = [
        EchoBackend("good"),
        RaisingBackend("raises"),
        RaisingBackend("oom", exc=MemoryError("CUDA out of memory. Tried to allocate 2 GiB")),
        FailingLoadBackend("no-weights"),
    ]
    answers = {a.backend: a for a in run_all(backends, IMAGE, "q", ["a", "b"])}
    assert answers["good"].ok and answers["good"].text == "a"
    assert answers["raises"].error == "RuntimeError: boom"
    assert answers["oom"].error.startswith("out of memory")
    assert "could not load" in answers["no-weights"].error and "weights not found" in answers["no-weights"].error
    assert backends[3].describe().status == "failed"


def test_hanging_backend_times_out_and_others_answer() -> None:
    hang = HangingBackend("hang", timeout_s=0.5)
    good = EchoBackend("good")
    runner = BackendRunner([hang, good])
    try:
        start = time.perf_counter()
        answers = {a.backend: a for a in runner.stream(IMAGE, "q")}
        assert time.perf_counter() - start < 20  # the hung call would block for 30 s
        assert answers["good"].ok
        assert "timed out after 0.5 s" in answers["hang"].error
        # the runner still serves the next question while the hung call finishes in the background
        assert runner.answer_all(IMAGE, "q2", None)["good"].ok
    finally:
        hang.release.set()
        runner.close()


def test_load_happens_once_under_concurrency() -> None:
    counter = {"n": 0}

    class Counting(EchoBackend):
        def _load(self) -> None:
            counter["n"] += 1
            time.sleep(0.2)

    backend = Counting("c")
    runner = BackendRunner([backend], workers_per_backend=4)
    try:
        for _ in range(4):
            runner.answer_all(IMAGE, "q")
        assert counter["n"] == 1
    finally:
        runner.close()


def test_answer_json_shape() -> None:
    answer = Answer(backend="b", text="cat", label_scores=[("cat", 0.9), ("dog", 0.1)], latency_s=0.123456)
    data = answer.to_json()
    assert data == {"backend": "b", "text": "cat", "label_scores": [["cat", 0.9], ["dog", 0.1]], "latency_s": 0.1235, "error": None}


def test_long_question_and_many_labels_are_capped() -> None:
    seen = {}

    class Spy(EchoBackend):
        def _answer(self, image, question, labels):
            seen["q"], seen["labels"] = question, labels
            return super()._answer(image, question, labels)

    Spy("spy").answer(IMAGE, "x" * 100_000, [f"l{i}" for i in range(10_000)])
    assert len(seen["q"]) == 2000 and len(seen["labels"]) == 200
