"""The Compare tab: ask, see the router's pick, watch every backend answer, judge."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

import gradio as gr

from backends.base import Answer
from components import answer_grid, input_panel, judge_bar, router_card
from components.runtime import InputError, Runtime

log = logging.getLogger("routelens")


@dataclass
class QueryState:
    """Per-user state of the Compare tab (lives in gr.State, never in a module global)."""

    query_id: str | None = None
    decision: dict[str, Any] | None = None
    answers: dict[str, Answer] = field(default_factory=dict)
    running: bool = False


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

    def render_panels(self, state: QueryState, *, running: bool) -> list[str]:
        choice = state.decision["choice"] if state.decision else None
        return [
            answer_grid.render_panel(
                self.runtime.backend(name).describe(), state.answers.get(name),
                picked=(name == choice), state="running" if running else "idle",
            )
            for name in self.names
        ]

    def _outputs(self, state: QueryState, *, notice: str, labels: Any, running: bool, waiting: str = "") -> list[Any]:
        kinds = self._kinds()
        return [
            notice,
            labels,
            router_card.render_card(state.decision, kinds, waiting=waiting),
            router_card.render_chart(state.decision, kinds),
            *self.render_panels(state, running=running),
            gr.update(interactive=bool(state.query_id) and not running),
            state,
        ]

    # ---------------------------------------------------------------- handlers
    def ask(self, image: Any, question: str, labels_text: str, lambda_cost: float, state: QueryState | None) -> Iterator[list[Any]]:
        state = QueryState()
        try:
            events = self.runtime.compare(image, question, labels_text, lambda_cost=lambda_cost)
            event, result = next(events)
        except InputError as exc:
            yield self._outputs(state, notice=f"⚠️ {exc}", labels=gr.skip(), running=False)
            return
        labels_shown = ", ".join(result.labels) if result.labels else ""
        waiting = "Routing…" if self.runtime.router.ready else "Routing (the router is still loading)…"
        state.query_id = result.query_id
        yield self._outputs(state, notice="", labels=labels_shown, running=True, waiting=waiting)
        for event, payload in events:
            if event == "decision":
                state.decision = payload
            elif event == "answer":
                state.answers[payload.backend] = payload
            elif event == "done":
                break
            yield self._outputs(state, notice="", labels=gr.skip(), running=True)
        notices = " ".join(f"⚠️ {n}" for n in result.notices)
        yield self._outputs(state, notice=notices, labels=gr.skip(), running=False)

    def rerank(self, lambda_cost: float, state: QueryState | None) -> list[Any]:
        if not state or not state.decision:
            return [gr.skip(), gr.skip(), *[gr.skip() for _ in self.names], state]
        state.decision = router_card.rerank(state.decision, self.costs, lambda_cost)
        kinds = self._kinds()
        return [
            router_card.render_card(state.decision, kinds),
            router_card.render_chart(state.decision, kinds),
            *self.render_panels(state, running=False),
            state,
        ]

    def save(self, state: QueryState | None, *values: Any) -> list[Any]:
        """values = verdict radios..., best, true answer, reason, annotator."""
        verdict_values = values[: len(self.names)]
        best, true_answer, reason, annotator = values[len(self.names):]
        if not state or not state.query_id:
            return [gr.update(value="⚠️ Ask a question first; there is nothing to judge yet."), gr.skip()]
        verdicts = answer_grid.verdicts_from(verdict_values, self.names)
        if not verdicts and not best:
            return ["⚠️ Mark at least one answer correct or wrong, or pick the best one.", gr.skip()]
        payload = {"verdicts": verdicts, "best": best, "true_answer": true_answer, "reason": reason}
        try:
            saved = self.runtime.judge(
                state.query_id, verdicts, best=best, true_answer=true_answer, reason=reason,
                annotator=annotator or "anonymous", client_key=client_key(state.query_id, payload),
            )
        except ValueError as exc:
            return [f"⚠️ Not saved: {exc}", gr.skip()]
        except Exception as exc:  # noqa: BLE001 - JudgmentNotSaved and anything else: tell the person
            log.error("judgment not saved: %s", exc)
            return [f"⚠️ **Not saved** — {exc}. Your verdicts are still on the page; try again.", gr.skip()]
        if saved == 0:
            return ["✓ Already saved (this exact judgment was stored before).", gr.update(interactive=True)]
        return [f"✓ Saved {len(verdicts)} verdict(s) for query `{state.query_id[:8]}`.", gr.update(interactive=True)]

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
        gr.Markdown("#### Every backend answers, side by side", elem_id=f"{self.prefix}answers-title")
        panels = answer_grid.build(infos, prefix=self.prefix)
        judge = judge_bar.build(self.names, prefix=self.prefix)

        bodies = [p.body for p in panels]
        self.bodies = bodies
        verdicts = [p.verdict for p in panels]
        outputs = [inputs.notice, inputs.labels, card.card, card.chart, *bodies, judge.submit, state]
        reset = [*verdicts, judge.best, judge.true_answer, judge.reason, judge.status]

        def clear_judgment() -> list[Any]:
            return [None] * len(verdicts) + [None, "", "", ""]

        for trigger in (inputs.run.click, inputs.question.submit):
            trigger(clear_judgment, None, reset, queue=False).then(
                self.ask, [inputs.image, inputs.question, inputs.labels, card.lambda_cost, state], outputs,
                concurrency_id="compare", concurrency_limit=self.runtime.config.max_concurrent_compares,
                show_progress="hidden",
            )
        card.lambda_cost.release(self.rerank, [card.lambda_cost, state], [card.card, card.chart, *bodies, state], queue=False)
        def save_as_user(request: gr.Request, current: QueryState, *values: Any) -> list[Any]:
            # Behind --auth the judgment is the logged-in user's, whatever the name box holds.
            user = getattr(request, "username", None)
            return self.save(current, *values[:-1], user or values[-1])

        judge.submit.click(
            save_as_user, [state, *verdicts, judge.best, judge.true_answer, judge.reason, annotator], [judge.status, judge.submit],
        )

        def use_example(evt: gr.SelectData):
            example = examples[evt.index]
            return example.image, example.question, example.labels

        inputs.gallery.select(use_example, None, [inputs.image, inputs.question, inputs.labels], queue=False)
        if examples:
            inputs.random.click(lambda: input_panel.pick_random(examples), None, [inputs.image, inputs.question, inputs.labels], queue=False)
