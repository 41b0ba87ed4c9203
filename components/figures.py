"""Small plotly helpers the Leaderboard's panels share."""

from __future__ import annotations

from typing import Any

#: The axes of a chart with nothing to draw: hidden, with no ticks, grid or zero line to misread.
_NO_AXIS = dict(visible=False, showticklabels=False, showgrid=False, zeroline=False, ticks="", fixedrange=True)


def empty_figure(message: str, height: int = 260) -> Any:
    """A blank chart that says why it is blank: the message centred, no axes, no meaningless ticks."""
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                          xanchor="center", yanchor="middle", font=dict(size=13, color="#64748b"))
    figure.update_layout(height=height, xaxis=_NO_AXIS, yaxis=_NO_AXIS, showlegend=False, hovermode=False,
                         plot_bgcolor="rgba(0,0,0,0)", paper_bgcolor="rgba(0,0,0,0)", margin=dict(l=10, r=10, t=30, b=10))
    return figure


def is_empty_figure(figure: Any) -> bool:
    """True for :func:`empty_figure`'s charts: no data, both axes hidden, one message."""
    layout = figure.layout
    return (not figure.data and layout.xaxis.visible is False and layout.yaxis.visible is False
            and len(layout.annotations) == 1)


def titled(title: str, note: str | None = None) -> dict[str, Any]:
    """A chart title that fits a half-width chart: a short headline, and the details on a smaller second line."""
    import html

    text = html.escape(title) + (f"<br><sup style='color:#64748b'>{html.escape(note)}</sup>" if note else "")
    return dict(text=text, font=dict(size=14), x=0.02, xanchor="left")


def integer_axis(values: list[float]) -> dict[str, Any]:
    """An x axis of counts (judgments): whole-number ticks from 0, even when every value is 0 or 1."""
    top = max([0.0, *values])
    if top <= 10:
        return dict(range=[-0.5, top + 1.5], dtick=1, tick0=0)
    return dict(range=[-0.04 * top, 1.04 * top], tickformat=",d")
