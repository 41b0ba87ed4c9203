"""One panel per backend: model card, spinner until it answers, then its answer or its error."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from backends.base import Answer, BackendInfo

VERDICTS = ["✓ correct", "✗ wrong", "– skip"]
VERDICT_VALUES = {"✓ correct": 1.0, "✗ wrong": 0.0, "– skip": None}
_SHOWN_LABELS = 6


@dataclass
class PanelHandles:
    name: str
    body: Any
    verdict: Any


def _kind_badge(kind: str) -> str:
    css = "vlm" if kind == "vlm" else "vlmllm"
    return f"<span class='rl-kind {css}'>{html.escape(kind)}</span>"


def _details(info: BackendInfo) -> str:
    """Everything about the loaded model, for the caption's tooltip."""
    bits = [info.model_id or info.family, info.quantization, info.device]
    if info.memory_mb is not None:
        bits.append(f"{info.memory_mb:,.0f} MB")
    return " · ".join(str(b) for b in bits if b)


def precision_words(quantization: str | None) -> str:
    """ "4-bit" / "8-bit" / "full precision" from a backend's quantization description."""
    text = (quantization or "").lower()
    if text.startswith(("nf4", "fp4", "4-bit", "int4")) or "q4" in text:
        return "4-bit"
    if text.startswith(("int8", "8-bit", "llm.int8")) or "q8" in text:
        return "8-bit"
    return "full precision (not 4-bit)" if text.startswith("none") or not text else text.split(" (")[0]


def caption(info: BackendInfo) -> str:
    """The panel's caption in plain words: model, size, 4-bit or not, device; the details on hover."""
    model = (info.model_id or info.family or info.name).split("/")[-1]
    bits = [model.split(" (")[0]]
    if info.memory_mb is not None:
        bits.append(f"{info.memory_mb:,.0f} MB")
    bits.append(precision_words(info.quantization))
    bits.append({"cpu": "on the CPU", "cuda": "on the GPU", "mps": "on Apple GPU"}.get(info.device, f"on {info.device}"))
    return (f"<span title='{html.escape(_details(info), quote=True)}'>"
            f"{' · '.join(html.escape(b) for b in bits if b)}</span>")


def render_blind_panel(alias: str, answer: Answer | None, *, state: str = "idle") -> str:
    """A panel that does not say which model it is: its label ("Model A") and the answer text only, no
    name, kind, model card, timing, label scores or router pick (each of which would tell)."""
    head = f"<div class='rl-panel-head'><span class='rl-panel-name'>{html.escape(alias)}</span></div>"
    if state == "running":
        body = "<div class='rl-wait'><div class='rl-spinner'></div>answering…</div>"
    elif answer is None:
        body = "<div class='rl-meta'>Waiting for a question.</div>"
    elif answer.error:
        body = "<div class='rl-error'>This model gave no answer (it failed; the details are shown after saving).</div>"
    else:
        body = f"<div class='rl-answer'>{html.escape(answer.text or '(empty answer)')}</div>"
    body += "<div class='rl-meta'>Blind: the model's name is shown after you save.</div>"
    return f"<div class='rl-panel rl-blind' data-backend='{html.escape(alias)}'>{head}{body}</div>"


def render_panel(info: BackendInfo, answer: Answer | None, *, picked: bool = False, state: str = "idle",
                 alias: str | None = None) -> str:
    """HTML for one panel; every model or user string is escaped (answers may contain markup).

    ``alias``: the blind label the judge saw ("Model A"); shown beside the name once it is revealed."""
    shown_as = f"<span class='rl-meta'>{html.escape(alias)} · </span>" if alias else ""
    head = (
        "<div class='rl-panel-head'>"
        f"<span class='rl-panel-name'>{shown_as}{html.escape(info.name)}</span>"
        f"<span>{'<span class=rl-pick-badge>router pick</span> ' if picked else ''}{_kind_badge(info.kind)}</span></div>"
        f"<div class='rl-meta rl-caption'>{caption(info)}</div>"
    )
    if answer is None:
        if info.status == "failed":
            body = f"<div class='rl-error'>{html.escape(info.error or 'failed to load')}</div>"
        elif state == "skipped":
            body = ("<div class='rl-meta rl-skipped'>Not asked: routed mode asked only the router's pick. "
                    "<b>Ask the others too</b> runs this model on the same question.</div>")
        elif state == "running":
            loading = " (loading the model first)" if info.status in ("loading", "not loaded") else ""
            body = f"<div class='rl-wait'><div class='rl-spinner'></div>thinking{loading}…</div>"
        elif info.status in ("loading", "not loaded"):
            body = "<div class='rl-wait'><div class='rl-spinner'></div>loading model…</div>"
        else:
            body = "<div class='rl-meta'>Waiting for a question.</div>"
    elif answer.error:
        body = f"<div class='rl-error'>{html.escape(answer.error)}</div><div class='rl-meta'>after {answer.latency_s:.2f} s</div>"
    else:
        body = f"<div class='rl-answer'>{html.escape(answer.text or '(empty answer)')}</div>"
        if answer.label_scores:
            rows = []
            for label, score in answer.label_scores[:_SHOWN_LABELS]:
                width = max(1.0, 100 * float(score))
                rows.append(
                    f"<tr><td>{html.escape(str(label))}</td><td class='s'><div class='rl-bar' style='width:{width:.0f}%'></div></td>"
                    f"<td class='v'>{100 * float(score):.1f}%</td></tr>"
                )
            more = len(answer.label_scores) - _SHOWN_LABELS
            tail = f"<div class='rl-meta'>+{more} more labels</div>" if more > 0 else ""
            body += f"<table class='rl-scores'>{''.join(rows)}</table>{tail}"
        body += f"<div class='rl-meta'>answered in {answer.latency_s:.2f} s</div>"
    css = "rl-panel rl-picked" if picked else "rl-panel"
    return f"<div class='{css}' data-backend='{html.escape(info.name)}'>{head}{body}</div>"


def build(infos: Sequence[BackendInfo], *, prefix: str, per_row: int = 3, with_verdicts: bool = True) -> list[PanelHandles]:
    """Panels in rows of ``per_row``; each with a verdict radio (elem_id ``{prefix}verdict-{i}``)."""
    panels: list[PanelHandles] = []
    for start in range(0, len(infos), per_row):
        with gr.Row(equal_height=False):
            for index in range(start, min(start + per_row, len(infos))):
                info = infos[index]
                with gr.Column(min_width=260):
                    body = gr.HTML(render_panel(info, None), elem_id=f"{prefix}panel-{index}")
                    verdict = gr.Radio(
                        VERDICTS, value=None, show_label=False, visible=with_verdicts,
                        elem_id=f"{prefix}verdict-{index}", elem_classes=["rl-verdict"],
                    )
                    panels.append(PanelHandles(name=info.name, body=body, verdict=verdict))
    return panels


def verdicts_from(values: Sequence[str | None], names: Sequence[str]) -> dict[str, float]:
    """Radio values -> {backend: 1.0 | 0.0}; skipped panels are left out. ``names``: the backend shown in
    each panel, in panel order (shuffled in blind mode)."""
    out: dict[str, float] = {}
    for name, value in zip(names, values, strict=False):
        score = VERDICT_VALUES.get(value) if value else None
        if score is not None:
            out[name] = score
    return out
