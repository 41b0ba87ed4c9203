"""Small plotly helpers the Leaderboard's panels share."""

from __future__ import annotations

from typing import Any


def empty_figure(message: str, height: int = 260) -> Any:
    """A blank chart that says why it is blank (no axes, no meaningless ticks)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, font=dict(size=13, color="#64748b"))
    figure.update_layout(height=height, xaxis=dict(visible=False), yaxis=dict(visible=False),
                         plot_bgcolor="rgba(0,0,0,0)", paper_bgcolor="rgba(0,0,0,0)", margin=dict(l=10, r=10, t=30, b=10))
    return figure
