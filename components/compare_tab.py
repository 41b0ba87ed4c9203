"""The Compare tab: ask, see the router's pick, watch every backend answer, judge.

With *Blind* ticked, the panels are "Model A", "Model B", ... in an order shuffled for each question
(kept in the user's state), the router's card and pick are hidden, and every answer appears at once
when the last one is in (which one is fast would tell); names, kinds and the pick are revealed as soon
as the judgment is saved, and the judgment is stored as blind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from backends.base import Answer
from components import answer_grid, input_panel, judge_bar, router_card, saving
from components.blind import panel_label, self_identification, shuffled
from components.runtime import CompareResult, InputError, Runtime
from router.categories import CATEGORIES

log = logging.getLogger("routelens")


@dataclass
class QueryState:
    """Per-user state of the Compare tab (lives in gr.State, never in a module global)."""

    query_id: str | None = None
    decision: dict[str, Any] | None = None
    answers: dict[str, Answer] = field(default_factory=dict)
    running: bool = False
    labels: list[str] = field(default_factory=list)
    #: Judged blind: names hidden until the first judgment of this query is saved.
    blind: bool = False
    #: The backend shown in each panel, in panel order (shuffled when blind); empty = the preset's order.
    order: list[str] = field(default_factory=list)
    revealed: bool = False
    #: Routed mode: only the router's pick was asked (``result.skipped`` lists the others until asked).
    routed: bool = False
    result: CompareResult | None = None
    routed_saving: saving.RoutedSaving | None = None
    asked_others: bool = False
    #: The labels box's text when the page filled it from the question ("" when the person typed it):
    #: such labels are replaced when the question changes, typed ones stay.
    labels_auto: str = ""

    @property
    def skipped(self) -> list[str]:
        return list(self.result.skipped) if self.result else []

    @property
    def hidden(self) -> bool:
        """Names, kinds and the router's pick are hidden now."""
        return self.blind and not self.revealed

    def aliases(self) -> dict[str, str]:
        """backend -> its blind label ("Model A"), for a blind query (empty otherwise)."""
        return {name: panel_label(i) for i, name in enumerate(self.order)} if self.blind else {}


def pumped(events: Iterator[Any], *, every_s: float = 1.0, pool: Executor | None = None) -> Iterator[Any]:
    """The items of ``events``, iterated on a worker thread (of ``pool``, else a new one), with a ``None``
    every ``every_s`` seconds that nothing new came: a handler can then say what it is still waiting for
    (a model loading, a free slot) instead of sitting silent. Exceptions of ``events`` are raised here."""
    items: queue.Queue[tuple[str, Any]] = queue.Queue()

    def work() -> None:
        try:
            for item in events:
                items.put(("item", item))
        except BaseException as exc:  # handed to the caller's thread
            items.put(("error", exc))
        finally:
            items.put(("end", None))

    if pool is not None:
        pool.submit(work)
    else:
        threading.Thread(target=work, name="compare-stream", daemon=True).start()
    while True:
        try:
            kind, item = items.get(timeout=every_s)
        except queue.Empty:
            yield None
            continue
        if kind == "end":
            return
        if kind == "error":
            raise item
        yield item


def client_key(query_id: str, payload: dict[str, Any]) -> str:
    """Same judgment submitted twice -> same key -> stored once; a changed judgment is a new one."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"{query_id}:{digest}"


class CompareView:
    """Builds the tab and holds its handlers (bound to one Runtime, shared by all users)."""

    def __init__(self, runtime: Runtime, *, prefix: str = "") -> None:
        self.runtime = runtime
        self.prefix = prefix
        self.names = [b.name for b in runtime.backends]
        self.costs = {b.name: b.cost for b in runtime.backends}

    # ---------------------------------------------------------------- rendering
    def _kinds(self) -> dict[str, str]:
        return {b.name: b.describe().kind for b in self.runtime.backends}

    def order(self, state: QueryState | None) -> list[str]:
        """The backend of each panel, in panel order."""
        return list(state.order) if state and state.order else list(self.names)

    def render_panels(self, state: QueryState, *, running: bool) -> list[str]:
        order = self.order(state)
        if state.hidden:
            # every answer at once, when the last is in: which model answers first would tell
            waiting = running and any(name not in state.answers for name in order)
            return [
                answer_grid.render_blind_panel(panel_label(i), state.answers.get(name),
                                               state="running" if waiting else "idle")
                for i, name in enumerate(order)
            ]
        choice = state.decision["choice"] if state.decision else None
        aliases = state.aliases()
        skipped = set(state.skipped)
        return [
            answer_grid.render_panel(
                self.runtime.backend(name).describe(), state.answers.get(name), picked=(name == choice),
                state="skipped" if name in skipped else ("running" if running else "idle"), alias=aliases.get(name),
            )
            for name in order
        ]

    def render_card(self, state: QueryState, *, waiting: str = "", status: str = "") -> list[Any]:
        """The router card and chart; hidden while a blind query is judged."""
        if state.hidden:
            return [router_card.render_card(None, {}, waiting="Blind: the router's pick is shown after you save."),
                    router_card.render_chart(None, {})]
        kinds = self._kinds()
        return [router_card.render_card(state.decision, kinds, waiting=waiting, status=status),
                router_card.render_chart(state.decision, kinds)]

    def best_update(self, state: QueryState, value: Any = None) -> Any:
        """The best-answer choices for this query: backend names, or the blind labels (named once revealed)."""
        if not state.blind:
            return gr.update(choices=judge_bar.best_choices([(n, n) for n in self.order(state)]), value=value)
        aliases = state.aliases()
        options = [(f"{aliases[n]} · {n}" if state.revealed else aliases[n], aliases[n]) for n in self.order(state)]
        return gr.update(choices=judge_bar.best_choices(options), value=value)

    def best_backend(self, state: QueryState, best: str | None) -> str | None:
        """The backend a best-answer choice names (blind choices are labels)."""
        if not best or not state.blind:
            return best or None
        by_label = {label: name for name, label in state.aliases().items()}
        return by_label.get(best, best)

    def reveal_text(self, state: QueryState) -> str:
        """ "Model A = clip (vlm, router pick) · Model B = ..." for a blind query."""
        choice = state.decision["choice"] if state.decision else None
        kinds = self._kinds()
        parts = [
            f"{label} = **{name}** ({kinds.get(name, '?')}{', router pick' if name == choice else ''})"
            for name, label in state.aliases().items()
        ]
        return "Revealed: " + " · ".join(parts)

    def identity_notice(self, state: QueryState) -> str:
        """Why this blind judgment is not anonymous (a model named itself), or ""."""
        infos = {b.name: b.describe() for b in self.runtime.backends}
        answers = {n: a.text for n, a in state.answers.items() if not a.error}
        shown = {n: f"{label} ({n})" for n, label in state.aliases().items()}
        reason = self_identification(answers, infos, state.labels, aliases=shown)
        return f"⚠️ Not anonymous: {reason}; this judgment is stored as not anonymous and left out of the fair-vote ratings." if reason else ""

    def _outputs(self, state: QueryState, *, notice: str, labels: Any, running: bool, waiting: str = "",
                 best: Any = None, category: Any = None) -> list[Any]:
        """ask()'s outputs: notice, labels, card, chart, panels, Save, best answer, saving, "others" button,
        task category, state."""
        loading = self.runtime.loading_line() if running and state.decision else None
        status = f"{loading}; the answers follow as each model is ready." if loading else ""
        return [
            notice,
            labels,
            *self.render_card(state, waiting=waiting, status=status),
            *self.render_panels(state, running=running),
            gr.update(interactive=bool(state.query_id) and not running),
            gr.skip() if best is None else best,
            saving.render(state.routed_saving, asked_all=state.asked_others),
            gr.update(visible=bool(state.skipped) and not running),
            gr.skip() if category is None else category,
            state,
        ]

    def _waiting(self, result: CompareResult | None, started: float) -> str:
        """What the card says while the router's pick is not known yet, from the first second."""
        waited = time.monotonic() - started
        line = self.runtime.loading_line()
        if line:
            return f"{line} (waiting {waited:.0f} s)…"
        if result is None:
            return f"Waiting for a free slot: other questions are being answered (waiting {waited:.0f} s)…"
        return "Routing…"

    def _labels_update(self, typed: str, result: CompareResult, state: QueryState) -> Any:
        """The labels box after a question: typed labels stay; labels read from the question are shown
        as such and remembered, so the next question replaces them."""
        if typed:
            state.labels_auto = ""
            return gr.update(value=typed, label=input_panel.LABELS_LABEL)
        state.labels_auto = ", ".join(result.labels)
        return gr.update(value=state.labels_auto,
                         label=input_panel.LABELS_FROM_QUESTION if result.labels else input_panel.LABELS_LABEL)

    # ---------------------------------------------------------------- handlers
    def ask(self, image: Any, question: str, labels_text: str, lambda_cost: float, state: QueryState | None,
            blind: bool = False, routed: bool = False) -> Iterator[list[Any]]:
        previous = state or QueryState()
        routed = bool(routed)
        notice = ""
        if routed and blind:
            notice = "Blind is off for routed questions: only the router's pick answers, so its name would tell."
            blind = False
        typed = " ".join(str(labels_text or "").split())
        if typed and typed == previous.labels_auto:  # read from the previous question, not typed
            typed = ""
        state = QueryState(blind=bool(blind), order=shuffled(self.names) if blind else list(self.names),
                           routed=routed, labels_auto=previous.labels_auto)
        started = time.monotonic()
        events = self.runtime.compare(image, question, typed, lambda_cost=lambda_cost, only_pick=routed)
        result: CompareResult | None = None
        try:
            for item in pumped(events, pool=self.runtime.stream_pool):
                if item is None:  # nothing new for a second: say what the question waits for, if anything
                    if self.runtime.loading_line() or (result is None and time.monotonic() - started > 3):
                        yield self._outputs(state, notice=notice, labels=gr.skip(), running=True,
                                            waiting=self._waiting(result, started))
                    continue
                event, payload = item
                labels: Any = gr.skip()
                best: Any = None
                category: Any = None
                if event == "start":
                    result = payload
                    state.result, state.query_id, state.labels = result, result.query_id, list(result.labels)
                    labels, best = self._labels_update(typed, result, state), self.best_update(state)
                    category = gr.update(value=None)
                elif event == "decision":
                    state.decision = payload
                    guess = payload.get("category")
                    category = gr.update(value=guess if guess in CATEGORIES else None)
                elif event == "answer":
                    state.answers[payload.backend] = payload
                elif event == "done":
                    break
                yield self._outputs(state, notice=notice, labels=labels, running=True,
                                    waiting=self._waiting(result, started), best=best, category=category)
        except InputError as exc:
            state = QueryState(labels_auto=previous.labels_auto)
            yield self._outputs(state, notice=f"⚠️ {exc}", labels=gr.skip(), running=False,
                                waiting="Ask a question: the router's pick appears here before the answers.")
            return
        if routed and state.decision and result is not None:
            pick = state.decision["choice"]
            answer = state.answers.get(pick)
            state.routed_saving = saving.estimate(pick, self.costs, self.runtime.median_latencies(),
                                           answer.latency_s if answer else None)
        notices = " ".join([notice] * bool(notice) + [f"⚠️ {n}" for n in (result.notices if result else [])])
        guess = (state.decision or {}).get("category")
        # the router's guess again with the last frame: streamed frames can be coalesced on the way
        yield self._outputs(state, notice=notices, labels=gr.skip(), running=False,
                            category=gr.update(value=guess if guess in CATEGORIES else None))

    def ask_others(self, state: QueryState | None) -> Iterator[list[Any]]:
        """Routed mode's "Ask the others too": the skipped backends answer the same query, side by side."""
        if not state or not state.result or not state.skipped:
            yield self._outputs(state or QueryState(), notice="Every backend has already answered this question.",
                                labels=gr.skip(), running=False)
            return
        started = time.monotonic()
        for answer in pumped(self.runtime.answer_others(state.result), pool=self.runtime.stream_pool):
            if answer is not None:
                state.answers[answer.backend] = answer
            yield self._outputs(state, notice="", labels=gr.skip(), running=True, waiting=self._waiting(state.result, started))
        state.asked_others = True
        notices = " ".join(f"⚠️ {n}" for n in state.result.notices)
        yield self._outputs(state, notice=notices, labels=gr.skip(), running=False)

    def input_changed(self, labels_text: str, state: QueryState | None) -> list[Any]:
        """A new image or question: the previous card, answers and Save go (they belong to the old input),
        and labels the page read from the old question are cleared; labels a person typed stay.

        Outputs: labels, card, chart, panels, Save, saving, "others" button, state."""
        skip = gr.skip()
        state = state or QueryState()
        labels: Any = skip
        auto = state.labels_auto
        if auto and " ".join(str(labels_text or "").split()) == auto:
            labels, auto = gr.update(value="", label=input_panel.LABELS_LABEL), ""
        shown = bool(state.query_id or state.decision or state.answers)
        if not shown:
            if labels is skip:
                return [skip] * (7 + len(self.names))
            state.labels_auto = auto
            return [labels, *[skip] * (5 + len(self.names)), state]
        fresh = QueryState(labels_auto=auto)
        return [
            labels,
            router_card.render_card(None, {}, waiting="The image or question changed: ask again for the router's pick and new answers."),
            router_card.render_chart(None, {}),
            *self.render_panels(fresh, running=False),
            gr.update(interactive=False),
            "",
            gr.update(visible=False),
            fresh,
        ]

    def rerank(self, lambda_cost: float, state: QueryState | None) -> list[Any]:
        if not state or not state.decision:
            return [gr.skip(), gr.skip(), *[gr.skip() for _ in self.names], state]
        state.decision = router_card.rerank(state.decision, self.costs, lambda_cost)
        return [*self.render_card(state), *self.render_panels(state, running=False), state]

    def _saved(self, status: Any, state: QueryState | None, *, submit: Any = None, reveal: bool = False,
               best: Any = None) -> list[Any]:
        """save()'s outputs: status, save button, router card and chart, panels, best answer, state."""
        skip = gr.skip()
        if not reveal or state is None:
            return [status, submit if submit is not None else skip, skip, skip, *[skip for _ in self.names], skip, skip]
        return [status, submit if submit is not None else skip, *self.render_card(state),
                *self.render_panels(state, running=False), self.best_update(state, best), state]

    def save(self, state: QueryState | None, *values: Any, category: str | None = None) -> list[Any]:
        """values = verdict radios (in panel order)..., best, true answer, reason, annotator. ``category``:
        the task category the person filed the question under (the router's guess unless corrected)."""
        verdict_values = values[: len(self.names)]
        best, true_answer, reason, annotator = values[len(self.names):]
        if not state or not state.query_id:
            return self._saved(gr.update(value="⚠️ Ask a question first; there is nothing to judge yet."), state)
        verdicts = answer_grid.verdicts_from(verdict_values, self.order(state))
        unasked = sorted(name for name in verdicts if name in state.skipped)
        verdicts = {name: value for name, value in verdicts.items() if name not in state.skipped}
        best_name = self.best_backend(state, best)
        if best_name in state.skipped:
            return self._saved(f"⚠️ {best_name} was not asked this question; press **Ask the others too** first, "
                               "or choose an answer you can see.", state)
        if not verdicts and not best_name:
            return self._saved("⚠️ Mark at least one answer correct or wrong, or pick the best one.", state)
        was_hidden = state.hidden
        payload = {"verdicts": verdicts, "best": best_name, "true_answer": true_answer, "reason": reason,
                   "annotator": annotator or "anonymous", "category": category or None}
        try:
            saved = self.runtime.judge(
                state.query_id, verdicts, best=best_name, true_answer=true_answer, reason=reason,
                annotator=annotator or "anonymous", client_key=client_key(state.query_id, payload), blind=was_hidden,
                category=category or None,
            )
        except ValueError as exc:
            return self._saved(f"⚠️ Not saved: {exc}", state)
        except Exception as exc:  # JudgmentNotSaved and anything else: tell the person
            log.error("judgment not saved: %s", exc)
            return self._saved(f"⚠️ **Not saved** — {exc}. Your verdicts are still on the page; try again.", state)
        if saved == 0:
            return self._saved("✓ Already saved (this exact judgment was stored before).", state,
                               submit=gr.update(interactive=True))
        status = f"✓ Saved {len(verdicts)} verdict(s) for query `{state.query_id[:8]}`."
        if unasked:
            status += f" (Left out: {', '.join(unasked)}, not asked.)"
        if was_hidden:
            state.revealed = True
            status = "  \n".join(x for x in (status + " (blind)", self.reveal_text(state), self.identity_notice(state)) if x)
        return self._saved(status, state, submit=gr.update(interactive=True), reveal=was_hidden, best=best)

    def idle_panels(self) -> list[str]:
        """Panels as they stand now (models may have loaded since the page was built)."""
        return self.render_panels(QueryState(), running=False)

    # ---------------------------------------------------------------- layout
    def build(self, annotator: Any) -> None:
        examples = input_panel.load_examples()
        infos = [b.describe() for b in self.runtime.backends]
        state = gr.State(QueryState())
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=320):
                inputs = input_panel.build(examples, prefix=self.prefix)
            with gr.Column(scale=4, min_width=300):
                card = router_card.build(self.runtime.config.default_lambda, prefix=self.prefix)
                routed = gr.Checkbox(
                    label="Ask only the router's pick", value=False, elem_id=f"{self.prefix}routed",
                    info="Routed mode: one model answers, the card shows the time and cost saved.",
                )
                saved_line = gr.HTML("", elem_id=f"{self.prefix}routed-saving-box")
                others = gr.Button("Ask the others too", visible=False, size="sm", elem_id=f"{self.prefix}ask-others")
        with gr.Row(equal_height=True):
            gr.Markdown("#### Every backend answers, side by side", elem_id=f"{self.prefix}answers-title")
            blind = gr.Checkbox(
                label="Blind: hide which model gave which answer until I save", value=False,
                elem_id=f"{self.prefix}blind", scale=0, min_width=300,
            )
        panels = answer_grid.build(infos, prefix=self.prefix)
        judge = judge_bar.build(self.names, prefix=self.prefix, with_category=True)

        bodies = [p.body for p in panels]
        self.bodies = bodies
        verdicts = [p.verdict for p in panels]
        outputs = [inputs.notice, inputs.labels, card.card, card.chart, *bodies, judge.submit, judge.best,
                   saved_line, others, judge.category, state]
        reset = [*verdicts, judge.best, judge.true_answer, judge.reason, judge.status]

        def clear_judgment() -> list[Any]:
            # the card says at once what the question will wait for, before the queue starts it
            waiting = self.runtime.loading_line() or "Sending your question…"
            return [None] * len(verdicts) + [None, "", "", "", router_card.render_card(None, {}, waiting=waiting)]

        for trigger in (inputs.run.click, inputs.question.submit):
            trigger(clear_judgment, None, [*reset, card.card], queue=False).then(
                self.ask, [inputs.image, inputs.question, inputs.labels, card.lambda_cost, state, blind, routed],
                outputs, concurrency_id="compare", concurrency_limit=self.runtime.config.max_concurrent_compares,
                show_progress="hidden",
            )
        others.click(self.ask_others, [state], outputs, concurrency_id="compare",
                     concurrency_limit=self.runtime.config.max_concurrent_compares, show_progress="hidden")
        routed.change(lambda on: gr.update(value="Ask the router's pick" if on else "Ask every model"), routed,
                      inputs.run, queue=False, show_progress="hidden")
        def warm(payload: Any) -> None:  # unprocessed: a bad file is reported next to the image, not as a toast
            path = input_panel.upload_path(payload)
            if path:
                self.runtime.warm_image(path)

        inputs.image.change(warm, inputs.image, None, preprocess=False, concurrency_id="warm", concurrency_limit=1,
                            show_progress="hidden")
        changed = [inputs.labels, card.card, card.chart, *bodies, judge.submit, saved_line, others, state]
        for change in (inputs.question.change, inputs.image.change):
            change(self.input_changed, [inputs.labels, state], changed, queue=False, show_progress="hidden")
        card.lambda_cost.change(self.rerank, [card.lambda_cost, state], [card.card, card.chart, *bodies, state], queue=False,
                                show_progress="hidden")
        def save_as_user(request: gr.Request, current: QueryState, category: str | None, *values: Any) -> list[Any]:
            # Behind --auth the judgment is the logged-in user's, whatever the name box holds.
            user = getattr(request, "username", None)
            return self.save(current, *values[:-1], user or values[-1], category=category)

        judge.submit.click(
            save_as_user, [state, judge.category, *verdicts, judge.best, judge.true_answer, judge.reason, annotator],
            [judge.status, judge.submit, card.card, card.chart, *bodies, judge.best, state],
        )

        def given_labels(current: QueryState | None, image: str, question: str, labels: str) -> list[Any]:
            # an example's labels are given, not read from a question: they stay like typed ones
            current = current or QueryState()
            current.labels_auto = ""
            return [image, question, gr.update(value=labels, label=input_panel.LABELS_LABEL), current]

        def use_example(current: QueryState | None, evt: gr.SelectData) -> list[Any]:
            example = examples[evt.index]
            return given_labels(current, example.image, example.question, example.labels)

        example_outputs = [inputs.image, inputs.question, inputs.labels, state]
        inputs.gallery.select(use_example, state, example_outputs, queue=False)
        if examples:
            inputs.random.click(lambda current: given_labels(current, *input_panel.pick_random(examples)), state,
                                example_outputs, queue=False)
