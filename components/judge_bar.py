"""Which answer was best, the true answer and a reason; Submit confirms only after the commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

BEST_EXTRA = [("Tie", "tie"), ("All wrong", "all_wrong")]


def best_choices(options: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The best-answer radio's choices: (label, value) per panel, then tie and all wrong."""
    return list(options) + BEST_EXTRA


@dataclass
class JudgeHandles:
    best: Any
    true_answer: Any
    reason: Any
    submit: Any
    status: Any
    #: The task category the judgment files the question under (None when not offered).
    category: Any = None


#: (label, value) of the category dropdown: the router's categories in plain words.
CATEGORY_WORDS = {
    "object": "object (what is it)", "scene": "scene (where is it)", "fine_grained": "fine-grained (which kind)",
    "attribute": "attribute (colour, shape, material)", "counting": "counting", "ocr": "reading text",
    "spatial": "spatial (where things are)", "knowledge": "outside knowledge", "reasoning": "reasoning",
    "open": "open-ended",
}


def build(backend_names: Sequence[str], *, prefix: str = "", submit_label: str = "Save judgment",
          with_category: bool = False) -> JudgeHandles:
    """``with_category``: offer the task category (pre-set to the router's guess) for the person to correct."""
    category = None
    with gr.Group():
        best = gr.Radio(
            best_choices([(name, name) for name in backend_names]), label="Best answer", elem_id=f"{prefix}best",
        )
        if with_category:
            from router.categories import CATEGORIES

            category = gr.Dropdown(
                [(CATEGORY_WORDS.get(c, c), c) for c in CATEGORIES], value=None, label="Task category",
                info="The router's guess; correct it if it is wrong (the accuracy per category uses it).",
                elem_id=f"{prefix}category", allow_custom_value=False,
            )
        with gr.Row():
            true_answer = gr.Textbox(label="True answer (optional)", max_lines=1, elem_id=f"{prefix}true-answer")
            reason = gr.Textbox(label="Reason (optional)", max_lines=3, elem_id=f"{prefix}reason")
    with gr.Row():
        submit = gr.Button(submit_label, variant="primary", interactive=False, elem_id=f"{prefix}save")
    status = gr.Markdown("", elem_id=f"{prefix}judge-status")
    return JudgeHandles(best=best, true_answer=true_answer, reason=reason, submit=submit, status=status,
                        category=category)
