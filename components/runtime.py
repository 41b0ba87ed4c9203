"""The one flow every surface calls: route -> run every backend -> record, and judge -> record.

The Compare tab, the Annotate tab and the programmatic API all go through :class:`Runtime`; UI
modules only draw and wire events. One Runtime belongs to one running app: it owns the loaded
backends, the worker threads, the store and the active router. Nothing in it is per-user: per-user
state (the current query, the annotator's session) lives in ``gr.State`` in the UI.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from backends.base import MAX_QUESTION_CHARS, Answer, Backend
from backends.images import ImageError, load_image
from backends.labels import labels_from_question, split_label_list
from backends.presets import Preset, load_preset
from backends.registry import build_backends
from backends.run_all import BackendRunner
from backends.shared import SharedModels
from router.base import choices_from_backends
from router.bootstrap_background import BackgroundBootstrap, IdleGate, needs_first_router, should_bootstrap
from router.service import RouterService

log = logging.getLogger("routelens")
#: The repository root: a preset's ``[router] pairs`` paths are relative to it.
ROOT = Path(__file__).resolve().parent.parent

#: Questions longer than this are refused (a page is not a prompt-injection playground).
MAX_QUESTION_INPUT_CHARS = 10_000
MAX_REASON_CHARS = 2000


class InputError(ValueError):
    """Bad input from a person; the message is shown as is."""


class Busy(RuntimeError):
    """No compare slot freed within the wait a caller allowed (the API answers 429)."""


def default_data_dir() -> Path:
    """The folder of the default database (see :func:`data.store.default_db_path`)."""
    from data.store import default_db_path

    return default_db_path().parent


@dataclass(frozen=True)
class AppConfig:
    preset: str = "auto"
    db_path: Path | None = None
    quantize: bool = True
    default_lambda: float = 0.0
    #: Most answers computed at once across all users (the machine has few cores).
    max_concurrent_compares: int = 2
    #: On a preset's first start with no router and no shipped pairs, answer its bootstrap sets in the
    #: background and train a first router (router/bootstrap.py). ``app.py`` turns it on unless
    #: ``--no-bootstrap``; off here, so a Runtime built by a test or a script does only what it is asked.
    bootstrap: bool = False

    @property
    def resolved_db_path(self) -> Path:
        from data.store import default_db_path

        return self.db_path or default_db_path()


@dataclass
class CompareResult:
    """Everything one question produced; ``to_json`` is the ``/compare`` reply."""

    query_id: str | None
    decision: dict[str, Any] | None
    answers: dict[str, Answer] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    #: Backends not asked (routed mode asks only the router's pick); :meth:`Runtime.answer_others` asks them.
    skipped: list[str] = field(default_factory=list)
    #: The prepared input, kept so the skipped backends can answer the very same query later.
    image: Image.Image | None = field(default=None, repr=False)
    question: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "decision": self.decision,
            "answers": {name: _answer_public(a) for name, a in self.answers.items()},
            "labels": self.labels,
            "notices": self.notices,
        }


def _answer_public(answer: Answer) -> dict[str, Any]:
    data = answer.to_json()
    data.pop("backend", None)
    return data


#: Format characters kept: zero-width (non-)joiners hold emoji sequences (👩‍🚀) and Persian/Indic words together.
_KEEP = frozenset("\n\t\u200c\u200d")


def _is_tag(ch: str) -> bool:
    return "\U000e0020" <= ch <= "\U000e007f"


def strip_control(text: str | None) -> str:
    """Drop control and format characters (NUL, ESC, bidi overrides such as U+202E); keep newlines, tabs,
    zero-width joiners and the tag characters of flag emoji (only right after 🏴 or another tag: a lone
    tag character is invisible, and a question made of them would look empty but pass as text)."""
    kept: list[str] = []
    for ch in text or "":
        if ch.isprintable() or ch in _KEEP or (_is_tag(ch) and kept and (kept[-1] == "\U0001f3f4" or _is_tag(kept[-1]))):
            kept.append(ch)
    return "".join(kept)


def clean_question(question: str | None) -> str:
    """Strip control characters, refuse empty or huge questions with a clear message."""
    text = " ".join(strip_control(question).split())
    if not text:
        raise InputError("Please type a question about the image.")
    if len(text) > MAX_QUESTION_INPUT_CHARS:
        raise InputError(
            f"The question is {len(text):,} characters long; please keep it under {MAX_QUESTION_INPUT_CHARS:,}."
        )
    return text[:MAX_QUESTION_CHARS]


def resolve_labels(question: str, labels_text: str | Sequence[str] | None) -> list[str]:
    """Labels a person typed, else the options the question lists, else none."""
    if isinstance(labels_text, (list, tuple)):
        labels = split_label_list(strip_control(",".join(str(x) for x in labels_text)))
    else:
        labels = split_label_list(strip_control(labels_text))
    return labels or labels_from_question(question)


class Runtime:
    """Loaded backends + router + store for one app process."""

    def __init__(self, config: AppConfig, *, preset: Preset | None = None, backends: Sequence[Backend] | None = None) -> None:
        self.config = config
        self.preset = preset or load_preset(config.preset)
        self.shared = SharedModels()
        self.backends: list[Backend] = list(backends) if backends is not None else build_backends(
            self.preset.backends, shared=self.shared, quantize=config.quantize
        )
        self.runner = BackendRunner(self.backends)
        self._compare_slots = threading.BoundedSemaphore(max(1, config.max_concurrent_compares))
        #: Threads that drive a page's question while its handler reports what it waits for
        #: (components.compare_tab.pumped). A pool, not a thread per question: each thread keeps its own
        #: SQLite connection, and one per question would pile up connections for the life of the app.
        self.stream_pool = ThreadPoolExecutor(max_workers=max(2, 4 * config.max_concurrent_compares),
                                              thread_name_prefix="compare-stream")
        self.store, self.store_notice = self._open_store()
        self.router = RouterService(
            backends=lambda: choices_from_backends(self.backends),
            failed_backends=self._failed_backends,
            text_encoder=self._router_text_encoder,
            image_features=self._router_image_features,
            store=self.store,
            versions_dir=config.resolved_db_path.parent / "routers",
            pairs=[ROOT / p for p in self.preset.router.get("pairs", [])],
            default_lambda=config.default_lambda,
        )
        self._loader: threading.Thread | None = None
        #: People's questions in flight; the background bootstrap waits until there are none.
        self.activity = IdleGate()
        self.bootstrap: BackgroundBootstrap | None = None

    # ---------------------------------------------------------------- start-up
    def _open_store(self):
        from data.store import Store, StoreError

        path = self.config.resolved_db_path
        try:
            return Store.open(path), None
        except (StoreError, OSError) as exc:
            log.error("database unavailable: %s", exc)
            return None, f"Judgments cannot be saved: {exc}"

    # ---------------------------------------------------------------- what the router service is given
    def _failed_backends(self) -> set[str]:
        return {b.name for b in self.backends if b.describe().status == "failed"}

    def _router_text_encoder(self) -> Any:
        """MiniLM from the shared pool, so the label mapper and the router load it once."""
        from backends.text_encoder import shared_text_encoder
        from router.features import MiniLMTextEncoder

        return self.shared.get("router:minilm", lambda: MiniLMTextEncoder(model=shared_text_encoder(self.shared)))

    def _router_image_features(self) -> tuple[Callable[[Any], Any], str] | None:
        """The ``embed_image`` of the preset's ``[router] image_features`` backend (loaded), and its name."""
        name = self.preset.router.get("image_features")
        if not name:
            return None
        try:
            backend = self.backend(name)
        except KeyError:
            return None
        if not hasattr(backend, "embed_image") or not backend.load():
            return None
        return backend.embed_image, backend.name

    def start_loading(self) -> threading.Thread:
        """Load every backend and the router in the background; the page is usable meanwhile."""
        if self._loader is None:
            self._loader = threading.Thread(target=self._load_everything, name="loader", daemon=True)
            self._loader.start()
        return self._loader

    def _load_everything(self) -> None:
        for backend in self.runner.load_all():
            info = backend.describe()
            log.info("backend %s: %s (%.1f s)", backend.name, info.status, info.load_time_s or 0.0)
        self.router.ensure_loaded()
        log.info("router: %s", self.router.status())
        self._start_bootstrap()

    def _start_bootstrap(self) -> None:
        """A first router for a preset that has none and ships no pairs, built in the background."""
        if not self.config.bootstrap or self.store is None or self.preset.router.get("pairs"):
            return
        ready = [b.name for b in self.backends if b.describe().status == "ready"]
        if not should_bootstrap(self.router.active, ready, self.store):
            return
        self.bootstrap = BackgroundBootstrap(
            backends=self.backends, preset=self.preset, store=self.store,
            versions_dir=self.router.versions_dir, text_encoder=self._router_text_encoder,
            image_features=self._router_image_features, gate=self.activity, on_trained=self.router.ensure_loaded,
            first_router=needs_first_router(self.router.active, ready),
        )
        self.bootstrap.start()

    def wait_until_loaded(self, timeout_s: float | None = None) -> bool:
        thread = self.start_loading()
        thread.join(timeout_s)
        return not thread.is_alive()

    @property
    def bootstrapping(self) -> bool:
        return self.bootstrap is not None and self.bootstrap.running

    @property
    def loading(self) -> bool:
        return any(b.describe().status in ("not loaded", "loading") for b in self.backends) or not self.router.ready

    def loading_line(self) -> str | None:
        """What a question asked now waits for ("1 of 2 models ready; loading gemma…"), or None."""
        infos = [(b.name, b.describe()) for b in self.backends]
        waiting = [name for name, info in infos if info.status in ("not loaded", "loading")]
        if not waiting and self.router.ready:
            return None
        ready = sum(info.status == "ready" for _, info in infos)
        parts = [f"{ready} of {len(infos)} models ready"]
        if waiting:
            parts.append("loading " + ", ".join(waiting))
        if not self.router.ready:
            parts.append("the router is loading")
        return "Waiting for the models to load: " + "; ".join(parts)

    def backend(self, name: str) -> Backend:
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)

    def device_summary(self) -> str:
        from backends.devices import cuda_available

        if cuda_available():
            import torch

            return f"GPU ({torch.cuda.get_device_name(0)})"
        return f"CPU ({os.cpu_count()} cores)"

    def status_lines(self) -> list[str]:
        lines = [f"Preset **{self.preset.name}** on {self.device_summary()}: {self.preset.reason or self.preset.description}"]
        for backend in self.backends:
            info = backend.describe()
            detail = {
                "ready": f"ready in {info.load_time_s:.1f} s" if info.load_time_s is not None else "ready",
                "failed": f"failed: {info.error}",
            }.get(info.status, info.status + "…")
            lines.append(f"{backend.name} ({info.kind}): {detail}")
        lines.append(f"Router: {self.router.status()}")
        bootstrap_line = self.bootstrap.status_line() if self.bootstrap is not None else None
        if bootstrap_line:
            lines.append(bootstrap_line)
        if self.store_notice:
            lines.append(self.store_notice)
        return lines

    # ---------------------------------------------------------------- the flow
    def prepare(self, image: Any, question: str | None, labels_text: str | Sequence[str] | None) -> tuple[Image.Image, str, list[str]]:
        """Validate input: raises :class:`InputError` (or ImageError) with a message for the person."""
        clean = clean_question(question)
        try:
            picture = load_image(image)
        except ImageError as exc:
            raise InputError(str(exc)) from exc
        return picture, clean, resolve_labels(clean, labels_text)

    def warm_image(self, image: Any) -> None:
        """Embed a just-uploaded image for the router while the person types the question: the decision
        then pays only for the question. The image is decoded exactly as :meth:`prepare` will decode it
        (the router's cache is keyed by pixels). Never raises: a bad image is reported at upload and Ask."""
        try:
            self.router.warm(load_image(image))
        except Exception as exc:
            log.debug("not warmed: %s", exc)

    def route(self, image: Image.Image, question: str, lambda_cost: float | None = None) -> dict[str, Any]:
        """The active router's decision (JSON) for a prepared image and question."""
        return self.router.decide(image, question, lambda_cost=lambda_cost)

    def compare(
        self,
        image: Any,
        question: str | None,
        labels_text: str | Sequence[str] | None = None,
        *,
        lambda_cost: float | None = None,
        source: str = "compare",
        session_id: str | None = None,
        item_id: str | None = None,
        category: str | None = None,
        only_pick: bool = False,
    ) -> Iterator[tuple[str, Any]]:
        """Yield ("start", CompareResult), ("decision", dict), then ("answer", Answer) per backend asked.

        ``only_pick``: routed mode; only the router's pick answers, the others are listed in
        ``result.skipped`` (:meth:`answer_others` asks them later). Raises InputError before anything is
        recorded when the input is bad.
        """
        picture, clean, labels = self.prepare(image, question, labels_text)
        result = CompareResult(query_id=None, decision=None, labels=labels, image=picture, question=clean)
        if len(clean) < len(" ".join(strip_control(question).split())):
            result.notices.append(f"The question was shortened to {MAX_QUESTION_CHARS} characters.")
        with self.activity.busy(), self._compare_slots:
            result.query_id = self._record(
                "query", lambda: self._record_query(picture, clean, labels, source, session_id, item_id, category), result
            )
            yield "start", result
            result.decision = self.route(picture, clean, lambda_cost)
            if result.query_id:
                self._record("decision", lambda: self.store.record_decision(result.query_id, result.decision), result)
            yield "decision", result.decision
            only = [result.decision["choice"]] if only_pick else None
            result.skipped = [b.name for b in self.backends if only is not None and b.name not in only]
            for answer in self._stream_recorded(result, only):
                yield "answer", answer
        yield "done", result

    @contextmanager
    def compare_slot(self, timeout_s: float | None = None) -> Iterator[None]:
        """One of the app's compare slots, shared by the page and the API, held while answering; raises
        :class:`Busy` when none frees within ``timeout_s`` (None: wait)."""
        if not self._compare_slots.acquire(timeout=timeout_s):
            raise Busy("the server is answering as many questions as it can; retry shortly")
        try:
            with self.activity.busy():
                yield
        finally:
            self._compare_slots.release()

    def answer_one(
        self, picture: Image.Image, question: str, labels: Sequence[str], backend: str, *,
        decision: dict[str, Any] | None = None, source: str = "api",
    ) -> tuple[CompareResult, Answer]:
        """Record a prepared query (and the decision that chose ``backend``), ask that one backend, record
        its answer. The caller holds a :meth:`compare_slot`. Store failures become notices."""
        result = CompareResult(query_id=None, decision=decision, labels=list(labels), image=picture, question=question)
        result.query_id = self._record(
            "query", lambda: self._record_query(picture, question, labels, source, None, None, None), result)
        if result.query_id and decision is not None:
            self._record("decision", lambda: self.store.record_decision(result.query_id, decision), result)
        answer = next(iter(self._stream_recorded(result, [backend])))
        return result, answer

    def answer_others(self, result: CompareResult) -> Iterator[Answer]:
        """Ask the backends a routed query skipped, for the same query (recorded under its id); yields
        each answer as it comes and empties ``result.skipped``."""
        names, result.skipped = list(result.skipped), []
        if not names or result.image is None:
            return
        with self.activity.busy(), self._compare_slots:
            yield from self._stream_recorded(result, names)

    def _stream_recorded(self, result: CompareResult, only: Sequence[str] | None) -> Iterator[Answer]:
        for answer in self.runner.stream(result.image, result.question, result.labels or None, only=only):
            result.answers[answer.backend] = answer
            if result.query_id:
                self._record("answer", lambda a=answer: self.store.record_answer(result.query_id, a.backend, a.to_json()), result)
            yield answer

    def median_latencies(self) -> dict[str, float]:
        """backend -> median seconds of its recent answers here ({} without a store, or when it fails)."""
        if self.store is None:
            return {}
        try:
            return self.store.median_latencies()
        except Exception as exc:  # a figure on the card is never worth a broken page
            log.warning("could not read latencies: %s", exc)
            return {}

    def compare_all(self, image: Any, question: str | None, labels_text: Any = None, **kwargs: Any) -> CompareResult:
        """Run the whole flow and return its result (the "start" event's object, filled in as it goes)."""
        events = self.compare(image, question, labels_text, **kwargs)
        _, result = next(events)
        for _ in events:
            pass
        return result

    def _record_query(self, picture, question, labels, source, session_id, item_id, category) -> str:
        sha = self.store.put_image(picture)
        return self.store.record_query(
            image_sha256=sha, question=question, labels=labels or None, source=source,
            session_id=session_id, item_id=item_id, category=category,
        )

    def _record(self, what: str, action, result: CompareResult):
        """Run a store write; a failure becomes a notice, never a broken page."""
        if self.store is None:
            if self.store_notice and self.store_notice not in result.notices:
                result.notices.append(self.store_notice)
            return None
        try:
            return action()
        except Exception as exc:  # the answers still reach the person
            log.error("could not record %s: %s", what, exc)
            message = f"This {what} was not recorded: {exc}"
            if message not in result.notices:
                result.notices.append(message)
            return None

    def judge(
        self,
        query_id: str,
        verdicts: dict[str, Any],
        *,
        best: str | None = None,
        true_answer: str | None = None,
        reason: str | None = None,
        annotator: str = "anonymous",
        session_id: str | None = None,
        client_key: str | None = None,
        blind: bool = False,
        guidelines_id: int | None = None,
        category: str | None = None,
        replaces: int | None = None,
    ) -> int:
        """Store a judgment; returns rows saved. Raises ValueError (bad input) or JudgmentNotSaved.

        ``blind``: the judge did not see which model gave which answer; such a judgment is stored as not
        anonymous when an answer names its own model (:meth:`identity_flag`). ``guidelines_id``: the
        guidelines version the judge was shown. ``category``: the task category the judge filed the
        question under (one of :data:`router.categories.CATEGORIES`), replacing the router's guess.
        ``replaces``: the id of this annotator's earlier judgment of the query that this one changes (Undo);
        that row is kept, marked replaced."""
        if self.store is None:
            from data.store import JudgmentNotSaved

            raise JudgmentNotSaved(self.store_notice or "the database is unavailable")
        if reason and len(reason) > MAX_REASON_CHARS:
            raise ValueError(f"The reason is {len(reason):,} characters long; keep it under {MAX_REASON_CHARS:,}.")
        if category:
            from router.categories import CATEGORIES

            if category not in CATEGORIES:
                raise ValueError(f"unknown task category {category!r}; one of {', '.join(CATEGORIES)}")
            self.store.set_query_category(query_id, category)
        return self.store.record_judgment(
            query_id=query_id,
            verdicts=verdicts,
            best=best or None,
            true_answer=(true_answer or "").strip() or None,
            reason=(reason or "").strip() or None,
            annotator=(annotator or "anonymous").strip()[:100] or "anonymous",
            session_id=session_id,
            client_key=client_key or uuid.uuid4().hex,
            blind=bool(blind),
            flag_reason=self.identity_flag(query_id) if blind else None,
            guidelines_id=guidelines_id,
            replaces=replaces,
        )

    def identity_flag(self, query_id: str) -> str | None:
        """Why a blind judgment of this query would not be anonymous: an answer that names its own model
        (see :mod:`components.blind`); None when none does or the query is unknown."""
        from components.blind import self_identification

        if self.store is None:
            return None
        try:
            stored = self.store.query(query_id)
        except (KeyError, ValueError):
            return None
        answers = {name: a.get("text") for name, a in stored["answers"].items() if not a.get("error")}
        infos = {b.name: b.describe() for b in self.backends}
        return self_identification(answers, infos, stored.get("labels") or [])

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"preset": self.preset.name, "router": self.router.describe()}
        if self.store is None:
            out["error"] = self.store_notice
            return out
        out.update(self.store.stats())
        # No server paths in what clients see: they leak the layout, and gradio_client tries to
        # download any string that looks like a served file.
        out["router_versions"] = [
            {k: v for k, v in row.items() if k != "path"} for row in self.store.router_versions()
        ]
        return out

    def close(self) -> None:
        if self.bootstrap is not None:
            self.bootstrap.stop()
        self.runner.close()
        self.stream_pool.shutdown(wait=False, cancel_futures=True)
        if self.store is not None:
            self.store.close()

