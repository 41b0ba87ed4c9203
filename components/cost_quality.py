"""The Leaderboard's cost-quality curve: the active router's accuracy against mean cost as lambda sweeps
from "always the cheapest" to 0, with every single backend as a point, overall or for one task category.

The data is computed at train time and kept in the router card (``card["metrics"]["cost_quality"]``,
written by ``router.evaluation.evaluate``), so drawing it is a pure function of the card and the page
does no routing work. :func:`cost_quality_figure` is that function; :class:`CostQualityPanel` mounts it
(a scope dropdown and a plot) under the Leaderboard's router section.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

OVERALL = "overall"


def _curve_data(card: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """``cost_quality`` from a card, or from its metrics passed directly."""
    if not card:
        return None
    if "cost_quality" in card:
        return card.get("cost_quality")
    return (card.get("metrics") or {}).get("cost_quality")


def cost_quality_scopes(card: Mapping[str, Any] | None) -> list[str]:
    """``overall`` then every category the card has a curve for (the dropdown's choices)."""
    data = _curve_data(card) or {}
    return [OVERALL, *sorted((data.get("by_category") or {}).keys())]


def _empty(message: str) -> Any:
    from components.figures import empty_figure

    return empty_figure(message, height=260)


def cost_quality_figure(card: Mapping[str, Any] | None, scope: str | None = OVERALL) -> Any:
    """A plotly figure of the router's cost-quality curve for ``scope`` (``overall`` or a category)."""
    import plotly.graph_objects as go

    data = _curve_data(card)
    if not data or not data.get("overall"):
        return _empty("The active router has no cost-quality data (retrain it to add the curve).")
    scope = scope or OVERALL
    part = data["overall"] if scope == OVERALL else (data.get("by_category") or {}).get(scope)
    if not part or not part.get("points"):
        return _empty(f"No cost-quality curve for {scope!r} (too few held-out questions of that category).")
    points = sorted(part["points"], key=lambda p: (p["cost"], p["accuracy"]))
    figure = go.Figure()
    figure.add_scatter(
        x=[p["cost"] for p in points], y=[p["accuracy"] * 100 for p in points], mode="lines+markers", name="router (λ sweep)",
        line=dict(color="#4f46e5", shape="linear"), marker=dict(size=6),
        customdata=[p["lambda"] for p in points],
        hovertemplate="λ=%{customdata:.3g}: cost %{x:.3g}, accuracy %{y:.1f}%<extra>router</extra>",
    )
    backends = part.get("backends") or []
    figure.add_scatter(
        x=[b["cost"] for b in backends], y=[b["accuracy"] * 100 for b in backends], mode="markers+text", name="single backend",
        text=[b["name"] for b in backends], textposition="top center", marker=dict(size=12, symbol="diamond", color="#f97316"),
        hovertemplate="%{text}: cost %{x:.3g}, accuracy %{y:.1f}%<extra>always this backend</extra>",
    )
    aiq = part.get("aiq")
    label = "all held-out questions" if scope == OVERALL else f"category {scope}"
    title = f"Cost-quality curve ({label}, {part.get('n_queries', '?')} questions)" + (f" · AIQ {aiq:.3f}" if isinstance(aiq, (int, float)) else "")
    figure.update_layout(title=title, xaxis=dict(title="mean cost per question"), yaxis=dict(title="accuracy", ticksuffix="%"),
                         height=340, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return figure


class CostQualityPanel:
    """A scope dropdown and the curve; ``card`` returns the active router's card (or None)."""

    def __init__(self, card: Callable[[], Mapping[str, Any] | None]) -> None:
        self._card = card
        self.scope: Any = None
        self.plot: Any = None

    @property
    def outputs(self) -> list[Any]:
        """What :meth:`refresh` fills, in order (the Leaderboard appends them to its refresh outputs)."""
        return [self.plot, self.scope]

    def build(self) -> None:
        import gradio as gr

        self.scope = gr.Dropdown(label="Cost-quality curve for", choices=[OVERALL], value=OVERALL, elem_id="lb-cq-scope")
        self.plot = gr.Plot(show_label=False, elem_id="lb-cost-quality")
        self.scope.input(self.draw, [self.scope], [self.plot])

    def draw(self, scope: str | None) -> Any:
        return cost_quality_figure(self._card(), scope)

    def refresh(self) -> list[Any]:
        """The overall curve and the dropdown reset to the active router's scopes."""
        import gradio as gr

        card = self._card()
        return [cost_quality_figure(card, OVERALL), gr.update(choices=cost_quality_scopes(card), value=OVERALL)]


__all__ = ["CostQualityPanel", "OVERALL", "cost_quality_figure", "cost_quality_scopes"]
