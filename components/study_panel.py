"""The Leaderboard's study panel: ratings from fair votes (per category, with a toggle to count every vote),
annotator agreement (Krippendorff's alpha), the items where annotators split with a place for the lead
annotator's final verdict, and the votes as arena battles to download.

"Fair votes" are the battles of blind judgments that no self-identifying answer flagged (FastChat's
anonymous battles). The headline rating figure (:func:`headline_ratings_figure`, drawn by the
Leaderboard's refresh) counts them, and while there are none yet, every vote, saying so in its title.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from components.figures import empty_figure
from components.runtime import Runtime
from components.staging import staging_folder
from data.battles import Battle, outcomes
from data.ratings import bradley_terry_with_ci

log = logging.getLogger("routelens")

VOTES = [("Fair votes: blind, no model named itself", "fair"), ("All votes", "all")]
ALL_CATEGORIES = "all categories"
FINAL = ["correct", "wrong"]
FINAL_VALUES = {"correct": 1.0, "wrong": 0.0}


def ratings_figure(battles: Sequence[Battle], names: Sequence[str], title: str, *, rounds: int = 100,
                   note: str | None = None):
    """Bradley-Terry ratings with 95% bootstrap intervals, best first (one marker per backend); ``note``
    is the title's smaller second line (a half-width chart cuts a long one-line title off)."""
    import plotly.graph_objects as go

    from components.figures import titled

    if not battles:
        return _empty("No votes here yet.")
    ratings = bradley_terry_with_ci(outcomes(battles), list(names), rounds=rounds)
    figure = go.Figure(
        go.Scatter(
            x=[r.rating for r in ratings], y=[r.backend for r in ratings], mode="markers",
            marker=dict(size=11, color="#4f46e5"),
            error_x=dict(type="data", symmetric=False, array=[r.high - r.rating for r in ratings],
                         arrayminus=[r.rating - r.low for r in ratings]),
            customdata=[r.games for r in ratings],
            hovertemplate="%{y}: %{x:.0f} (%{customdata} comparisons)<extra></extra>",
        )
    )
    low = min(r.low for r in ratings) if ratings else 1000.0
    high = max(r.high for r in ratings) if ratings else 1000.0
    pad = max(10.0, (50.0 - (high - low)) / 2)  # whole rating points, never a 999 / 999.5 / 1000 axis
    figure.update_layout(title=titled(title, note), height=130 + 40 * len(ratings), yaxis=dict(autorange="reversed"),
                         xaxis=dict(range=[low - pad, high + pad], tickformat=".0f", title="rating (1000 = average)"),
                         margin=dict(l=10, r=10, t=60 if note else 40, b=10))
    return figure


def headline_ratings_figure(store: Any, names: Sequence[str]):
    """The Leaderboard's rating figure: fair votes, or every vote while none is blind (the title says which)."""
    fair = store.battles(anonymous_only=True)
    if fair:
        return ratings_figure(fair, names, "Bradley-Terry rating", note=f"{len(fair)} fair votes (blind), 95% bootstrap CI")
    every = store.battles()
    if not every:
        return _empty("No judgments yet: judge some answers in Compare or Annotate.")
    return ratings_figure(every, names, "Bradley-Terry rating",
                          note=f"all {len(every)} votes, none blind yet; 95% bootstrap CI")


def ratings_rows(battles: Sequence[Battle], names: Sequence[str]) -> list[list[Any]]:
    ratings = bradley_terry_with_ci(outcomes(battles), list(names), rounds=100) if battles else []
    return [[r.backend, round(r.rating), f"{r.low:.0f} – {r.high:.0f}", r.games] for r in ratings]


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def agreement_rows(groups: dict[str, dict[str, Any]]) -> list[list[Any]]:
    return [[name, g["items"], _number(g["krippendorff_alpha"]), _number(g["observed_agreement"])] for name, g in groups.items()]


def disagreement_label(item: dict[str, Any]) -> str:
    split = [f"{b} {'/'.join('✓' if v >= 0.5 else '✗' for v in info['verdicts'].values())}"
             for b, info in item["backends"].items() if info["split"]]
    question = (item["question"] or "")[:60]
    mark = "✓ final" if item["adjudicated"] else "open"
    return f"{mark} · {question} · {', '.join(split)} · {item['query_id'][:8]}"


def disagreement_html(item: dict[str, Any] | None) -> str:
    if not item:
        return "<div class='rl-meta'>Pick an item where annotators split.</div>"
    rows = []
    for backend, info in item["backends"].items():
        verdicts = ", ".join(
            f"{html.escape(who)}: {'correct' if v >= 0.5 else 'wrong'}" for who, v in info["verdicts"].items()
        )
        final = info["final"]
        final_text = (f"final: <b>{'correct' if final['correct'] >= 0.5 else 'wrong'}</b> by {html.escape(final['adjudicator'])}"
                      if final else ("<b>split</b>" if info["split"] else "agreed"))
        rows.append(f"<tr><td><b>{html.escape(backend)}</b></td><td>{html.escape(str(info['answer'] or ''))}</td>"
                    f"<td>{verdicts}</td><td>{final_text}</td></tr>")
    reasons = "".join(f"<li>{html.escape(who)}: {html.escape(text)}</li>" for who, text in item["reasons"].items())
    return (
        f"<div class='rl-disagreement'><div><b>Q:</b> {html.escape(item['question'] or '')} "
        f"<span class='rl-meta'>· {html.escape(item['category'])} · query {html.escape(item['query_id'][:8])}</span></div>"
        "<table class='rl-scores'><tr><th>backend</th><th>answer</th><th>verdicts</th><th></th></tr>"
        f"{''.join(rows)}</table>{'<ul>' + reasons + '</ul>' if reasons else ''}</div>"
    )


@dataclass
class StudyHandles:
    refresh_outputs: list[Any]


class StudyPanel:
    """Built under the Leaderboard tab; bound to one Runtime (shared), state per user in the components."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.names = [b.name for b in runtime.backends]

    # ---------------------------------------------------------------- reads
    def _battles(self, votes: str, category: str | None) -> list[Battle]:
        store = self.runtime.store
        if store is None:
            return []
        battles = store.battles(anonymous_only=votes != "all")
        if category and category != ALL_CATEGORIES:
            battles = [b for b in battles if (b.category or "unknown") == category]
        return battles

    def ratings(self, votes: str, category: str | None) -> list[Any]:
        battles = self._battles(votes, category)
        what = "fair votes" if votes != "all" else "all votes"
        where = "" if not category or category == ALL_CATEGORIES else f", {category}"
        title = f"Bradley-Terry rating from {len(battles)} {what}{where} (95% bootstrap CI)"
        return [ratings_figure(battles, self.names, title), ratings_rows(battles, self.names)]

    def _agreement(self) -> dict[str, Any] | None:
        from data.agreement import report

        return report(self.runtime.store) if self.runtime.store is not None else None

    def refresh(self, votes: str = "fair", category: str | None = ALL_CATEGORIES) -> list[Any]:
        """Summary, agreement tables, ratings (plot, table), category choices, disagreement choices."""
        result = self._agreement()
        if result is None:
            empty = _empty("The database is unavailable.")
            return ["⚠️ The database is unavailable.", [], [], empty, [], gr.skip(), gr.skip()]
        summary = (
            f"**{result['items']}** item(s) judged by two or more annotators · Krippendorff's alpha "
            f"(nominal, per-backend verdicts): **{_number(result['krippendorff_alpha'])}** · observed agreement "
            f"{_number(result['observed_agreement'])} · **{len(result['disagreements'])}** item(s) where annotators split"
        )
        groups = {"overall": {k: result[k] for k in ("items", "krippendorff_alpha", "observed_agreement")}}
        groups.update({f"backend: {k}": v for k, v in result["per_backend"].items()})
        groups.update({f"category: {k}": v for k, v in result["per_category"].items()})
        annotators = [[name, a["units"], a["compared"], _number(a["agreement_with_majority"])]
                      for name, a in result["annotators"].items()]
        categories = sorted({b.category or "unknown" for b in self._battles("all", None)})
        if category not in categories:
            category = ALL_CATEGORIES
        plot, table = self.ratings(votes, category)
        split = [(disagreement_label(d), d["query_id"]) for d in result["disagreements"]]
        return [summary, agreement_rows(groups), annotators, plot, table,
                gr.update(choices=[ALL_CATEGORIES, *categories], value=category), gr.update(choices=split, value=None)]

    def pick(self, query_id: str | None) -> list[Any]:
        """The details of one disagreement and a final-verdict radio per split backend."""
        result = self._agreement()
        item = next((d for d in (result or {}).get("disagreements", []) if d["query_id"] == query_id), None)
        radios = []
        for name in self.names:
            info = (item or {}).get("backends", {}).get(name)
            final = info["final"] if info else None
            value = None if final is None else ("correct" if final["correct"] >= 0.5 else "wrong")
            radios.append(gr.update(visible=bool(info and info["split"]), value=value))
        return [disagreement_html(item), *radios]

    def adjudicate(self, query_id: str | None, adjudicator: str, reason: str, *finals: str | None) -> str:
        store = self.runtime.store
        if store is None:
            return "⚠️ The database is unavailable."
        if not query_id:
            return "⚠️ Pick an item first."
        name = (adjudicator or "").strip()
        if not name or name == "anonymous":
            return "⚠️ Type your name at the top first: the final verdict is stored under it."
        verdicts = {b: FINAL_VALUES[v] for b, v in zip(self.names, finals, strict=True) if v in FINAL_VALUES}
        try:
            saved = store.record_adjudication(query_id=query_id, verdicts=verdicts, adjudicator=name, reason=reason or None)
        except ValueError as exc:
            return f"⚠️ Not saved: {html.escape(str(exc), quote=False)}"
        except Exception as exc:  # StoreError and the like: tell the person
            log.error("final verdict not saved: %s", exc)
            return f"⚠️ **Not saved** — {html.escape(str(exc), quote=False)}"
        return f"✓ Saved {saved} final verdict(s); the router trains on them instead of the split votes."

    def arena_file(self) -> str | None:
        from data.export import export_arena

        if self.runtime.store is None:
            return None
        folder = staging_folder("arena-")
        path, _ = export_arena(self.runtime.store, folder / "votes.jsonl")
        return str(path)

    # ---------------------------------------------------------------- layout
    def build(self, annotator: Any) -> StudyHandles:
        gr.Markdown("### Study: fair ratings, agreement between annotators, disagreements")
        with gr.Row():
            votes = gr.Radio(VOTES, value="fair", label="Ratings count", elem_id="lb-votes")
            category = gr.Dropdown([ALL_CATEGORIES], value=ALL_CATEGORIES, label="Category", elem_id="lb-category")
        with gr.Row():
            ratings_plot = gr.Plot(show_label=False, elem_id="lb-fair-ratings")
            ratings_table = gr.Dataframe(headers=["backend", "rating", "95% CI", "battles"], interactive=False,
                                         elem_id="lb-fair-table")
        summary = gr.Markdown("", elem_id="lb-agreement")
        with gr.Row():
            groups = gr.Dataframe(headers=["over", "items", "Krippendorff's alpha", "observed agreement"],
                                  interactive=False, elem_id="lb-agreement-table")
            annotators = gr.Dataframe(headers=["annotator", "units", "compared", "agreement with majority"],
                                      interactive=False, elem_id="lb-annotators")
        split = gr.Dropdown([], label="Items where annotators split (pick one to record the final verdict)",
                            elem_id="lb-disagreements")
        details = gr.HTML(disagreement_html(None), elem_id="lb-disagreement")
        with gr.Row():
            finals = [gr.Radio(FINAL, label=f"Final verdict: {name}", visible=False, elem_id=f"lb-final-{i}")
                      for i, name in enumerate(self.names)]
        with gr.Row():
            reason = gr.Textbox(label="Why (optional)", max_lines=2, elem_id="lb-final-reason")
            save = gr.Button("Save final verdict (lead annotator)", elem_id="lb-adjudicate")
        status = gr.Markdown("", elem_id="lb-adjudicate-status")
        with gr.Row():
            arena = gr.Button("Prepare arena votes (JSONL, FastChat's battle fields)", elem_id="lb-arena")
            arena_file = gr.File(label="Arena votes", interactive=False, height=90, elem_id="lb-arena-file")

        outputs = [summary, groups, annotators, ratings_plot, ratings_table, category, split]
        for control in (votes, category):
            control.change(self.ratings, [votes, category], [ratings_plot, ratings_table])
        split.change(self.pick, [split], [details, *finals])

        def do_adjudicate(request: gr.Request, query_id: str, name: str, why: str, *values: str | None) -> str:
            # Behind --auth the final verdict is the logged-in user's, whatever the name box holds.
            return self.adjudicate(query_id, getattr(request, "username", None) or name, why, *values)

        save.click(do_adjudicate, [split, annotator, reason, *finals], [status]).then(
            self.refresh, [votes, category], outputs)
        arena.click(self.arena_file, None, [arena_file])
        self.inputs = [votes, category]
        return StudyHandles(refresh_outputs=outputs)


def _empty(message: str):
    return empty_figure(message, height=240)
