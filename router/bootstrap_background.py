"""The app's first router, built in the background: :class:`BackgroundBootstrap` runs
:class:`router.bootstrap.BootstrapRun` over the preset's sets in a daemon thread, then trains and activates
a version; :class:`IdleGate` lets it yield to people's questions.

``components/runtime.py`` starts it after the backends and the router have loaded, when the preset ships
no pairs (``[router] pairs`` absent), ``AppConfig.bootstrap`` is on (``app.py`` turns it on unless
``--no-bootstrap``) and :func:`should_bootstrap` says so: the router served is the category rule or does
not know every backend that loaded, or an earlier start's bootstrap may be unfinished (the app was closed
mid-run, and the first start's router training took the partial pairs). Meanwhile the category rule decides.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from router.bootstrap import BootstrapRun, bootstrap_specs, held_out_keys, load_items, stored_keys, train_first_router

log = logging.getLogger("routelens")


class IdleGate:
    """Counts the questions people are having answered; the background bootstrap waits for none."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = 0
        #: Threads held in :meth:`wait_idle` right now (tests wait for it instead of sleeping).
        self.waiting = 0

    @contextmanager
    def busy(self) -> Iterator[None]:
        with self._cond:
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    @property
    def is_busy(self) -> bool:
        return self._busy > 0

    def wait_idle(self, stop: threading.Event | None = None, poll_s: float = 0.5) -> None:
        """Return once no question is being answered (or ``stop`` is set)."""
        with self._cond:
            self.waiting += 1
            try:
                while self._busy and not (stop is not None and stop.is_set()):
                    self._cond.wait(poll_s)
            finally:
                self.waiting -= 1


class BackgroundBootstrap:
    """The app's first router: a daemon thread answers the preset's sets (:func:`bootstrap_specs`), then trains
    and activates a version.

    It yields to people's questions: before each item it waits until no question is being answered
    (:class:`IdleGate`), and it asks the backends on threads of its own, so a person's call never queues
    behind one of its calls and is never kept from a compare slot. A question that arrives meanwhile
    starts at once and shares the CPU with at most the one item in flight. ``on_trained`` hot-swaps the
    new version in (the router service's ``ensure_loaded``).
    """

    def __init__(
        self,
        *,
        backends: Sequence[Any],
        preset: Any,
        store: Any,
        versions_dir: str | Path,
        text_encoder: Callable[[], Any],
        image_features: Callable[[], tuple[Callable[[Any], Any], str] | None],
        gate: IdleGate,
        on_trained: Callable[[], None],
        first_router: bool = True,
        held_out_path: Path | None = None,
    ) -> None:
        """``first_router``: the app serves no learned router for these backends yet; when False (resuming an
        earlier start's run) a run that finds every item stored, or stores nothing new, ends quietly."""
        self.backends = list(backends)
        self.preset = preset
        self.store = store
        self.versions_dir = Path(versions_dir)
        self._text_encoder = text_encoder
        self._image_features = image_features
        self.gate = gate
        self.on_trained = on_trained
        self.held_out_path = held_out_path
        self.first_router = first_router
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._run: BootstrapRun | None = None
        self.state = "starting"
        self.result: str | None = None
        self.warnings: list[str] = []

    def start(self) -> threading.Thread:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="router-bootstrap", daemon=True)
            self._thread.start()
        return self._thread

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout_s: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout_s)
        return not self.running

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the run after the item in flight (its pairs are kept; the next start resumes)."""
        self._stop.set()
        self.join(timeout_s)

    def _main(self) -> None:
        try:
            self.state = "reading the sets"
            items = load_items(bootstrap_specs(self.preset), strict=False, warn=self.warnings.append)
            if not self.first_router and self._all_stored(len(items)):
                self.state = "done"  # an earlier start finished it: nothing to say
                return
            self._run = BootstrapRun(
                self.backends, items, self.store, held_out=held_out_keys(self.held_out_path),
                before_item=lambda: self.gate.wait_idle(self._stop), stop=self._stop,
            )
            self.state = "answering"
            stats = self._run.run()
            if stats.interrupted:
                self.state, self.result = "stopped", "stopped; the next start resumes"
                return
            if not self.first_router and stats.pairs_stored == 0:
                self.state = "done"
                return
            self.state = "training"
            outcome = train_first_router(
                self.store, self.versions_dir, self.backends,
                text_encoder=self._text_encoder(), image_features=self._image_features(),
            )
            if outcome.promoted:
                self.on_trained()
            verdict = "is active" if outcome.promoted else f"was saved, not promoted ({outcome.reason})"
            self.state = "done"
            self.result = f"version {outcome.version}, trained on the pairs of {stats.done} items, {verdict}"
            log.info("router bootstrap: %s", self.result)
        except Exception as exc:  # the app goes on with the category rule
            log.exception("router bootstrap failed")
            self.state, self.result = "failed", f"not built: {exc}"

    def _all_stored(self, n_items: int) -> bool:
        ready = [b.name for b in self.backends if b.describe().status == "ready"]
        stored = stored_keys(self.store, ready)
        return bool(ready) and all(sum(1 for _, b in stored if b == name) >= n_items for name in ready)

    def status_line(self) -> str | None:
        """One line for the status panel (None when a resumed run found nothing to do)."""
        if self.state == "answering" and self._run is not None:
            stats = self._run.stats
            pace = ""
            if stats.seconds_per_item is not None:
                left = (stats.total - stats.done) * stats.seconds_per_item
                pace = f", {stats.seconds_per_item:.1f} s per item, about {max(1, round(left / 60))} min left"
            paused = "; paused while questions are answered" if self.gate.is_busy else ""
            return (
                f"First router: answering the bootstrap sets in the background, {stats.done}/{stats.total} items"
                f"{pace}{paused}; the category rule decides meanwhile"
            )
        if self.state == "training":
            return "First router: training on the bootstrap pairs; the category rule decides meanwhile"
        if self.result is not None:
            return f"First router: {self.result}"
        if self.state == "done":
            return None
        return f"First router: {self.state}"


def needs_first_router(router: Any, backend_names: Sequence[str]) -> bool:
    """True when the router the app serves is the category rule or does not know every one of ``backend_names``."""
    if getattr(router, "kind", "category_rule") == "category_rule":
        return True
    known = set(getattr(router, "backend_names", []) or [])
    return not set(backend_names) <= known


def should_bootstrap(router: Any, backend_names: Sequence[str], store: Any) -> bool:
    """A first router is needed (:func:`needs_first_router`), or an earlier start stored bootstrap pairs for
    these backends, so its run may be unfinished (the thread checks, and ends quietly when it is not)."""
    return needs_first_router(router, backend_names) or bool(backend_names and stored_keys(store, backend_names))


__all__ = ["BackgroundBootstrap", "IdleGate", "needs_first_router", "should_bootstrap"]
