"""Annotation sessions: least-certain items first, every backend answers, keyboard verdicts, resume later."""

from __future__ import annotations

import html
import logging
import threading
import gradio as gr
import numpy as np

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from backends.scoring import score_answer
from components import answer_grid, judge_bar
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


def progress_html(done: int, total: int) -> str:
    percent = 100 * done / total if total else 0
    return (
        f"<div class='rl-meta'>{done} / {total} judged ({percent:.0f}%)</div>"
        f"<div class='rl-progress' id='ann-progress'><div style='width:{percent:.1f}%'></div></div>"
    )


class AnnotateView:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.compare = CompareView(runtime, prefix="ann-")
        self.names = self.compare.names
        self._items: dict[str, dict[str, EvalItem]] = {}
        self._items_lock = threading.Lock()

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

    def order_items(self, items: list[EvalItem]) -> list[str]:
        """Least certain first: the router's margin between its two best backends, smallest first.

        One batched scoring call for the whole dataset; if it fails, the file order stands.
        """
        try:
            probabilities = self.runtime.router.probability_matrix([i.image for i in items], [i.question for i in items])
        except Exception as exc:  # noqa: BLE001 - ordering is a nicety
            log.warning("could not score the items for ordering, keeping the file order: %s", exc)
            return [item.id for item in items]
        top_two = np.sort(probabilities, axis=1)[:, ::-1][:, :2]
        margins = top_two[:, 0] - (top_two[:, 1] if top_two.shape[1] > 1 else 0.0)
        order = sorted(range(len(items)), key=lambda k: (float(margins[k]), k))
        return [items[k].id for k in order]

    # ---------------------------------------------------------------- handlers
    def start(self, annotator: str, spec: str, state: AnnotationState | None, progress=None) -> list[Any]:
        annotator = (annotator or "").strip()
        if not annotator:
            return ["⚠️ Type your name first (it is stored with each judgment).", progress_html(0, 0), state or AnnotationState()]
        store = self.runtime.store
        if store is None:
            return [f"⚠️ {self.runtime.store_notice}", progress_html(0, 0), state or AnnotationState()]
        try:
            items = self.items(spec)
        except DatasetError as exc:
            return [f"⚠️ {html.escape(str(exc))}", progress_html(0, 0), state or AnnotationState()]
        resumable = [s for s in store.sessions_for(annotator) if s["dataset"] == spec and s["next_item"] is not None]
        if resumable:
            session = store.session(resumable[0]["id"])
            message = f"Welcome back, {html.escape(annotator)}: resuming where you stopped."
        else:
            if progress is not None:
                progress(0.1, desc="Ordering items: least certain first")
            order = self.order_items(list(items.values()))
            session = store.session(store.start_session(annotator, spec, order))
            message = f"New session for {html.escape(annotator)}: {len(order)} items, least certain first."
        new_state = AnnotationState(
            session_id=session["id"], annotator=annotator, dataset=spec,
            order=[i for i in session["item_ids"] if i in items], done=set(session["done"]),
        )
        new_state.current = new_state.next_item()
        return [message, progress_html(len(new_state.done), len(new_state.order)), new_state]

    def show(self, state: AnnotationState) -> Iterator[list[Any]]:
        """Load the current item and stream every backend's answer into the panels."""
        blank_verdicts = [None] * len(self.names)
        if not state or not state.session_id:
            yield [None, "", "", *self.compare.render_panels(QueryState(), running=False), *blank_verdicts, gr.update(interactive=False), state]
            return
        if state.current is None:
            done_msg = "### 🎉 Session complete — every item is judged. Thank you!"
            yield [None, done_msg, "", *self.compare.render_panels(QueryState(), running=False), *blank_verdicts, gr.update(interactive=False), state]
            return
        item = self.items(state.dataset)[state.current]
        prompt = f"**Q:** {html.escape(item.question)}"
        reference = f"Reference answer: **{html.escape(', '.join(item.accepted))}** · category {html.escape(item.category)}"
        state.query = QueryState()
        try:
            events = self.runtime.compare(
                item.image, item.question, item.labels, source="annotation", session_id=state.session_id,
                item_id=item.id, category=item.category,
            )
            _, result = next(events)
        except InputError as exc:
            yield [None, prompt, f"⚠️ {exc}", *self.compare.render_panels(state.query, running=False), *blank_verdicts, gr.update(interactive=False), state]
            return
        state.query.query_id = result.query_id
        yield [item.image, prompt, reference, *self.compare.render_panels(state.query, running=True), *blank_verdicts, gr.update(interactive=False), state]
        for event, payload in events:
            if event == "decision":
                state.query.decision = payload
            elif event == "answer":
                state.query.answers[payload.backend] = payload
            elif event == "done":
                break
            yield [gr.skip(), gr.skip(), gr.skip(), *self.compare.render_panels(state.query, running=True), *[gr.skip()] * len(self.names), gr.skip(), state]
        suggested = self.suggest_verdicts(item, state.query)
        hint = reference + " · verdicts pre-filled from it: check them"
        yield [gr.skip(), gr.skip(), hint, *self.compare.render_panels(state.query, running=False), *suggested, gr.update(interactive=True), state]

    def suggest_verdicts(self, item: EvalItem, query: QueryState) -> list[str | None]:
        """Pre-fill each verdict from the reference answer; the annotator confirms or flips it."""
        out: list[str | None] = []
        for name in self.names:
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
            return ["⚠️ Nothing to save yet.", progress_html(len(state.done) if state else 0, len(state.order) if state else 0), state]
        verdicts = answer_grid.verdicts_from(verdict_values, self.names)
        if not verdicts and not best:
            return ["⚠️ Mark at least one answer (keys 1–9) or pick the best (t / a).", progress_html(len(state.done), len(state.order)), state]
        payload = {"verdicts": verdicts, "best": best, "true_answer": true_answer, "reason": reason}
        try:
            self.runtime.judge(
                state.query.query_id, verdicts, best=best, true_answer=true_answer, reason=reason,
                annotator=state.annotator, session_id=state.session_id,
                client_key=client_key(state.query.query_id, payload),
            )
        except Exception as exc:  # noqa: BLE001 - the person must know it was not saved
            # Raising stops the chain, so the item and its verdicts stay on the page for a retry.
            raise gr.Error(f"Not saved: {exc}. Your verdicts are still on the page; try again.") from exc
        state.done.add(state.current)
        state.current = state.next_item(after=state.current)
        return ["✓ Saved.", progress_html(len(state.done), len(state.order)), state]

    def skip(self, state: AnnotationState) -> list[Any]:
        if state and state.current is not None:
            state.current = state.next_item(after=state.current)
        return ["Skipped: it comes back at the end.", progress_html(len(state.done), len(state.order)) if state else "", state]

    # ---------------------------------------------------------------- layout
    def build(self, annotator: Any) -> None:
        state = gr.State(AnnotationState())
        choices = self.dataset_choices()
        with gr.Column(elem_id="annotate-root"):
            with gr.Row():
                dataset = gr.Dropdown(choices, value=choices[0][1], label="Dataset", scale=3, elem_id="ann-dataset")
                start = gr.Button("Start / resume session", variant="primary", scale=1, elem_id="ann-start")
            message = gr.Markdown("Type your name above, pick a dataset, then start.", elem_id="ann-message")
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
        show_outputs = [image, prompt, reference, *bodies, *verdicts, judge.submit, state]

        def clear() -> list[Any]:
            return [None, "", ""]

        def do_start(request: gr.Request, name: str, spec: str, current: AnnotationState, progress_bar=gr.Progress()):
            # Behind --auth the session belongs to the logged-in user, whatever the name box holds.
            return self.start(getattr(request, "username", None) or name, spec, current, progress_bar)

        start.click(do_start, [annotator, dataset, state], [message, progress, state]).then(
            self.show, [state], show_outputs, concurrency_id="compare", concurrency_limit=self.runtime.config.max_concurrent_compares,
            show_progress="hidden",
        )
        judge.submit.click(self.save, [state, *verdicts, judge.best, judge.true_answer, judge.reason], [judge.status, progress, state]).success(
            clear, None, [judge.best, judge.true_answer, judge.reason]
        ).success(self.show, [state], show_outputs, concurrency_id="compare", show_progress="hidden")
        skip.click(self.skip, [state], [judge.status, progress, state]).then(
            self.show, [state], show_outputs, concurrency_id="compare", show_progress="hidden"
        )
