"""Ask every backend at once and hand back each answer as soon as it is ready.

A backend that raises, fails to load or outlives its timeout yields an :class:`Answer` with
``error`` set; the others go on. A timed-out call cannot be killed (Python threads cannot be), so
its wait ends and its thread finishes in the background; the runner's pool is sized so a hung
backend does not starve the others.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from PIL import Image

from backends.base import Answer, Backend


class BackendRunner:
    """Owns the worker threads for one set of backends (one per app, never per module)."""

    def __init__(self, backends: Sequence[Backend], *, workers_per_backend: int = 2) -> None:
        self.backends = list(backends)
        # One pool per backend: calls stuck in a hung backend can only use up that backend's workers,
        # never the others' (a shared pool filled with stuck calls made every backend wait).
        self._pools = {
            id(backend): ThreadPoolExecutor(max_workers=max(1, workers_per_backend), thread_name_prefix=f"backend-{backend.name}")
            for backend in self.backends
        }

    def load_all(self) -> Iterator[Backend]:
        """Load every backend concurrently, yielding each as it finishes (ready or failed)."""
        futures = {self._pools[id(backend)].submit(backend.load): backend for backend in self.backends}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield futures[future]

    def stream(
        self,
        image: Image.Image,
        question: str,
        labels: Sequence[str] | None = None,
        *,
        only: Sequence[str] | None = None,
    ) -> Iterator[Answer]:
        """Yield one Answer per backend, in the order they finish."""
        chosen = [b for b in self.backends if only is None or b.name in only]
        start = time.perf_counter()
        futures: dict[Future[Answer], Backend] = {
            self._pools[id(backend)].submit(backend.answer, image, question, labels): backend for backend in chosen
        }
        pending = set(futures)
        while pending:
            now = time.perf_counter() - start
            deadline = min(futures[f].timeout_s for f in pending) - now
            done, pending = wait(pending, timeout=max(0.0, deadline), return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
            elapsed = time.perf_counter() - start
            for future in [f for f in pending if elapsed >= futures[f].timeout_s]:
                pending.discard(future)
                future.cancel()  # still queued behind earlier stuck calls: never run it
                backend = futures[future]
                yield Answer(
                    backend=backend.name,
                    error=f"timed out after {backend.timeout_s:g} s (the backend is still busy; try again later)",
                    latency_s=elapsed,
                )

    def answer_all(self, image: Image.Image, question: str, labels: Sequence[str] | None = None) -> dict[str, Answer]:
        """All answers at once, keyed by backend name, in preset order."""
        got = {answer.backend: answer for answer in self.stream(image, question, labels)}
        return {b.name: got[b.name] for b in self.backends if b.name in got}

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


def run_all(
    backends: Sequence[Backend], image: Image.Image, question: str, labels: Sequence[str] | None = None
) -> Iterator[Answer]:
    """One-shot helper: stream the answers of ``backends`` with a runner that lives for this call."""
    runner = BackendRunner(backends)
    try:
        yield from runner.stream(image, question, labels)
    finally:
        runner.close()
