"""The status line: preset, device and why, then one line per backend while models load, the router, and the
progress of a first router being built in the background (``Runtime.status_lines``)."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from components.runtime import Runtime


def render(runtime: Runtime) -> str:
    lines = runtime.status_lines()
    head, rest = lines[0], lines[1:]
    items = "".join(f"<li>{html.escape(line)}</li>" for line in rest)
    return f"<div id='rl-status-box'>{_bold(head)}<ul>{items}</ul></div>"


def _bold(text: str) -> str:
    """The head line carries **preset**; escape everything else."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def summary(runtime: Runtime) -> str:
    """The closed panel's one line: "Models and status: preset offline · 1 of 2 models ready · router loading"."""
    infos = [b.describe() for b in runtime.backends]
    ready = sum(info.status == "ready" for info in infos)
    failed = sum(info.status == "failed" for info in infos)
    parts = [f"preset {runtime.preset.name}", f"{ready} of {len(infos)} models ready"]
    if failed:
        parts.append(f"{failed} failed")
    parts.append("router ready" if runtime.router.ready else "router loading")
    if runtime.bootstrapping:
        parts.append("building a first router")
    return "Models and status: " + " · ".join(parts)


def build(runtime: Runtime) -> tuple[Any, Any]:
    """The status panel, closed: its one-line label says what is loading, so the question form starts
    above the fold; the details are one click away. Returns (panel, box)."""
    with gr.Accordion(summary(runtime), open=False, elem_id="rl-status") as panel:
        box = gr.HTML(render(runtime))
    return panel, box


def wire(demo: Any, status: tuple[Any, Any], runtime: Runtime) -> None:
    """Refresh the status every 2 s while anything is loading or a first router is being built, then stop polling."""
    panel, box = status
    timer = gr.Timer(2.0, active=True)

    def tick() -> list[Any]:
        return [gr.Accordion(label=summary(runtime)), render(runtime),
                gr.Timer(active=runtime.loading or runtime.bootstrapping)]

    timer.tick(tick, None, [panel, box, timer], queue=False, show_progress="hidden")
    demo.load(tick, None, [panel, box, timer], queue=False)
