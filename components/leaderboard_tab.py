"""Leaderboard and router tab: accuracy per category, Bradley-Terry ratings, router versions, retrain, export."""

from __future__ import annotations

import html
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from components.cost_quality import CostQualityPanel
from components.figures import empty_figure, titled
from components.learning_curve import (
    add_rejected_trace,
    is_rejected,
    read_simulation,
    simulator_figure,
    split_by_outcome,
    versions_learning_figure,
)
from components.runtime import Runtime
from components.staging import staging_folder
from components.study_panel import headline_ratings_figure
from data.ratings import bradley_terry_with_ci
from data.store import stats_to_frame

log = logging.getLogger("routelens")

#: Heatmap cells with fewer judgments than this are greyed (their percentage hidden): too few to read.
MIN_CELL_JUDGMENTS = 5
#: The export's table choices, as shown -> as :func:`data.export.export_download` names them.
EXPORT_TABLES = {"judgments": "judgments", "performance pairs": "pairs", "both (a zip of two files)": "both"}


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
    figure.update_layout(title=titled("Accuracy per backend and task category",
                                      f"from people's judgments; grey cells: fewer than {MIN_CELL_JUDGMENTS} judgments"),
                         height=140 + 40 * len(pivot), margin=dict(l=10, r=10, t=60, b=10))
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


def with_outcomes(versions: list[dict[str, Any]], store: Any | None) -> list[dict[str, Any]]:
    """``versions`` with each one's promotion outcome from its card: ``promoted`` (True, False, or None when
    the card has no record) and ``promotion_reason``. Read from the store's ``router_versions`` cards, else
    from the version's own card file; an unreadable one is left unknown (drawn as promoted)."""
    from router.versions import read_card

    cards: dict[str, Any] = {}
    if store is not None:
        try:
            cards = {row["version"]: row.get("card") or {} for row in store.router_versions()}
        except Exception as exc:  # the chart still draws, without outcomes
            log.warning("router versions' cards unreadable: %s", exc)
    out = []
    for version in versions:
        card = cards.get(version["version"])
        if card is None and version.get("path"):
            try:
                card = read_card(version["path"])
            except Exception:  # a missing folder: outcome unknown
                card = {}
        promotion = (card or {}).get("promotion") or {}
        promoted = promotion.get("promoted")
        out.append({**version, "promoted": promoted if isinstance(promoted, bool) else None,
                    "promotion_reason": promotion.get("reason")})
    return out


def versions_figure(versions: list[dict[str, Any]]):
    """``versions``: ``RouterService.versions()`` rows (held-out metrics flat) with their outcome
    (:func:`with_outcomes`). Versions that served (promoted or active) are the lines; rejected retrain
    attempts are grey crosses off the lines, with the reason on hover, so a rejection never reads as a fall."""
    import plotly.graph_objects as go

    rows = [v for v in versions if v.get("routed_accuracy") is not None]
    if not rows:
        return _empty("No trained router versions with held-out metrics yet.")
    kept, rejected = split_by_outcome(rows)
    figure = go.Figure()
    for key, label, colour in (("routed_accuracy", "routed", "#4f46e5"), ("best_single_accuracy", "best single", "#64748b"),
                               ("oracle_accuracy", "oracle", "#16a34a")):
        figure.add_scatter(x=[v["version"] for v in kept], y=[(v.get(key) or 0) * 100 for v in kept], mode="lines+markers",
                           name=label, line=dict(color=colour), marker=dict(color=colour),
                           customdata=["active" if v.get("active") else "promoted" for v in kept],
                           hovertemplate=f"%{{x}} (%{{customdata}}): {label} %{{y:.1f}}%<extra></extra>")
    add_rejected_trace(figure, [v["version"] for v in rejected], rejected, [v["routed_accuracy"] * 100 for v in rejected])
    order = [v["version"] for v in rows]  # every version in the order it was made, rejected ones in place
    note = (f"{len(rejected)} rejected attempt(s): grey ✕, not promoted, so off the lines" if rejected
            else "each version on its own held-out rows")
    figure.update_layout(title=titled("Router held-out accuracy by version", note), yaxis=dict(ticksuffix="%"), height=320,
                         margin=dict(l=10, r=10, t=60, b=10), xaxis=dict(type="category", categoryorder="array", categoryarray=order))
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
    note = "the active router on its held-out rows" + (f" · ECE {ece:.3f}" if isinstance(ece, (int, float)) else "")
    figure.update_layout(title=titled("Reliability diagram", note), xaxis=dict(title="predicted P(correct)", range=[0, 1]),
                         yaxis=dict(title="observed accuracy", range=[0, 1]), height=320, margin=dict(l=10, r=10, t=60, b=10))
    return figure


def progress_markdown(fraction: float, desc: str, width: int = 24) -> str:
    """A retrain's progress as Markdown: a bar of ``width`` cells, the percentage and the step in words."""
    fraction = min(1.0, max(0.0, float(fraction)))
    filled = round(fraction * width)
    return f"**Retraining…** `{'▰' * filled}{'▱' * (width - filled)}` {fraction:.0%}\n\n{html.escape(desc)}"


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
        self._retraining = threading.Lock()

    def refresh(self) -> list[Any]:
        store = self.runtime.store
        stats = self.runtime.stats()
        versions = with_outcomes(self.runtime.router.versions(), store)
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
        """Every version, the active one marked and selected (so the dropdown is never blank), rejected
        attempts marked as such (they can still be activated by hand)."""
        def label(v: dict[str, Any]) -> str:
            return f"{v['version']} (active)" if v.get("active") else f"{v['version']} (not promoted)" if is_rejected(v) else v["version"]

        choices = [(label(v), v["version"]) for v in versions]
        active = next((v["version"] for v in versions if v.get("active")), None)
        return gr.update(choices=choices, value=active)

    def retrain(self, force: bool, progress=None) -> str:
        """Retrain, telling ``progress(fraction, desc=...)`` each real step as it starts (reading the data,
        features per image and question, training, held-out evaluation, the promotion decision)."""
        if progress is not None:
            progress(0.0, desc="Starting: loading the feature models")
        try:
            report = self.runtime.router.retrain(force=force, progress=progress)
        except Exception as exc:  # any training failure becomes a message
            log.exception("retrain failed")
            return f"⚠️ Retraining failed: {html.escape(str(exc))}"
        if progress is not None:
            progress(1.0, desc="Done")
        return report

    def retrain_stream(self, force: bool, *, every_s: float = 0.25) -> Iterator[str]:
        """The retrain as the page shows it: a progress line per real step as it happens (at most one per
        ``every_s``), then the report. The training runs in its own thread; one retrain at a time."""
        if not self._retraining.acquire(blocking=False):
            yield "⚠️ A retrain is already running; its report appears where it was started."
            return
        events: queue.Queue[tuple[float, str] | None] = queue.Queue()
        outcome: dict[str, str] = {}

        def work() -> None:
            try:
                outcome["report"] = self.retrain(force, lambda fraction, desc="": events.put((float(fraction), str(desc))))
            finally:
                self._retraining.release()
                events.put(None)

        threading.Thread(target=work, name="retrain", daemon=True).start()
        latest, shown_at, done = (0.0, "Starting"), 0.0, False
        while not done:
            item = events.get()
            while item is not None:  # coalesce what arrived meanwhile; show the newest
                latest = item
                try:
                    item = events.get(timeout=max(0.0, every_s - (time.monotonic() - shown_at)))
                except queue.Empty:
                    break
            done = item is None
            if not done:
                shown_at = time.monotonic()
                yield progress_markdown(*latest)
        yield outcome.get("report", "⚠️ Retraining stopped without a report.")

    def rollback(self, version: str | None) -> str:
        if not version:
            return "Pick a version to roll back to."
        try:
            self.runtime.router.activate(version)
        except Exception as exc:  # an unknown or broken version becomes a message
            return f"⚠️ Could not activate {html.escape(version)}: {html.escape(str(exc))}"
        return f"✓ Router {html.escape(version)} is now active."

    def export(self, fmt: str, tables: str = "judgments") -> tuple[Any, str]:
        """(the file for the download box, with a label saying what it holds; a status line). One table
        is one plain file; both tables are a zip whose name and label say so. No server path in either."""
        from data.export import export_download

        if self.runtime.store is None:
            return gr.update(value=None, label="Download"), "⚠️ The database is unavailable: nothing to export."
        try:
            download = export_download(self.runtime.store, fmt, EXPORT_TABLES.get(tables, tables),
                                       staging_folder("export-"))
        except Exception as exc:  # a failed export becomes a message
            log.exception("export failed")
            return gr.update(value=None, label="Download"), f"⚠️ Export failed: {html.escape(str(exc))}"
        return (gr.update(value=str(download.path), label=download.label),
                f"✓ {html.escape(download.label)}. Photos are named by their sha256 key; no file paths.")

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
                report = gr.Markdown("", elem_id="lb-report", min_height=40)
            with gr.Column():
                version = gr.Dropdown(label="Router versions", choices=[], elem_id="lb-version")
                rollback = gr.Button("Activate this version (rollback)", elem_id="lb-rollback")
                rollback_status = gr.Markdown("")
        gr.Markdown("### Export judgments and performance pairs")
        with gr.Row():
            with gr.Column():
                tables = gr.Radio(list(EXPORT_TABLES), value=next(iter(EXPORT_TABLES)), label="Table", elem_id="lb-tables")
                fmt = gr.Radio(["csv", "parquet", "jsonl"], value="csv", label="Format", elem_id="lb-format")
                export = gr.Button("Prepare download", elem_id="lb-export")
            with gr.Column():
                download = gr.File(label="Download", interactive=False, height=90, elem_id="lb-download")
                export_status = gr.Markdown("", elem_id="lb-export-status")

        outputs = [counts, accuracy, ratings, versions_plot, reliability, version, learning, simulated,
                   *self.cost_quality.outputs]
        refresh.click(self.refresh, None, outputs)

        def do_retrain(force_value: bool):
            yield from self.retrain_stream(force_value)

        # The steps stream into the report box (a visible bar and the step in words); Gradio's own overlay
        # would cover them, so it only shows a small spinner.
        retrain.click(do_retrain, [force], [report], concurrency_id="retrain", concurrency_limit=1,
                      show_progress="minimal").then(self.refresh, None, outputs)
        rollback.click(self.rollback, [version], [rollback_status]).then(self.refresh, None, outputs)
        export.click(self.export, [fmt, tables], [download, export_status])
        return refresh, outputs


def _empty(message: str):
    return empty_figure(message, height=260)
