"""Image + question + optional labels, with example photos and a random-example button."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from components.image_input import checked_image

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "data" / "examples"


@dataclass(frozen=True)
class Example:
    image: str
    question: str
    labels: str


@dataclass
class InputHandles:
    image: Any
    question: Any
    labels: Any
    run: Any
    random: Any
    gallery: Any
    notice: Any


def load_examples(folder: Path = EXAMPLES_DIR) -> list[Example]:
    """The example photos shipped in data/examples (photos from scikit-image, matplotlib, scikit-learn)."""
    index = folder / "examples.jsonl"
    if not index.is_file():
        return []
    examples = []
    for line in index.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            examples.append(Example(str(folder / row["image"]), row["question"], ", ".join(row.get("labels") or [])))
    return examples


def pick_random(examples: list[Example], rng: random.Random | None = None) -> tuple[str, str, str]:
    example = (rng or random).choice(examples)
    return example.image, example.question, example.labels


def build(examples: list[Example], *, prefix: str = "") -> InputHandles:
    image = checked_image(
        type="filepath", image_mode=None, label="Image", sources=["upload", "clipboard", "webcam"], height=320,
        elem_id=f"{prefix}image",
    )
    question = gr.Textbox(
        label="Question", placeholder="e.g. What animal is this?  ·  Is this a cat or a dog?", lines=2,
        max_lines=6, elem_id=f"{prefix}question",
    )
    labels = gr.Textbox(
        label="Candidate labels (optional, comma separated)",
        placeholder="cat, dog, rocket — filled from the question when it lists options",
        elem_id=f"{prefix}labels",
    )
    notice = gr.Markdown("", elem_id=f"{prefix}input-notice")
    with gr.Row():
        run = gr.Button("Ask every model", variant="primary", elem_id=f"{prefix}run")
        rand = gr.Button("🎲 Random example", elem_id=f"{prefix}random")
    gallery = gr.Gallery(
        [(e.image, e.question) for e in examples], label="Examples (click one)", columns=5, height=150,
        allow_preview=False, elem_id=f"{prefix}examples",
    )
    return InputHandles(image=image, question=question, labels=labels, run=run, random=rand, gallery=gallery, notice=notice)
