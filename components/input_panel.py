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


#: The labels box's caption, and the caption while it holds labels the page read from the question
#: (replaced when the question changes; labels a person typed stay).
LABELS_LABEL = "Candidate labels (optional, comma separated)"
LABELS_FROM_QUESTION = "Candidate labels: read from the question (type your own to keep them)"


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
    image_notice: Any


def upload_path(payload: Any) -> str | None:
    """The server-side file of an unprocessed image upload (gradio's FileData, as a dict or object)."""
    path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", payload)
    return str(path) if path else None


def check_upload(payload: Any) -> tuple[Any, str]:
    """An upload as it arrives (unprocessed): kept when it decodes, else cleared with the reason shown
    next to the image, so a text file named .jpg is refused before anyone presses Ask."""
    from backends.images import ImageError, load_image

    path = upload_path(payload)
    if not path:
        return gr.skip(), ""
    try:
        load_image(path)
    except ImageError as exc:
        return None, f"⚠️ Not an image we can use: {exc}. Please choose another file."
    except Exception as exc:  # anything Pillow raises on a strange file
        return None, f"⚠️ Not an image we can use ({type(exc).__name__}). Please choose another file."
    return gr.skip(), ""


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
        type="filepath", image_mode=None, label="Image", sources=["upload", "clipboard", "webcam"], height=260,
        elem_id=f"{prefix}image",
    )
    image_notice = gr.Markdown("", elem_id=f"{prefix}image-notice", elem_classes=["rl-notice"])
    image.upload(check_upload, image, [image, image_notice], preprocess=False, queue=False, show_progress="hidden")
    question = gr.Textbox(
        label="Question", placeholder="e.g. What animal is this?  ·  Is this a cat or a dog?", lines=2,
        max_lines=6, elem_id=f"{prefix}question",
    )
    labels = gr.Textbox(
        label=LABELS_LABEL,
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
    return InputHandles(image=image, question=question, labels=labels, run=run, random=rand, gallery=gallery, notice=notice,
                        image_notice=image_notice)
