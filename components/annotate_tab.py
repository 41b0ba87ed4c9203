"""Annotation sessions: items in the order that teaches the router fastest, every backend answers,
keyboard verdicts, resume later.

The queue's order is the strategy the replay simulator measured best (:mod:`components.annotate_order`),
with a share of random picks; every 20 saved judgments a background incremental retrain re-ranks the
session's pending items.

A session may be blind (the default for sessions started here: panels are "Model A", "Model B", ...
until each judgment is saved) and may ask for k judgments per item: others join it from the session
chooser, the store hands each item to annotators who have not judged it until it has k
(:meth:`data.store.Store.claim_item`), and later annotators of an item judge the answers the first one's
request produced (the same query), so their verdicts can be compared. Guidelines show in a collapsible
panel and each judgment records their version.
"""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from components.blind import shuffled
from components.compare_tab import CompareView, QueryState, client_key
from components.runtime import InputError, Runtime, default_data_dir
from data.datasets import DatasetError, EvalItem, load_eval_items

log = logging.getLogger("routelens")

BUILTIN_DATASETS = {
    "Example photos (10)": str(Path(__file__).resolve().parent.parent / "data" / "examples" / "examples.jsonl"),
    "easy-VQA test (200)": "easyvqa:test:200",
    "easy-VQA train (200)": "easyvqa:train:200",
}
SHORTCUT_HELP = (
    "<div class='rl-keys'>Keys: <kbd>1</kbd>–<kbd>9</kbd> cycle backend N correct / wrong / skip · "
    "<kbd>t</kbd> tie · <kbd>a</kbd> all wrong · <kbd>Enter</kbd> save &amp; next · <kbd>n</kbd> skip item</div>"
)


@dataclass
class AnnotationState:
    """Per-user state of the Annotate tab (gr.State)."""

    session_id: str | None = None
    annotator: str = ""
    dataset: str = ""
    order: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    current: str | None = None
    query: QueryState = field(default_factory=QueryState)
    blind: bool = False
    k: int = 1
    #: The annotator who started the session (who adjudicates its disagreements).
    lead: str = ""
    guidelines_id: int | None = None

    def next_item(self, after: str | None = None) -> str | None:
        """The first item not done, starting after ``after`` (wrapping), so skipped items come back."""
        pending = [i for i in self.order if i not in self.done]
        if not pending:
            return None
        if after in pending:
            index = pending.index(after)
            rotated = pending[index + 1:] + pending[:index + 1]
            return rotated[0]
        return pending[0]


def stored_answer(backend: str, row: dict[str, Any]) -> Answer:
    """An answer as the store holds it (``Store.query()["answers"][backend]``)."""
    scores = row.get("label_scores")
    return Answer(backend=backend, text=row.get("text") or "", latency_s=float(row.get("latency_s") or 0.0),
                  label_scores=[(str(label), float(score)) for label, score in scores] if scores else None,
                  error=row.get("error"))


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
        (``join="new"``, or nothing to resume) with ``blind``, ``k`` judgments per item and ``guidelines``."""
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
        new_state.current = store.claim_item(session["id"], annotator)
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
               submit: Any, best: Any = None, guide: list[Any] | None = None) -> list[Any]:
        """show()'s outputs: image, question, reference, panels, verdicts, save button, best answer,
        guidelines (accordion, text), state."""
        skip = gr.skip()
        return [*head, *self.compare.render_panels(state.query if state else QueryState(), running=running),
                *(verdicts if verdicts is not None else [skip] * len(self.names)), submit,
                skip if best is None else best, *(guide or [skip, skip]), state]

    def show(self, state: AnnotationState) -> Iterator[list[Any]]:
        """Load the current item and stream every backend's answer into the panels (or, when another
        annotator's request already answered this item, show those answers)."""
        blank_verdicts = [None] * len(self.names)
        off = gr.update(interactive=False)
        if not state or not state.session_id:
            yield self._frame(state, [None, "", ""], running=False, verdicts=blank_verdicts, submit=off)
            return
        guide = self.guidelines(state)
        if state.current is None:
            state.query = QueryState()
            complete = self.runtime.store is not None and self.runtime.store.session(state.session_id)["next_item"] is None
            done_msg = ("### 🎉 Session complete — every item is judged. Thank you!" if complete else
                        "### ✓ Nothing left for you here — the remaining items are with other annotators. Thank you!")
            yield self._frame(state, [None, done_msg, ""], running=False, verdicts=blank_verdicts, submit=off, guide=guide)
            return
        item = self.items(state.dataset)[state.current]
        prompt = f"**Q:** {html.escape(item.question)}"
        reference = f"Reference answer: **{html.escape(', '.join(item.accepted))}** · category {html.escape(item.category)}"
        state.query = QueryState(blind=state.blind, order=shuffled(self.names) if state.blind else list(self.names))
        best = self.compare.best_update(state.query)
        key = (state.session_id, item.id)
        with self._answering_lock:
            pending = self._answering.get(key)
            mine = pending is None
            if mine:
                pending = self._answering[key] = threading.Event()
        try:
            if not mine:
                yield self._frame(state, [item.image, prompt, "Another annotator's request is answering this item…"],
                                  running=True, verdicts=blank_verdicts, submit=off, best=best, guide=guide)
                pending.wait(600)
            reused = self._stored_query(state, item)
            if reused:
                suggested = self.suggest_verdicts(item, state.query)
                yield self._frame(state, [item.image, prompt, reference + " · verdicts pre-filled from it: check them"],
                                  running=False, verdicts=suggested, submit=gr.update(interactive=True), best=best, guide=guide)
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

    def _stored_query(self, state: AnnotationState, item: EvalItem) -> bool:
        """Judge the answers an earlier request for this session item produced, when every backend gave one."""
        store = self.runtime.store
        query_id = store.item_query(state.session_id, item.id, self.names) if store is not None else None
        if query_id is None:
            return False
        stored = store.query(query_id)
        state.query.query_id = query_id
        state.query.decision = stored["decision"]
        state.query.labels = list(stored.get("labels") or [])
        state.query.answers = {name: stored_answer(name, row) for name, row in stored["answers"].items()}
        return True

    def _answer_item(self, state: AnnotationState, item: EvalItem, prompt: str, reference: str, best: Any,
                     guide: list[Any]) -> Iterator[list[Any]]:
        blank_verdicts = [None] * len(self.names)
        off = gr.update(interactive=False)
        try:
            events = self.runtime.compare(
                item.image, item.question, item.labels, source="annotation", session_id=state.session_id,
                item_id=item.id, category=item.category,
            )
            _, result = next(events)
        except InputError as exc:
            yield self._frame(state, [None, prompt, f"⚠️ {exc}"], running=False, verdicts=blank_verdicts, submit=off,
                              best=best, guide=guide)
            return
        state.query.query_id = result.query_id
        state.query.labels = list(result.labels)
        yield self._frame(state, [item.image, prompt, reference], running=True, verdicts=blank_verdicts, submit=off,
                          best=best, guide=guide)
        for event, payload in events:
            if event == "decision":
                state.query.decision = payload
            elif event == "answer":
                state.query.answers[payload.backend] = payload
            elif event == "done":
                break
            yield self._frame(state, [gr.skip(), gr.skip(), gr.skip()], running=True, verdicts=None, submit=gr.skip())
        suggested = self.suggest_verdicts(item, state.query)
        hint = reference + " · verdicts pre-filled from it: check them"
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

    def save(self, state: AnnotationState, *values: Any) -> list[Any]:
        verdict_values = values[: len(self.names)]
        best, true_answer, reason = values[len(self.names):]
        if not state or not state.query.query_id or state.current is None:
            return ["⚠️ Nothing to save yet.", self.progress(state), state]
        verdicts = answer_grid.verdicts_from(verdict_values, self.compare.order(state.query))
        best_name = self.compare.best_backend(state.query, best)
        if not verdicts and not best_name:
            return ["⚠️ Mark at least one answer (keys 1–9) or pick the best (t / a).", self.progress(state), state]
        was_hidden = state.query.hidden
        # the annotator is part of the key: annotators of a shared item judge the same query, often alike
        payload = {"verdicts": verdicts, "best": best_name, "true_answer": true_answer, "reason": reason,
                   "annotator": state.annotator}
        try:
            self.runtime.judge(
                state.query.query_id, verdicts, best=best_name, true_answer=true_answer, reason=reason,
                annotator=state.annotator, session_id=state.session_id,
                client_key=client_key(state.query.query_id, payload), blind=was_hidden,
                guidelines_id=state.guidelines_id,
            )
        except Exception as exc:  # the person must know it was not saved
            # Raising stops the chain, so the item and its verdicts stay on the page for a retry.
            raise gr.Error(f"Not saved: {exc}. Your verdicts are still on the page; try again.") from exc
        status = "✓ Saved."
        if was_hidden:
            state.query.revealed = True
            status = "  \n".join(x for x in (
                "✓ Saved (blind).", self.compare.reveal_text(state.query), self.compare.identity_notice(state.query)) if x)
        state.done.add(state.current)
        session_id, spec = state.session_id, state.dataset
        self.refresher.note_saved(session_id, lambda: self.refresh_queue(session_id, spec))
        store = self.runtime.store
        state.current = store.claim_item(state.session_id, state.annotator) if store is not None else None
        return [status, self.progress(state), state]

    def skip(self, state: AnnotationState) -> list[Any]:
        store = self.runtime.store
        if state and state.current is not None and store is not None and state.session_id:
            store.skip_item(state.session_id, state.annotator, state.current)
            state.current = store.claim_item(state.session_id, state.annotator)
        return ["Skipped: it comes back at the end.", self.progress(state) if state else "", state]

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
        state = gr.State(AnnotationState())
        choices = self.dataset_choices()
        with gr.Column(elem_id="annotate-root"):
            with gr.Row():
                dataset = gr.Dropdown(choices, value=choices[0][1], label="Dataset", scale=3, elem_id="ann-dataset")
                chooser = gr.Dropdown(session_choices([]), value="", label="Session", scale=3, elem_id="ann-session",
                                      info="Resume yours, start a new one, or join one that asks for several annotators")
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
            gr.HTML(SHORTCUT_HELP)
            progress = gr.HTML(progress_html(0, 0))
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=260):
                    image = gr.Image(type="pil", label="Item", interactive=False, height=300, elem_id="ann-image")
                with gr.Column(scale=3):
                    prompt = gr.Markdown("", elem_id="ann-question")
                    reference = gr.Markdown("", elem_id="ann-reference")
            infos = [b.describe() for b in self.runtime.backends]
            panels = answer_grid.build(infos, prefix="ann-", per_row=3)
            judge = judge_bar.build(self.names, prefix="ann-", submit_label="Save & next (Enter)")
            skip = gr.Button("Skip item (n)", size="sm", elem_id="ann-skip")
        bodies = [p.body for p in panels]
        verdicts = [p.verdict for p in panels]
        show_outputs = [image, prompt, reference, *bodies, *verdicts, judge.submit, judge.best, guide_box, guide_text, state]

        def clear() -> list[Any]:
            return [None, "", ""]

        def do_start(request: gr.Request, name: str, spec: str, join: str, blind_value: bool, k_value: int,
                     text: str, current: AnnotationState, progress_bar=gr.Progress()):
            # Behind --auth the session belongs to the logged-in user, whatever the name box holds.
            return self.start(getattr(request, "username", None) or name, spec, current, progress_bar,
                              blind=blind_value, k=k_value, guidelines=text, join=join)

        dataset.change(self.session_choices, [dataset], [chooser], queue=False)
        chooser.focus(self.session_choices, [dataset], [chooser], queue=False)
        start.click(do_start, [annotator, dataset, chooser, blind, k, guidelines_text, state], [message, progress, state]).then(
            self.show, [state], show_outputs, concurrency_id="compare", concurrency_limit=self.runtime.config.max_concurrent_compares,
            show_progress="hidden",
        )
        judge.submit.click(self.save, [state, *verdicts, judge.best, judge.true_answer, judge.reason], [judge.status, progress, state]).success(
            clear, None, [judge.best, judge.true_answer, judge.reason]
        ).success(self.show, [state], show_outputs, concurrency_id="compare", show_progress="hidden")
        skip.click(self.skip, [state], [judge.status, progress, state]).then(
            self.show, [state], show_outputs, concurrency_id="compare", show_progress="hidden"
        )
        guidelines_save.click(self.update_guidelines, [state, guidelines_text], [guidelines_status])
