"""Annotation sessions: items in the order that teaches the router fastest, every backend answers,
keyboard verdicts, resume later, undo.

The queue's order is the strategy the replay simulator measured best (:mod:`components.annotate_order`),
with a share of random picks; every 20 saved judgments a background incremental retrain re-ranks the
session's pending items.

A session may be blind (the default for sessions started here: panels are "Model A", "Model B", ...
until each judgment is saved) and may ask for k judgments per item: others join it from the session
chooser, the store hands each item to annotators who have not judged it until it has k
(:meth:`data.store.Store.claim_item`), and later annotators of an item judge the answers the first one's
request produced (the same query), so their verdicts can be compared. Guidelines show in a collapsible
panel and each judgment records their version.

The keys (:data:`components.theme.SHORTCUTS_JS`) click the page's own controls, so the keyboard and the
mouse do the same thing. *Undo* reopens the annotator's previous item with their saved judgment; saving
it again stores a new judgment and marks the old one replaced (statistics and training read only the
judgments not replaced). :func:`remember_name` keeps the annotator's name in the browser.
"""

from __future__ import annotations

import html
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import gradio as gr

from backends.base import Answer
from backends.scoring import score_answer
from components import answer_grid, judge_bar
from components.annotate_order import STRATEGY_WORDS, QueueRefresher, is_learned, measured_strategy, order_items, refreshed_order
from components.annotate_study import (
    NEW_SESSION,
    guidelines_label,
    progress_html,
    resolve_guidelines,
    session_choices,
)
from components.blind import panel_label, shuffled
from components.compare_tab import CompareView, QueryState, client_key
from components.runtime import InputError, Runtime, default_data_dir
from data.datasets import DatasetError, EvalItem, load_eval_items

log = logging.getLogger("routelens")

BUILTIN_DATASETS = {
    "Example photos (10)": str(Path(__file__).resolve().parent.parent / "data" / "examples" / "examples.jsonl"),
    "easy-VQA test (200)": "easyvqa:test:200",
    "easy-VQA train (200)": "easyvqa:train:200",
}
#: The keys, as the page shows them (the script is components.theme.SHORTCUTS_JS).
SHORTCUT_HELP = (
    "<div class='rl-keys' id='ann-keys'>Keys: <kbd>1</kbd>–<kbd>9</kbd> select backend N (outlined) · "
    "then <kbd>c</kbd> correct · <kbd>w</kbd> wrong · <kbd>s</kbd> skip (unsure) · "
    "<kbd>t</kbd> tie · <kbd>a</kbd> all wrong · <kbd>Enter</kbd> save &amp; next · "
    "<kbd>n</kbd> skip item · <kbd>u</kbd> undo (previous item) · <kbd>Esc</kbd> leave a text box</div>"
)
#: Most panels a page shows keys for (1-9).
MAX_KEYED_PANELS = 9
#: The name box's value in the browser's localStorage (gr.BrowserState; the name is not a secret, the
#: fixed key and "secret" only keep it readable across server restarts).
NAME_STORAGE_KEY = "routelens-annotator-name"


def _annotate_css(panels: int) -> str:
    """The tab's compact layout, the selected backend's outline (keys 1-9: ``data-rl-selected`` on
    ``#annotate-root``, panel 1 when none was chosen) and each panel's key number."""
    rules = [
        # tall enough that Start can scroll the tab to the top of the window whatever the item's size
        "#annotate-root {min-height: calc(100vh - 64px);}",
        "#annotate-root .rl-panel {min-height: 0; padding: 8px 12px;}",
        "#annotate-root .rl-answer {font-size: 1.08rem; margin: 4px 0;}",
        "#annotate-root .rl-scores {font-size: 0.8rem; margin: 2px 0;}",
        "#annotate-root .rl-verdict {padding-top: 4px !important; padding-bottom: 4px !important;}",
        "#ann-question .prose {font-size: 1.12rem !important;} #ann-question p, #ann-reference p {margin: 2px 0;}",
        "#ann-reference .prose, #ann-message .prose {font-size: 0.88rem !important; color: var(--body-text-color-subdued);}",
        "#ann-message p {margin: 0;}",
        ".rl-keys {font-size: 0.8rem; line-height: 1.9; color: var(--body-text-color-subdued);}",
        "#annotate-root .rl-panel-name::before {display: inline-block; min-width: 1.2em; margin-right: 6px;"
        " padding: 0 4px; border: 1px solid var(--border-color-primary); border-bottom-width: 2px;"
        " border-radius: 4px; font-size: 0.78rem; text-align: center; font-weight: 600;}",
    ]
    for index in range(min(panels, MAX_KEYED_PANELS)):
        roots = [f"#annotate-root[data-rl-selected='{index}']"] + (["#annotate-root:not([data-rl-selected])"] if index == 0 else [])
        panel = ", ".join(f"{root} #ann-panel-{index} .rl-panel" for root in roots)
        rules.append(f"#ann-panel-{index} .rl-panel-name::before {{content: '{index + 1}';}}")
        # amber, not the accent: the router's pick already wears the accent colour
        rules.append(f"{panel} {{outline: 3px solid #f59e0b; outline-offset: 2px;}}")
        rules.append(", ".join(f"{root} #ann-panel-{index} .rl-panel-name::before" for root in roots)
                     + " {background: #f59e0b; border-color: #b45309; color: white;}")
    return "<style>" + "\n".join(rules) + "</style>"


def _select_js(index: int) -> str:
    """Selecting a panel with the mouse, as key ``index + 1`` does."""
    return f"() => {{ const root = document.querySelector('#annotate-root'); if (root) root.dataset.rlSelected = '{index}'; }}"


#: Scrolls the tab to the top of the window (its tab bar just above), so the whole item fits on one screen.
SCROLL_JS = ("() => { const root = document.querySelector('#annotate-root'); if (root) window.scrollTo("
             "{top: Math.max(0, root.getBoundingClientRect().top + window.scrollY - 56)}); }")
#: Choosing "All wrong" as the best answer (mouse or key a) marks every answered backend wrong, so the
#: verdicts never contradict it; a panel that gave no answer (an error) keeps its verdict.
ALL_WRONG_JS = (f"(best, ...verdicts) => best === 'all_wrong' ? verdicts.map((v, i) => document.querySelector("
                f"'#ann-panel-' + i + ' .rl-error') ? v : {json.dumps(answer_grid.VERDICTS[1])}) : verdicts")


def remember_name(annotator: Any) -> Any:
    """Keep the name box's value in the browser (gr.BrowserState): typed once, it fills the box again on
    every later visit. Returns the BrowserState. Call it where the box is built (``app.build_app``), outside
    every gr.Tab: a BrowserState inside a tab that is not selected is never mounted, so it would neither
    store nor restore anything.

    Both events run in the page, without a request: a change of the box stores it, and on load (or when
    the stored value arrives) an empty box takes the stored name; a box with a name keeps it (the box is
    read from the page, so typing is never overwritten). With ``--auth``, :func:`components.api.whoami`
    then fills and locks the box with the logged-in user."""
    saved = gr.BrowserState("", storage_key=NAME_STORAGE_KEY, secret=NAME_STORAGE_KEY)
    annotator.change(None, [annotator], [saved], js="(name) => name", queue=False)
    box = json.dumps(f"#{annotator.elem_id} textarea, #{annotator.elem_id} input" if annotator.elem_id else "")
    gr.on(None, None, [saved], [annotator], queue=False, js=(
        f"(saved) => {{ const box = {box} && document.querySelector({box}); const name = box ? box.value : ''; "
        "return name.trim() ? name : (saved || ''); }"))
    return saved


@dataclass
class AnnotationState:
    """Per-user state of the Annotate tab (gr.State)."""

    session_id: str | None = None
    annotator: str = ""
    dataset: str = ""
    order: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    #: The item handed to the annotator now (None: nothing left for them).
    current: str | None = None
    query: QueryState = field(default_factory=QueryState)
    blind: bool = False
    k: int = 1
    #: The annotator who started the session (who adjudicates its disagreements).
    lead: str = ""
    guidelines_id: int | None = None
    #: The item whose answers are all on the page (what Save judges); None while one is loading.
    shown: str | None = None
    #: Items the annotator judged in this session, oldest first (what Undo walks back through).
    history: list[str] = field(default_factory=list)
    #: The saved judgment being changed (Undo): id, query_id, verdicts, best, true_answer, reason.
    replacing: dict[str, Any] | None = None
    #: Set by an action that moved to another item (start, save, skip, undo): the next step shows it.
    advance: bool = False
    #: Counts the page's item loads; a load that is no longer the latest stops updating the page.
    epoch: int = 0

    def take(self, other: AnnotationState) -> AnnotationState:
        """Become ``other`` in place (a Start/resume), keeping the load count, so a request still
        answering the previous item sees the change and stops updating the page."""
        epoch = self.epoch
        for f in fields(self):
            setattr(self, f.name, getattr(other, f.name))
        self.epoch = epoch
        return self


def stored_answer(backend: str, row: dict[str, Any]) -> Answer:
    """An answer as the store holds it (``Store.query()["answers"][backend]``)."""
    scores = row.get("label_scores")
    return Answer(backend=backend, text=row.get("text") or "", latency_s=float(row.get("latency_s") or 0.0),
                  label_scores=[(str(label), float(score)) for label, score in scores] if scores else None,
                  error=row.get("error"))


def verdict_label(score: float | None) -> str | None:
    """A stored verdict as the radio shows it (1 correct, 0 wrong, anything else unjudged)."""
    return {1.0: answer_grid.VERDICTS[0], 0.0: answer_grid.VERDICTS[1]}.get(score) if score is not None else None


class AnnotateView:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.compare = CompareView(runtime, prefix="ann-")
        self.names = self.compare.names
        self._items: dict[str, dict[str, EvalItem]] = {}
        self._items_lock = threading.Lock()
        # (session, item) -> set when the request answering it finishes, so a second annotator of the
        # item waits for those answers instead of asking every model again (shared by all users).
        self._answering: dict[tuple[str, str], threading.Event] = {}
        self._answering_lock = threading.Lock()
        #: The annotation order the simulator measured best, and the per-session background re-ranking.
        self.strategy = measured_strategy()
        self.refresher = QueueRefresher()

    # ---------------------------------------------------------------- datasets
    def dataset_choices(self) -> list[tuple[str, str]]:
        """Built-in sets plus JSONL files and folders under ``<data dir>/datasets`` (nothing else on disk)."""
        choices = list(BUILTIN_DATASETS.items())
        folder = default_data_dir() / "datasets"
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix == ".jsonl" or path.is_dir():
                    choices.append((f"{path.name} (data folder)", str(path)))
        return choices

    def items(self, spec: str) -> dict[str, EvalItem]:
        with self._items_lock:
            if spec not in self._items:
                self._items[spec] = {item.id: item for item in load_eval_items(spec)}
            return self._items[spec]

    def order_items(self, items: list[EvalItem]) -> tuple[list[str], str]:
        """The items' ids in queue order and the words naming that order (see :mod:`components.annotate_order`).

        One batched scoring call for the whole dataset; if it fails, the file order stands and says so.
        """
        router = self.runtime.router.active
        try:
            return order_items(router, items, list(router.costs), self.strategy)
        except Exception as exc:  # ordering is a nicety
            log.warning("could not score the items for ordering, keeping the file order: %s", exc)
            return [item.id for item in items], "file order (the router could not score these items)"

    def refresh_queue(self, session_id: str, spec: str) -> int:
        """Re-rank a session's pending items after an incremental retrain on its verdicts; items moved."""
        store = self.runtime.store
        router = self.runtime.router.active
        if store is None or not is_learned(router):
            return 0
        items = list(self.items(spec).values())
        judged = store.session_item_verdicts(session_id)
        order = refreshed_order(router, items, judged, router.backend_names, list(router.costs), self.strategy,
                                cache=self.refresher.cache, seed=len(judged))
        return store.reorder_pending(session_id, order)

    # ---------------------------------------------------------------- handlers
    def start(self, annotator: str, spec: str, state: AnnotationState | None, progress=None, *,
              blind: bool = False, k: int = 1, guidelines: str = "", join: str | None = None) -> list[Any]:
        """Resume the annotator's session on ``spec``, join the session ``join`` (an id), or start a new one
        (``join="new"``, or nothing to resume) with ``blind``, ``k`` judgments per item and ``guidelines``.

        A resumed session reopens the item the annotator was on (handed to them, neither judged nor
        skipped); the items they skipped come back after every item still to do (:meth:`Store.claim_item`)."""
        if isinstance(state, AnnotationState):
            state.advance = False
        annotator = (annotator or "").strip()
        if not annotator:
            return ["⚠️ Type your name first (it is stored with each judgment).", progress_html(0, 0), state or AnnotationState()]
        store = self.runtime.store
        if store is None:
            return [f"⚠️ {self.runtime.store_notice}", progress_html(0, 0), state or AnnotationState()]
        session = None
        if join and join != NEW_SESSION:
            try:
                session = store.session(join)
            except (KeyError, ValueError):
                return ["⚠️ That session no longer exists; pick another.", progress_html(0, 0), state or AnnotationState()]
            spec = session["dataset"]
        try:
            items = self.items(spec)
        except DatasetError as exc:
            return [f"⚠️ {html.escape(str(exc))}", progress_html(0, 0), state or AnnotationState()]
        if session is not None:
            message = (f"Joined {html.escape(session['annotator'])}'s session as {html.escape(annotator)}: "
                       f"{session['total']} items, {session['k']} judgment(s) per item.")
        else:
            resumable = [] if join == NEW_SESSION else [
                s for s in store.sessions_for(annotator) if s["dataset"] == spec and s["next_item"] is not None
            ]
            if resumable:
                session = store.session(resumable[0]["id"])
                message = f"Welcome back, {html.escape(annotator)}: resuming where you stopped."
            else:
                if progress is not None:
                    progress(0.1, desc=f"Ordering items: {STRATEGY_WORDS.get(self.strategy.name, self.strategy.name)}")
                order, order_words = self.order_items(list(items.values()))
                try:
                    session_id = store.start_session(annotator, spec, order, k=int(k or 1), blind=bool(blind),
                                                     guidelines=(guidelines or "").strip() or None)
                except ValueError as exc:
                    return [f"⚠️ {html.escape(str(exc))}", progress_html(0, 0), state or AnnotationState()]
                session = store.session(session_id)
                message = f"New session for {html.escape(annotator)}: {len(order)} items, in this order: {html.escape(order_words)}."
                if session["k"] > 1:
                    message += f" Each item goes to {session['k']} annotators: others join it from the session list."
        if session["blind"]:
            message += " Blind: the model names are shown after each judgment is saved."
        new_state = AnnotationState(
            session_id=session["id"], annotator=annotator, dataset=spec,
            order=[i for i in session["item_ids"] if i in items], blind=session["blind"], k=session["k"],
            lead=session["annotator"],
        )
        new_state.done = set(store.progress(session["id"], annotator)["mine_items"])
        new_state.history = [i for i in store.judged_items(session["id"], annotator) if i in items]
        new_state.current = store.claim_item(session["id"], annotator)
        new_state.advance = True
        if isinstance(state, AnnotationState):  # in place: a request answering the old item sees it
            new_state = state.take(new_state)
        return [message, self.progress(new_state), new_state]

    def progress(self, state: AnnotationState) -> str:
        """The progress bar: the session's items and the annotator's own share."""
        store = self.runtime.store
        if store is None or not state or not state.session_id:
            return progress_html(0, 0)
        counts = store.progress(state.session_id, state.annotator)
        return progress_html(counts["done"], counts["total"], k=counts["k"], judgments=counts["judgments"],
                             mine=counts["mine"])

    def guidelines(self, state: AnnotationState) -> list[Any]:
        """The guidelines panel (accordion, text) for the session; records their version in ``state``."""
        store = self.runtime.store
        found = resolve_guidelines(store, state.session_id, state.dataset) if store and state and state.session_id else None
        if state:
            state.guidelines_id = found["id"] if found else None
        if not found:
            return [gr.update(visible=False), ""]
        return [gr.update(visible=True, label=guidelines_label(found)), found["text"]]

    def _frame(self, state: AnnotationState, head: list[Any], *, running: bool, verdicts: list[Any] | None,
               submit: Any, best: Any = None, guide: list[Any] | None = None, texts: list[Any] | None = None) -> list[Any]:
        """show()'s outputs: image, question, reference, panels, verdicts, save button, best answer,
        true answer, reason, guidelines (accordion, text), state."""
        skip = gr.skip()
        return [*head, *self.compare.render_panels(state.query if state else QueryState(), running=running),
                *(verdicts if verdicts is not None else [skip] * len(self.names)), submit,
                skip if best is None else best, *(texts or [skip, skip]), *(guide or [skip, skip]), state]

    def advance(self, state: AnnotationState) -> Iterator[list[Any]]:
        """After start, save, skip or undo: show the item it moved to; nothing changes when it did not
        move (a save that failed keeps the item and its verdicts on the page)."""
        if not state or not state.advance:
            yield [gr.skip()] * (len(self.names) * 2 + 9) + [state]
            return
        state.advance = False
        yield from self.show(state)

    def show(self, state: AnnotationState) -> Iterator[list[Any]]:
        """Load the current item and stream every backend's answer into the panels (or, when another
        annotator's request already answered this item, show those answers; or, after Undo, the answers
        the annotator judged and their saved judgment)."""
        blank_verdicts = [None] * len(self.names)
        off = gr.update(interactive=False)
        cleared = ["", ""]
        if not state or not state.session_id:
            yield self._frame(state, [None, "", ""], running=False, verdicts=blank_verdicts, submit=off, texts=cleared)
            return
        state.epoch += 1
        state.shown, epoch = None, state.epoch
        guide = self.guidelines(state)
        if state.current is None:
            state.query = QueryState()
            complete = self.runtime.store is not None and self.runtime.store.session(state.session_id)["next_item"] is None
            done_msg = ("### 🎉 Session complete — every item is judged. Thank you!" if complete else
                        "### ✓ Nothing left for you here — the remaining items are with other annotators. Thank you!")
            yield self._frame(state, [None, done_msg, ""], running=False, verdicts=blank_verdicts, submit=off,
                              best=gr.update(value=None), guide=guide, texts=cleared)
            return
        item = self.items(state.dataset)[state.current]
        prompt = f"**Q:** {html.escape(item.question)}"
        reference = f"Reference answer: **{html.escape(', '.join(item.accepted))}** · category {html.escape(item.category)}"
        if state.replacing is not None:
            yield self._frame_replacing(state, item, prompt, reference, guide)
            return
        state.query = query = QueryState(blind=state.blind, order=shuffled(self.names) if state.blind else list(self.names))
        best = self.compare.best_update(query)
        key = (state.session_id, item.id)
        with self._answering_lock:
            pending = self._answering.get(key)
            mine = pending is None
            if mine:
                pending = self._answering[key] = threading.Event()
        try:
            if not mine:
                yield self._frame(state, [item.image, prompt, "Another annotator's request is answering this item…"],
                                  running=True, verdicts=blank_verdicts, submit=off, best=best, guide=guide, texts=cleared)
                pending.wait(600)
            reused = self._stored_query(query, state.session_id, item)
            if reused and state.epoch == epoch and state.current == item.id:
                suggested = self.suggest_verdicts(item, query)
                state.shown = item.id
                yield self._frame(state, [item.image, prompt, reference + " · verdicts pre-filled from it: check them"],
                                  running=False, verdicts=suggested, submit=gr.update(interactive=True), best=best,
                                  guide=guide, texts=cleared)
                return
            if reused:  # the page moved on meanwhile
                return
            if not mine:  # that request failed: answer it here
                with self._answering_lock:
                    mine = key not in self._answering
                    if mine:
                        self._answering[key] = pending = threading.Event()
            yield from self._answer_item(state, item, prompt, reference, best, guide)
        finally:
            if mine:
                with self._answering_lock:
                    self._answering.pop(key, None)
                pending.set()

    def _frame_replacing(self, state: AnnotationState, item: EvalItem, prompt: str, reference: str,
                         guide: list[Any]) -> list[Any]:
        """Undo: the answers the annotator judged, with their saved judgment filled in to change (names
        shown: they were revealed when it was saved)."""
        old = state.replacing or {}
        stored = self.runtime.store.query(old["query_id"]) if self.runtime.store is not None else {"answers": {}}
        state.query = QueryState(query_id=old["query_id"], decision=stored.get("decision"),
                                 labels=list(stored.get("labels") or []), order=list(self.names),
                                 answers={n: stored_answer(n, row) for n, row in stored["answers"].items()})
        verdicts = [verdict_label(old["verdicts"].get(name)) for name in self.names]
        state.shown = item.id
        hint = (f"{reference} · ↩ **changing your saved judgment**: Save stores the new one (the old one is kept, "
                "marked replaced); <kbd>n</kbd> keeps it as it is")
        return self._frame(state, [item.image, prompt, hint], running=False, verdicts=verdicts,
                           submit=gr.update(interactive=True), best=self.compare.best_update(state.query, old.get("best")),
                           guide=guide, texts=[old.get("true_answer") or "", old.get("reason") or ""])

    def _stored_query(self, query: QueryState, session_id: str, item: EvalItem) -> bool:
        """Judge the answers an earlier request for this session item produced, when every backend gave one."""
        store = self.runtime.store
        query_id = store.item_query(session_id, item.id, self.names) if store is not None else None
        if query_id is None:
            return False
        stored = store.query(query_id)
        query.query_id = query_id
        query.decision = stored["decision"]
        query.labels = list(stored.get("labels") or [])
        query.answers = {name: stored_answer(name, row) for name, row in stored["answers"].items()}
        return True

    def _answer_item(self, state: AnnotationState, item: EvalItem, prompt: str, reference: str, best: Any,
                     guide: list[Any]) -> Iterator[list[Any]]:
        """Ask every backend and stream the panels. Once the page moved on (skip, undo, a new start), the
        answers are still recorded (a later visit reuses them) but no longer shown."""
        blank_verdicts = [None] * len(self.names)
        off = gr.update(interactive=False)
        epoch, query = state.epoch, state.query

        def live() -> bool:
            return state.epoch == epoch and state.current == item.id

        try:
            events = self.runtime.compare(
                item.image, item.question, item.labels, source="annotation", session_id=state.session_id,
                item_id=item.id, category=item.category,
            )
            _, result = next(events)
        except InputError as exc:
            yield self._frame(state, [None, prompt, f"⚠️ {exc}"], running=False, verdicts=blank_verdicts, submit=off,
                              best=best, guide=guide, texts=["", ""])
            return
        query.query_id = result.query_id
        query.labels = list(result.labels)
        yield self._frame(state, [item.image, prompt, reference], running=True, verdicts=blank_verdicts, submit=off,
                          best=best, guide=guide, texts=["", ""])
        for event, payload in events:
            if event == "decision":
                query.decision = payload
            elif event == "answer":
                query.answers[payload.backend] = payload
            elif event == "done":
                break
            if live():
                yield self._frame(state, [gr.skip(), gr.skip(), gr.skip()], running=True, verdicts=None, submit=gr.skip())
        if not live():
            return
        suggested = self.suggest_verdicts(item, query)
        hint = reference + " · verdicts pre-filled from it: check them"
        state.shown = item.id
        yield self._frame(state, [gr.skip(), gr.skip(), hint], running=False, verdicts=suggested,
                          submit=gr.update(interactive=True), guide=guide)

    def suggest_verdicts(self, item: EvalItem, query: QueryState) -> list[str | None]:
        """Pre-fill each verdict from the reference answer; the annotator confirms or flips it."""
        out: list[str | None] = []
        for name in self.compare.order(query):  # panel order (shuffled when blind)
            answer = query.answers.get(name)
            if answer is None or answer.error:
                out.append(None)
            else:
                out.append(answer_grid.VERDICTS[0] if score_answer(answer.text, item.accepted) >= 1.0 else answer_grid.VERDICTS[1])
        return out

    def _panel_names(self, state: AnnotationState, backends: list[str]) -> str:
        """How the page names these backends' panels ("panel 1 (Model A)"), never a hidden model's name."""
        order = self.compare.order(state.query)
        return ", ".join(f"panel {order.index(n) + 1} ({panel_label(order.index(n)) if state.query.hidden else n})"
                         for n in backends if n in order)

    def save(self, state: AnnotationState, *values: Any) -> list[Any]:
        """Save the judgment and hand out the next item. A judgment that cannot be saved says why next to
        the Save button and keeps the item and its verdicts on the page (never an error pop-up).

        Outputs: status, progress, save button, state."""
        verdict_values = values[: len(self.names)]
        best, true_answer, reason = values[len(self.names):]
        skip = gr.skip()
        if state:
            state.advance = False
        if not state or not state.query.query_id or state.current is None or state.shown != state.current:
            return ["⚠️ Nothing to save yet: wait until every answer is in.", skip, skip, state]
        verdicts = answer_grid.verdicts_from(verdict_values, self.compare.order(state.query))
        best_name = self.compare.best_backend(state.query, best)
        if not verdicts and not best_name:
            return ["⚠️ **Not saved:** mark at least one answer (1–9, then c / w) or pick the best (t / a).", skip, skip, state]
        right = sorted(name for name, score in verdicts.items() if score == 1.0)
        if best_name == "all_wrong" and right:
            return [f"⚠️ **Not saved:** “All wrong” is picked but {html.escape(self._panel_names(state, right))} "
                    "is marked correct. Mark it wrong (w), or pick another best answer.", skip, skip, state]
        was_hidden = state.query.hidden
        replacing = state.replacing
        try:
            self._record(state, verdicts, best_name, true_answer, reason, blind=was_hidden,
                         replaces=replacing["id"] if replacing else None)
        except ValueError as exc:  # the store's checks: shown as they are (they name no hidden model)
            return [f"⚠️ **Not saved:** {html.escape(str(exc))}. Your verdicts are still on the page.", skip, skip, state]
        except Exception as exc:  # JudgmentNotSaved (read-only, disk full, locked) and anything else
            log.error("annotation judgment not saved: %s", exc)
            return [f"⚠️ **Not saved** — {html.escape(str(exc))}. Your verdicts are still on the page; try again.",
                    skip, skip, state]
        status = "✓ Saved (it replaces your earlier judgment of this item)." if replacing else "✓ Saved."
        if was_hidden:
            state.query.revealed = True
            status = "  \n".join(x for x in (
                "✓ Saved (blind).", self.compare.reveal_text(state.query), self.compare.identity_notice(state.query)) if x)
        state.done.add(state.current)
        if state.current not in state.history:
            state.history.append(state.current)
        state.replacing = None
        session_id, spec = state.session_id, state.dataset
        if not replacing:
            self.refresher.note_saved(session_id, lambda: self.refresh_queue(session_id, spec))
        store = self.runtime.store
        state.current = store.claim_item(state.session_id, state.annotator) if store is not None else None
        state.shown = None
        state.advance = True
        return [status, self.progress(state), gr.update(interactive=False), state]

    def _record(self, state: AnnotationState, verdicts: dict[str, float], best: str | None, true_answer: str,
                reason: str, *, blind: bool, replaces: int | None) -> int:
        """Store the judgment through :meth:`Runtime.judge`; changing a saved one (Undo) stores a new row
        that replaces it (``replaces``). A replacement is not blind: the annotator has seen the answers' names."""
        # the annotator is part of the key: annotators of a shared item judge the same query, often alike
        payload = {"verdicts": verdicts, "best": best, "true_answer": true_answer, "reason": reason,
                   "annotator": state.annotator, "replaces": replaces}
        key = client_key(state.query.query_id, payload)
        return self.runtime.judge(
            state.query.query_id, verdicts, best=best, true_answer=true_answer, reason=reason,
            annotator=state.annotator, session_id=state.session_id, client_key=key,
            blind=blind and replaces is None, guidelines_id=state.guidelines_id, replaces=replaces,
        )

    def skip(self, state: AnnotationState) -> list[Any]:
        """Skip the item (it comes back after every item still to do); after Undo, keep the saved judgment
        as it is and go back to where the annotator was. Outputs as :meth:`save`."""
        store = self.runtime.store
        if state:
            state.advance = False
        if not state or state.current is None or store is None or not state.session_id:
            return ["⚠️ Nothing to skip.", gr.skip(), gr.skip(), state]
        if state.replacing is not None:
            state.replacing = None
            message = "Kept your saved judgment as it was."
        else:
            store.skip_item(state.session_id, state.annotator, state.current)
            message = "Skipped: it comes back after the items still to do."
        state.current = store.claim_item(state.session_id, state.annotator)
        state.shown = None
        state.advance = True
        return [message, self.progress(state), gr.update(interactive=False), state]

    def undo(self, state: AnnotationState) -> list[Any]:
        """Go back to the annotator's previous item of the session, with their saved judgment, to change it.
        The item they were on stays theirs: saving (or n) returns to it. Outputs as :meth:`save`."""
        store = self.runtime.store
        if state:
            state.advance = False
        if not state or not state.session_id or store is None:
            return ["⚠️ Start a session first.", gr.skip(), gr.skip(), state]
        history = state.history
        earlier = history[: history.index(state.current)] if state.current in history else history
        for item in reversed(earlier):
            found = store.active_judgment(state.session_id, state.annotator, item)
            if found is not None:
                break
        else:
            return ["⚠️ Nothing to go back to: you have not judged an earlier item in this session.", gr.skip(),
                    gr.skip(), state]
        state.current, state.replacing, state.shown, state.advance = item, found, None, True
        return ["↩ Back to your previous item: change it and save, or press n to keep it.", self.progress(state),
                gr.update(interactive=False), state]

    def session_choices(self, spec: str) -> Any:
        """The session chooser: resume or start, or join an open session of the dataset."""
        store = self.runtime.store
        sessions = store.open_sessions(spec) if store is not None else []
        return gr.update(choices=session_choices(sessions), value="")

    def update_guidelines(self, state: AnnotationState, text: str) -> str:
        """A session's lead records a new version of its guidelines."""
        store = self.runtime.store
        if not state or not state.session_id or store is None:
            return "⚠️ Start a session first."
        if state.annotator != state.lead:
            return f"⚠️ Only the session's lead ({html.escape(state.lead)}) can change its guidelines."
        try:
            found = store.set_guidelines("session", state.session_id, text or "")
        except Exception as exc:  # the person must know it was not saved
            return f"⚠️ Not saved: {html.escape(str(exc))}"
        return f"✓ Guidelines saved as version {found['version']}; they show from the next item on."

    # ---------------------------------------------------------------- layout
    def build(self, annotator: Any) -> None:
        """The tab: session controls on one row, then the item on one screen (1440 x 1000): the image, the
        question and the progress at left, the answers with their verdicts and the judge bar at right."""
        state = gr.State(AnnotationState())
        choices = self.dataset_choices()
        with gr.Column(elem_id="annotate-root"):
            with gr.Row(equal_height=True):
                dataset = gr.Dropdown(choices, value=choices[0][1], label="Dataset", scale=3, elem_id="ann-dataset")
                chooser = gr.Dropdown(session_choices([]), value="", label="Session (resume yours, start, or join)",
                                      scale=3, elem_id="ann-session")
                start = gr.Button("Start / resume session", variant="primary", scale=1, elem_id="ann-start")
            with gr.Accordion("New session settings", open=False, elem_id="ann-settings"):
                with gr.Row():
                    blind = gr.Checkbox(label="Blind: hide the model names until each judgment is saved", value=True,
                                        elem_id="ann-blind")
                    k = gr.Dropdown(list(range(1, 11)), value=1, label="Judgments per item (k): 3 for a study",
                                    elem_id="ann-k")
                guidelines_text = gr.Textbox(label="Guidelines for the annotators (Markdown, optional)", lines=3,
                                             elem_id="ann-guidelines-text")
                with gr.Row():
                    guidelines_save = gr.Button("Save as the current session's guidelines (lead only)", size="sm",
                                                elem_id="ann-guidelines-save")
                    guidelines_status = gr.Markdown("", elem_id="ann-guidelines-status")
            message = gr.Markdown("Type your name above, pick a dataset, then start.", elem_id="ann-message")
            with gr.Accordion("Guidelines", open=False, visible=False, elem_id="ann-guidelines") as guide_box:
                guide_text = gr.Markdown("", elem_id="ann-guidelines-body")
            with gr.Row(equal_height=False, elem_id="ann-item"):
                with gr.Column(scale=2, min_width=300):
                    image = gr.Image(type="pil", label="Item", interactive=False, height=330, elem_id="ann-image")
                    prompt = gr.Markdown("", elem_id="ann-question")
                    reference = gr.Markdown("", elem_id="ann-reference")
                    progress = gr.HTML(progress_html(0, 0), elem_id="ann-progress-box")
                    gr.HTML(SHORTCUT_HELP + _annotate_css(len(self.names)), elem_id="ann-help")
                with gr.Column(scale=3, min_width=420):
                    infos = [b.describe() for b in self.runtime.backends]
                    panels = answer_grid.build(infos, prefix="ann-", per_row=2)
                    judge = judge_bar.build(self.names, prefix="ann-", submit_label="Save & next (Enter)")
                    with gr.Row():
                        skip = gr.Button("Skip item (n)", size="sm", elem_id="ann-skip")
                        undo = gr.Button("↩ Undo: previous item (u)", size="sm", elem_id="ann-undo")
        bodies = [p.body for p in panels]
        verdicts = [p.verdict for p in panels]
        show_outputs = [image, prompt, reference, *bodies, *verdicts, judge.submit, judge.best, judge.true_answer,
                        judge.reason, guide_box, guide_text, state]
        shown = {"concurrency_id": "compare", "show_progress": "hidden"}
        moved = [judge.status, progress, judge.submit, state]  # save, skip and undo: the item moves on

        def do_start(request: gr.Request, name: str, spec: str, join: str, blind_value: bool, k_value: int,
                     text: str, current: AnnotationState, progress_bar=gr.Progress()):
            # Behind --auth the session belongs to the logged-in user, whatever the name box holds.
            return self.start(getattr(request, "username", None) or name, spec, current, progress_bar,
                              blind=blind_value, k=k_value, guidelines=text, join=join)

        dataset.change(self.session_choices, [dataset], [chooser], queue=False)
        chooser.focus(self.session_choices, [dataset], [chooser], queue=False)
        start.click(None, js=SCROLL_JS)
        start.click(do_start, [annotator, dataset, chooser, blind, k, guidelines_text, state], [message, progress, state]).then(
            self.advance, [state], show_outputs, concurrency_limit=self.runtime.config.max_concurrent_compares, **shown,
        )
        judge.submit.click(
            self.save, [state, *verdicts, judge.best, judge.true_answer, judge.reason], moved,
        ).then(self.advance, [state], show_outputs, **shown)
        skip.click(self.skip, [state], moved).then(self.advance, [state], show_outputs, **shown)
        undo.click(self.undo, [state], moved).then(self.advance, [state], show_outputs, **shown)
        # "All wrong" (mouse or key a) marks every answered backend wrong, in the page, at once.
        judge.best.input(None, [judge.best, *verdicts], verdicts, js=ALL_WRONG_JS, queue=False)
        for index, panel in enumerate(panels[:MAX_KEYED_PANELS]):  # the mouse selects a panel as keys 1-9 do
            panel.body.click(None, js=_select_js(index), queue=False)
            panel.verdict.input(None, js=_select_js(index), queue=False)
        guidelines_save.click(self.update_guidelines, [state, guidelines_text], [guidelines_status])
