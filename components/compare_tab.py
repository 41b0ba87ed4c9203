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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from backends.base import Answer
from components import answer_grid, input_panel, judge_bar, router_card
from components.blind import panel_label, self_identification, shuffled
from components.runtime import InputError, Runtime

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

    @property
    def hidden(self) -> bool:
        """Names, kinds and the router's pick are hidden now."""
        return self.blind and not self.revealed

    def aliases(self) -> dict[str, str]:
        """backend -> its blind label ("Model A"), for a blind query (empty otherwise)."""
        return {name: panel_label(i) for i, name in enumerate(self.order)} if self.blind else {}


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
        return [
            answer_grid.render_panel(
                self.runtime.backend(name).describe(), state.answers.get(name),
                picked=(name == choice), state="running" if running else "idle", alias=aliases.get(name),
            )
            for name in order
        ]

    def render_card(self, state: QueryState, *, waiting: str = "") -> list[Any]:
        """The router card and chart; hidden while a blind query is judged."""
        if state.hidden:
            return [router_card.render_card(None, {}, waiting="Blind: the router's pick is shown after you save."),
                    router_card.render_chart(None, {})]
        kinds = self._kinds()
        return [router_card.render_card(state.decision, kinds, waiting=waiting), router_card.render_chart(state.decision, kinds)]

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
                 best: Any = None) -> list[Any]:
        return [
            notice,
            labels,
            *self.render_card(state, waiting=waiting),
            *self.render_panels(state, running=running),
            gr.update(interactive=bool(state.query_id) and not running),
            gr.skip() if best is None else best,
            state,
        ]

    # ---------------------------------------------------------------- handlers
    def ask(self, image: Any, question: str, labels_text: str, lambda_cost: float, state: QueryState | None,
            blind: bool = False) -> Iterator[list[Any]]:
        state = QueryState(blind=bool(blind), order=shuffled(self.names) if blind else list(self.names))
        try:
            events = self.runtime.compare(image, question, labels_text, lambda_cost=lambda_cost)
            event, result = next(events)
        except InputError as exc:
            yield self._outputs(state, notice=f"⚠️ {exc}", labels=gr.skip(), running=False)
            return
        labels_shown = ", ".join(result.labels) if result.labels else ""
        waiting = "Routing…" if self.runtime.router.ready else "Routing (the router is still loading)…"
        state.query_id = result.query_id
        state.labels = list(result.labels)
        yield self._outputs(state, notice="", labels=labels_shown, running=True, waiting=waiting,
                            best=self.best_update(state))
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
        return [*self.render_card(state), *self.render_panels(state, running=False), state]

    def _saved(self, status: Any, state: QueryState | None, *, submit: Any = None, reveal: bool = False,
               best: Any = None) -> list[Any]:
        """save()'s outputs: status, save button, router card and chart, panels, best answer, state."""
        skip = gr.skip()
        if not reveal or state is None:
            return [status, submit if submit is not None else skip, skip, skip, *[skip for _ in self.names], skip, skip]
        return [status, submit if submit is not None else skip, *self.render_card(state),
                *self.render_panels(state, running=False), self.best_update(state, best), state]

    def save(self, state: QueryState | None, *values: Any) -> list[Any]:
        """values = verdict radios (in panel order)..., best, true answer, reason, annotator."""
        verdict_values = values[: len(self.names)]
        best, true_answer, reason, annotator = values[len(self.names):]
        if not state or not state.query_id:
            return self._saved(gr.update(value="⚠️ Ask a question first; there is nothing to judge yet."), state)
        verdicts = answer_grid.verdicts_from(verdict_values, self.order(state))
        best_name = self.best_backend(state, best)
        if not verdicts and not best_name:
            return self._saved("⚠️ Mark at least one answer correct or wrong, or pick the best one.", state)
        was_hidden = state.hidden
        payload = {"verdicts": verdicts, "best": best_name, "true_answer": true_answer, "reason": reason,
                   "annotator": annotator or "anonymous"}
        try:
            saved = self.runtime.judge(
                state.query_id, verdicts, best=best_name, true_answer=true_answer, reason=reason,
                annotator=annotator or "anonymous", client_key=client_key(state.query_id, payload), blind=was_hidden,
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
        with gr.Row(equal_height=True):
            gr.Markdown("#### Every backend answers, side by side", elem_id=f"{self.prefix}answers-title")
            blind = gr.Checkbox(
                label="Blind: hide which model gave which answer until I save", value=False,
                elem_id=f"{self.prefix}blind", scale=0, min_width=300,
            )
        panels = answer_grid.build(infos, prefix=self.prefix)
        judge = judge_bar.build(self.names, prefix=self.prefix)

        bodies = [p.body for p in panels]
        self.bodies = bodies
        verdicts = [p.verdict for p in panels]
        outputs = [inputs.notice, inputs.labels, card.card, card.chart, *bodies, judge.submit, judge.best, state]
        reset = [*verdicts, judge.best, judge.true_answer, judge.reason, judge.status]

        def clear_judgment() -> list[Any]:
            return [None] * len(verdicts) + [None, "", "", ""]

        for trigger in (inputs.run.click, inputs.question.submit):
            trigger(clear_judgment, None, reset, queue=False).then(
                self.ask, [inputs.image, inputs.question, inputs.labels, card.lambda_cost, state, blind], outputs,
                concurrency_id="compare", concurrency_limit=self.runtime.config.max_concurrent_compares,
                show_progress="hidden",
            )
        card.lambda_cost.change(self.rerank, [card.lambda_cost, state], [card.card, card.chart, *bodies, state], queue=False,
                                show_progress="hidden")
        def save_as_user(request: gr.Request, current: QueryState, *values: Any) -> list[Any]:
            # Behind --auth the judgment is the logged-in user's, whatever the name box holds.
            user = getattr(request, "username", None)
            return self.save(current, *values[:-1], user or values[-1])

        judge.submit.click(
            save_as_user, [state, *verdicts, judge.best, judge.true_answer, judge.reason, annotator],
            [judge.status, judge.submit, card.card, card.chart, *bodies, judge.best, state],
        )

        def use_example(evt: gr.SelectData):
            example = examples[evt.index]
            return example.image, example.question, example.labels

        inputs.gallery.select(use_example, None, [inputs.image, inputs.question, inputs.labels], queue=False)
        if examples:
            inputs.random.click(lambda: input_panel.pick_random(examples), None, [inputs.image, inputs.question, inputs.labels], queue=False)
