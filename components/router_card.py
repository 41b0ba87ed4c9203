"""The router card: which backend the router picks, how sure it is, and every backend's P(correct)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np

from router.base import choose_with_margin, utility_matrix


@dataclass
class RouterCardHandles:
    card: Any
    chart: Any
    lambda_cost: Any


def rerank(decision: dict[str, Any], costs: dict[str, float], lambda_cost: float) -> dict[str, Any]:
    """The same decision under another cost trade-off (no model call: the probabilities stay).

    The bare category rule has no probabilities; its pick does not depend on the cost weight.
    """
    if not decision.get("probabilities"):
        return dict(decision, lambda_cost=float(lambda_cost))
    names = list(decision["probabilities"])
    probs = np.array([decision["probabilities"][n] for n in names])
    cost = np.array([costs.get(n, 0.0) for n in names])
    utilities = utility_matrix(probs, cost, lambda_cost)
    default = decision.get("default_backend")
    index = int(choose_with_margin(utilities, cost, names.index(default) if default in names else None,
                                   float(decision.get("switch_margin") or 0.0)))
    return dict(
        decision,
        choice=names[index],
        confidence=float(probs[index]),
        utilities={n: float(u) for n, u in zip(names, utilities)},
        lambda_cost=float(lambda_cost),
    )


def render_card(decision: dict[str, Any] | None, kinds: dict[str, str], *, waiting: str = "", status: str = "") -> str:
    """The card: the pick, or ``waiting`` (what the question waits for) before there is one. ``status``:
    a line under the pick while the answers still wait for something (models loading)."""
    if not decision:
        text = html.escape(waiting or "Ask a question: the router's pick appears here before the answers.")
        return f"<div class='rl-card' id='router-card'><div class='rl-route-meta'>{text}</div></div>"
    choice = html.escape(decision["choice"])
    confidence = decision.get("confidence")
    badge = (f"<span class='rl-conf'>{100 * float(confidence):.0f}%</span>" if confidence is not None
             else "<span class='rl-conf' title='no measured router yet'>rule</span>")
    kind = html.escape(kinds.get(decision["choice"], ""))
    category = html.escape(str(decision.get("category") or "unknown"))
    version = html.escape(str(decision.get("version") or "-"))
    latency = float(decision.get("latency_ms") or 0.0)
    lam = float(decision.get("lambda_cost") or 0.0)
    fallback = decision.get("fallback")
    note = decision.get("note")
    extra = f"<div class='rl-notice'>{html.escape(str(fallback))}</div>" if fallback else ""
    if note:
        extra += f"<div class='rl-route-meta rl-note' id='router-note'>{html.escape(str(note))}</div>"
    if status:
        extra += (f"<div class='rl-wait rl-route-meta' id='router-waiting'><div class='rl-spinner'></div>"
                  f"{html.escape(status)}</div>")
    return (
        "<div class='rl-card' id='router-card'>"
        "<div class='rl-route-meta'>Router pick</div>"
        f"<div class='rl-route-choice'>{choice} {badge}</div>"
        f"<div class='rl-route-meta'>{kind} · predicted task: <b>{category}</b> · router {version} · "
        f"decided in {latency:.0f} ms · cost weight λ={lam:.2f}</div>{extra}</div>"
    )


def render_chart(decision: dict[str, Any] | None, kinds: dict[str, str]):
    """A plotly bar chart of P(correct) per backend; the pick is drawn in the accent colour."""
    import plotly.graph_objects as go

    figure = go.Figure()
    probabilities = (decision or {}).get("probabilities")
    if decision and not probabilities:
        figure.add_annotation(text="No measured P(correct) yet: the category rule decides", showarrow=False,
                              x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=12, color="#6b7280"))
    if probabilities:
        names = list(probabilities)
        values = [100 * float(probabilities[n]) for n in names]
        colours = ["#4f46e5" if n == decision["choice"] else ("#93b4f0" if kinds.get(n) == "vlm" else "#c4b0ef") for n in names]
        figure.add_bar(
            x=values, y=names, orientation="h", marker_color=colours,
            text=[f"{v:.0f}%" for v in values], textposition="outside", cliponaxis=False,
            hovertemplate="%{y}: %{x:.1f}% chance of a correct answer<extra></extra>",
        )
    figure.update_layout(
        height=70 + 38 * max(1, len(probabilities) if probabilities else 2),
        margin=dict(l=10, r=10, t=30, b=10),
        title=dict(text="P(correct answer) per backend", font=dict(size=13)),
        xaxis=dict(range=[0, 112], ticksuffix="%", tickvals=[0, 25, 50, 75, 100], visible=bool(probabilities)),
        yaxis=dict(autorange="reversed", visible=bool(probabilities)),
        plot_bgcolor="rgba(0,0,0,0)",
        paper_bgcolor="rgba(0,0,0,0)",
    )
    return figure


def build(default_lambda: float = 0.0, *, prefix: str = "") -> RouterCardHandles:
    card = gr.HTML(render_card(None, {}), elem_id=f"{prefix}router-card-box")
    chart = gr.Plot(render_chart(None, {}), show_label=False, elem_id=f"{prefix}router-chart")
    lambda_cost = gr.Slider(
        0.0, 1.0, value=default_lambda, step=0.05, label="Cost weight λ (0 = accuracy only)",
        info="Utility = P(correct) − λ × relative cost. Moving it re-ranks without asking the models again.",
        elem_id=f"{prefix}lambda",
    )
    return RouterCardHandles(card=card, chart=chart, lambda_cost=lambda_cost)

