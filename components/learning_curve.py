"""The Leaderboard's learning-loop panels: how the router improves as judgments come in.

* :func:`versions_learning_figure`: each router version's held-out routed accuracy (with its 95%
  bootstrap interval) against the number of people's judgments it was trained on, beside the best
  single backend and the category rule on the same held-out rows.
* :func:`simulator_figure`: the replay simulator's curves per annotation strategy (mean over seeds with
  its interval), read from the result the project ships (``data/benchmarks/simulate_offline.json``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from components.annotate_order import SIMULATION_FILE, STRATEGY_WORDS
from components.figures import empty_figure, integer_axis, titled

log = logging.getLogger("routelens")

_LAYOUT = dict(height=340, margin=dict(l=10, r=10, t=60, b=10), legend=dict(orientation="h", y=-0.3))
STRATEGY_COLOURS = {"random": "#94a3b8", "uncertainty": "#4f46e5", "regret": "#0891b2", "kcenter": "#16a34a",
                    "stratified": "#d97706"}


#: How a retrain attempt that was not promoted is drawn: a hollow grey cross, off the line of versions that served.
REJECTED_LABEL = "rejected (not promoted)"
REJECTED_MARKER = dict(symbol="x-open", size=12, color="#94a3b8", line=dict(width=1.5, color="#94a3b8"))


def is_rejected(version: dict[str, Any]) -> bool:
    """A retrain attempt that was not promoted and is not active now (``promoted`` False in its card's
    promotion record). Versions with no record (older ones) count as promoted."""
    return version.get("promoted") is False and not version.get("active")


def split_by_outcome(versions: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(versions that were promoted or are active, rejected attempts), order kept."""
    return [v for v in versions if not is_rejected(v)], [v for v in versions if is_rejected(v)]


def reason_hover(version: dict[str, Any], width: int = 70) -> str:
    """The promotion decision's reason, escaped and wrapped for a plotly hover box."""
    import html
    import textwrap

    reason = str(version.get("promotion_reason") or "no reason recorded")
    return "<br>".join(html.escape(line) for line in textwrap.wrap(reason, width)) or "no reason recorded"


def add_rejected_trace(figure: Any, x: list[Any], versions: list[dict[str, Any]], y: list[float]) -> None:
    """Rejected attempts as separate hollow grey crosses with the reason on hover (never on the line)."""
    if not versions:
        return
    figure.add_scatter(
        x=x, y=y, mode="markers", name=REJECTED_LABEL, marker=REJECTED_MARKER,
        customdata=[[v["version"], reason_hover(v)] for v in versions],
        hovertemplate=f"%{{customdata[0]}}: {REJECTED_LABEL}<br>routed %{{y:.1f}}%<br>%{{customdata[1]}}<extra></extra>",
    )


def versions_learning_figure(versions: list[dict[str, Any]]):
    """Routed accuracy of every version with held-out metrics against its judged queries: the versions that
    served (promoted or active) as the line, rejected attempts as grey crosses beside it."""
    import plotly.graph_objects as go

    measured = [v for v in versions if v.get("routed_accuracy") is not None]
    if not measured:
        return empty_figure("No router versions with held-out metrics yet: retrain after some judgments.", height=260)
    measured.sort(key=lambda v: (int(v.get("judged_queries") or 0), str(v.get("created_at") or "")))
    rows, rejected = split_by_outcome(measured)
    x = [int(v.get("judged_queries") or 0) for v in rows]
    y = [100 * float(v["routed_accuracy"]) for v in rows]
    ci = [v.get("routed_accuracy_ci95") or [v["routed_accuracy"], v["routed_accuracy"]] for v in rows]
    figure = go.Figure()
    figure.add_scatter(
        x=x, y=y, mode="markers+lines", name="router versions that served (held-out)", marker=dict(size=9, color="#4f46e5"),
        error_y=dict(type="data", symmetric=False, array=[100 * float(h) - a for (_, h), a in zip(ci, y, strict=True)],
                     arrayminus=[a - 100 * float(lo) for (lo, _), a in zip(ci, y, strict=True)]),
        customdata=[[v["version"], "active" if v.get("active") else ""] for v in rows],
        hovertemplate="%{customdata[0]} %{customdata[1]}<br>%{x} judged queries · routed %{y:.1f}%<extra></extra>",
    )
    for key, label, colour in (("best_single_accuracy", "best single backend", "#64748b"),
                               ("category_rule_accuracy", "category rule", "#d97706")):
        values = [v.get(key) for v in rows]
        if any(value is not None for value in values):
            figure.add_scatter(x=x, y=[None if value is None else 100 * float(value) for value in values], mode="markers",
                               name=label, marker=dict(symbol="line-ew-open", size=16, color=colour, line=dict(width=2)))
    add_rejected_trace(figure, [int(v.get("judged_queries") or 0) for v in rejected], rejected,
                       [100 * float(v["routed_accuracy"]) for v in rejected])
    counts = [float(value) for value in x] + [float(v.get("judged_queries") or 0) for v in rejected]
    figure.update_layout(title=titled("Learning curve: held-out accuracy by judgments trained on",
                                      "each version that served, with its 95% CI" + ("; grey ✕: rejected attempts" if rejected else "")),
                         xaxis=dict(title="people's judgments in its training data", **integer_axis(counts)),
                         yaxis=dict(title="routed accuracy", ticksuffix="%"), **_LAYOUT)
    return figure


def read_simulation(path: Path = SIMULATION_FILE) -> dict[str, Any] | None:
    """The shipped simulator result, or None when it is missing or unreadable (logged)."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("no annotation simulator result at %s (%s)", path, exc)
        return None
    return result if isinstance(result, dict) and isinstance(result.get("strategies"), dict) else None


def simulator_figure(result: dict[str, Any] | None):
    """One line per strategy (mean over seeds) with a band for its interval."""
    import plotly.graph_objects as go

    if not result or not result.get("strategies"):
        return empty_figure("No replay-simulator result: run scripts/bench_simulate.py.", height=260)
    figure = go.Figure()
    fractions = result.get("judgments_to_match_random") or {}
    for name, curve in result["strategies"].items():
        colour = STRATEGY_COLOURS.get(name, "#334155")
        budgets = list(curve.get("budgets") or [])
        accuracy = [100 * float(a) for a in curve.get("routed_accuracy") or []]
        bands = curve.get("routed_accuracy_ci95") or []
        if len(bands) == len(budgets) and budgets:
            figure.add_scatter(x=budgets + budgets[::-1], y=[100 * float(h) for _, h in bands] + [100 * float(lo) for lo, _ in bands][::-1],
                               fill="toself", fillcolor=colour, opacity=0.12, line=dict(width=0), hoverinfo="skip",
                               showlegend=False)
        fraction = fractions.get(name)
        suffix = "" if name == "random" else (" · never matched random" if fraction is None else f" · {fraction:.0%} of random's judgments")
        figure.add_scatter(x=budgets, y=accuracy, mode="lines+markers", name=f"{STRATEGY_WORDS.get(name, name)}{suffix}",
                           line=dict(color=colour), marker=dict(size=5))
    seeds = (result.get("settings") or {}).get("seeds")
    note = "held-out accuracy per annotation order" + (f", mean of {seeds} seeds" if seeds else "")
    figure.update_layout(title=titled("Replay simulator: accuracy by judgments", note), xaxis=dict(title="judgments"),
                         yaxis=dict(title="routed accuracy", ticksuffix="%"), **_LAYOUT)
    return figure


__all__ = ["REJECTED_LABEL", "add_rejected_trace", "is_rejected", "read_simulation", "simulator_figure", "split_by_outcome",
           "versions_learning_figure"]
