"""Leaderboard and router tab: accuracy per category, Bradley-Terry ratings, router versions, retrain, export."""

from __future__ import annotations

import html
import logging
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from components.cost_quality import CostQualityPanel
from components.figures import empty_figure
from components.learning_curve import read_simulation, simulator_figure, versions_learning_figure
from components.runtime import Runtime
from components.study_panel import headline_ratings_figure
from data.ratings import bradley_terry_with_ci
from data.store import stats_to_frame

log = logging.getLogger("routelens")

#: Heatmap cells with fewer judgments than this are greyed (their percentage hidden): too few to read.
MIN_CELL_JUDGMENTS = 5


def accuracy_figure(frame):
    """Heatmap: accuracy per backend (rows) per category (columns), with counts on hover."""
    import plotly.graph_objects as go

    if frame is None or len(frame) == 0:
        return _empty("No judgments yet: judge some answers in Compare or Annotate.")
    pivot = frame.pivot_table(index="backend", columns="category", values="accuracy", aggfunc="mean")
    counts = frame.pivot_table(index="backend", columns="category", values="n", aggfunc="sum").reindex_like(pivot)
    values, n = pivot.values * 100, counts.fillna(0).values.astype(int)

    def label(v: float, k: int) -> str:
        if v != v:
            return ""
        return f"{v:.0f}%<br>n={k}" if k >= MIN_CELL_JUDGMENTS else f"n={k}"

    figure = go.Figure(
        go.Heatmap(
            z=values, x=list(pivot.columns), y=list(pivot.index), colorscale="Blues", zmin=0, zmax=100,
            text=[[label(v, k) for v, k in zip(row, nrow, strict=True)] for row, nrow in zip(values, n, strict=True)],
            texttemplate="%{text}", customdata=n,
            hovertemplate="%{y} · %{x}: %{z:.1f}% of %{customdata} judged<extra></extra>", colorbar=dict(ticksuffix="%"),
        )
    )
    # Cells with fewer than MIN_CELL_JUDGMENTS judgments are greyed over: too few to read as accuracy.
    thin = [[1.0 if (v == v and k < MIN_CELL_JUDGMENTS) else None for v, k in zip(row, nrow, strict=True)]
            for row, nrow in zip(values, n, strict=True)]
    if any(c is not None for row in thin for c in row):
        figure.add_heatmap(z=thin, x=list(pivot.columns), y=list(pivot.index), colorscale=[[0, "#e2e8f0"], [1, "#e2e8f0"]],
                           showscale=False, hoverinfo="skip", text=[[label(v, k) if c else "" for v, k, c in zip(row, nrow, crow, strict=True)]
                                                                    for row, nrow, crow in zip(values, n, thin, strict=True)],
                           texttemplate="%{text}", name=f"fewer than {MIN_CELL_JUDGMENTS} judgments")
    figure.update_layout(title=f"Accuracy per backend and task category (from judgments; grey: fewer than {MIN_CELL_JUDGMENTS})", height=120 + 40 * len(pivot),
                         margin=dict(l=10, r=10, t=40, b=10))
    return figure


def ratings_figure(outcomes: list[tuple[str, str, float]], names: list[str]):
    import plotly.graph_objects as go

    if not outcomes:
        return _empty("No 'best answer' judgments yet.")
    ratings = bradley_terry_with_ci(outcomes, names, rounds=100)
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
    figure.update_layout(title="Bradley-Terry rating from 'best answer' votes (95% bootstrap CI)",
                         height=120 + 40 * len(ratings), yaxis=dict(autorange="reversed"), margin=dict(l=10, r=10, t=40, b=10))
    return figure


def versions_figure(versions: list[dict[str, Any]]):
    import plotly.graph_objects as go

    """``versions``: ``RouterService.versions()`` rows, which carry the held-out metrics flat."""
    rows = [v for v in versions if v.get("routed_accuracy") is not None]
    if not rows:
        return _empty("No trained router versions with held-out metrics yet.")
    names = [v["version"] for v in rows]
    figure = go.Figure()
    for key, label in (("routed_accuracy", "routed"), ("best_single_accuracy", "best single"), ("oracle_accuracy", "oracle")):
        figure.add_scatter(x=names, y=[(v.get(key) or 0) * 100 for v in rows], mode="lines+markers", name=label)
    figure.update_layout(title="Router held-out accuracy across versions", yaxis=dict(ticksuffix="%"), height=300,
                         margin=dict(l=10, r=10, t=40, b=10))
    return figure


def reliability_figure(card: dict[str, Any] | None):
    import plotly.graph_objects as go

    bins = ((card or {}).get("metrics") or {}).get("reliability")
    if not bins:
        return _empty("The active router has no reliability data.")
    figure = go.Figure()
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line=dict(dash="dash", color="#94a3b8"))
    figure.add_scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins], mode="lines+markers",
                       name="router", marker=dict(size=[4 + min(20, b.get("count", 1) ** 0.5) for b in bins]))
    ece = (card.get("metrics") or {}).get("ece")
    title = "Reliability diagram (held-out)" + (f" · ECE {ece:.3f}" if isinstance(ece, (int, float)) else "")
    figure.update_layout(title=title, xaxis=dict(title="predicted P(correct)", range=[0, 1]),
                         yaxis=dict(title="observed accuracy", range=[0, 1]), height=320, margin=dict(l=10, r=10, t=40, b=10))
    return figure


def counts_markdown(stats: dict[str, Any]) -> str:
    if "error" in stats:
        return f"⚠️ {html.escape(str(stats['error']))}"
    counts = stats.get("counts") or {}
    parts = [f"**{value:,}** {key.replace('_', ' ')}" for key, value in counts.items()]
    return " · ".join(parts) if parts else "No data yet."


class LeaderboardView:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.names = [b.name for b in runtime.backends]
        self.cost_quality = CostQualityPanel(lambda: self.runtime.router.card())

    def refresh(self) -> list[Any]:
        store = self.runtime.store
        stats = self.runtime.stats()
        versions = self.runtime.router.versions()
        if store is None:
            empty = _empty("The database is unavailable.")
            return [counts_markdown(stats), empty, empty, empty, empty, self._version_choices(versions),
                    versions_learning_figure(versions), simulator_figure(read_simulation()), *self.cost_quality.refresh()]
        return [
            counts_markdown(stats),
            accuracy_figure(stats_to_frame(stats)),  # the stats already read, not a second query
            headline_ratings_figure(store, self.names),  # fair (blind) votes; all while none is blind
            versions_figure(versions),
            reliability_figure(self.runtime.router.card()),
            self._version_choices(versions),
            versions_learning_figure(versions),
            simulator_figure(read_simulation()),
            *self.cost_quality.refresh(),
        ]

    @staticmethod
    def _version_choices(versions: list[dict[str, Any]]):
        """Every version, the active one marked and selected (so the dropdown is never blank)."""
        choices = [(f"{v['version']} (active)" if v.get("active") else v["version"], v["version"]) for v in versions]
        active = next((v["version"] for v in versions if v.get("active")), None)
        return gr.update(choices=choices, value=active)

    def retrain(self, force: bool, progress=None) -> str:
        try:
            report = self.runtime.router.retrain(force=force, progress=progress)
        except Exception as exc:  # any training failure becomes a message
            log.exception("retrain failed")
            return f"⚠️ Retraining failed: {html.escape(str(exc))}"
        return report

    def rollback(self, version: str | None) -> str:
        if not version:
            return "Pick a version to roll back to."
        try:
            self.runtime.router.activate(version)
        except Exception as exc:  # an unknown or broken version becomes a message
            return f"⚠️ Could not activate {html.escape(version)}: {html.escape(str(exc))}"
        return f"✓ Router {html.escape(version)} is now active."

    def export(self, fmt: str) -> str | None:
        from data.export import export_all

        if self.runtime.store is None:
            return None
        folder = Path(tempfile.mkdtemp(prefix="routelens-export-"))
        return str(export_all(self.runtime.store, fmt, folder))

    def build(self) -> Any:
        with gr.Row():
            counts = gr.Markdown("", elem_id="lb-counts")
            refresh = gr.Button("↻ Refresh", size="sm", elem_id="lb-refresh")
        with gr.Row():
            accuracy = gr.Plot(show_label=False, elem_id="lb-accuracy")
            ratings = gr.Plot(show_label=False, elem_id="lb-ratings")
        gr.Markdown("### Router")
        with gr.Row():
            versions_plot = gr.Plot(show_label=False, elem_id="lb-versions")
            reliability = gr.Plot(show_label=False, elem_id="lb-reliability")
        gr.Markdown("### The learning loop: judgments → a better router")
        with gr.Row():
            learning = gr.Plot(show_label=False, elem_id="lb-learning")
            simulated = gr.Plot(show_label=False, elem_id="lb-simulated")
        self.cost_quality.build()
        with gr.Row():
            with gr.Column():
                force = gr.Checkbox(label="Force: promote even if it does not beat the active router", value=False)
                retrain = gr.Button("Retrain the router from all judgments", variant="primary", elem_id="lb-retrain")
                report = gr.Markdown("", elem_id="lb-report")
            with gr.Column():
                version = gr.Dropdown(label="Router versions", choices=[], elem_id="lb-version")
                rollback = gr.Button("Activate this version (rollback)", elem_id="lb-rollback")
                rollback_status = gr.Markdown("")
        gr.Markdown("### Export judgments and performance pairs")
        with gr.Row():
            fmt = gr.Radio(["csv", "parquet", "jsonl"], value="csv", label="Format", elem_id="lb-format")
            export = gr.Button("Prepare download", elem_id="lb-export")
            download = gr.File(label="Download", interactive=False, height=90, elem_id="lb-download")

        outputs = [counts, accuracy, ratings, versions_plot, reliability, version, learning, simulated,
                   *self.cost_quality.outputs]
        refresh.click(self.refresh, None, outputs)

        def do_retrain(force_value: bool, progress=gr.Progress()):
            return self.retrain(force_value, progress)

        retrain.click(do_retrain, [force], [report], concurrency_id="retrain", concurrency_limit=1).then(self.refresh, None, outputs)
        rollback.click(self.rollback, [version], [rollback_status]).then(self.refresh, None, outputs)
        export.click(self.export, [fmt], [download])
        return refresh, outputs


def _empty(message: str):
    return empty_figure(message, height=260)
