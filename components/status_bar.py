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


def build(runtime: Runtime) -> Any:
    with gr.Accordion("Models and status", open=True, elem_id="rl-status"):
        box = gr.HTML(render(runtime))
    return box


def wire(demo: Any, box: Any, runtime: Runtime) -> None:
    """Refresh the status every 2 s while anything is loading or a first router is being built, then stop polling."""
    timer = gr.Timer(2.0, active=True)

    def tick() -> list[Any]:
        return [render(runtime), gr.Timer(active=runtime.loading or runtime.bootstrapping)]

    timer.tick(tick, None, [box, timer], queue=False, show_progress="hidden")
    demo.load(tick, None, [box, timer], queue=False)
