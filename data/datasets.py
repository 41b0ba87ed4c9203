"""Eval sets: the DESIGN.md JSONL format, a folder of images by class, easy-VQA, and hub datasets.

Every source yields :class:`EvalItem` rows; ``item.image_sha256`` is the image's key
(:func:`data.images.image_key`), the one the store and the eval runner's pairs give the same photo.
A data spec string picks the source:
``path/to/file.jsonl``, ``path/to/folder``, ``easyvqa:test[:N]``, ``easyvqa:train[:N]``,
``hf:NAME:SPLIT[:N]`` (NAME may be a hub id or a folder saved with ``datasets``' ``save_to_disk``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from data.images import image_key

CATEGORIES = (
    "object", "scene", "fine_grained", "attribute", "counting", "ocr", "spatial", "knowledge", "reasoning", "open",
)
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


class DatasetError(ValueError):
    """A data spec or file that cannot be read; the message says which line or field."""


@dataclass(frozen=True)
class EvalItem:
    id: str
    image: Any  # a path (str) or a PIL image (hub datasets hold decoded images)
    question: str
    answer: str | list[str]
    labels: list[str] | None = None
    category: str = "open"

    @property
    def accepted(self) -> list[str]:
        return [self.answer] if isinstance(self.answer, str) else list(self.answer)

    @cached_property
    def image_sha256(self) -> str:
        """The image's key (:func:`data.images.image_key`), the one the store and the pairs give it.

        Computed on first use (it decodes the image) and then kept. Raises
        ``backends.images.ImageError`` (a ValueError) when the image is missing or unreadable.
        """
        return image_key(Path(self.image) if isinstance(self.image, str) else self.image)


def _limit(spec_rest: str) -> int | None:
    if not spec_rest:
        return None
    if not spec_rest.isdigit() or int(spec_rest) <= 0:
        raise DatasetError(f"the item count must be a positive whole number, got {spec_rest!r}")
    return int(spec_rest)


# --------------------------------------------------------------------------- JSONL
def read_eval_jsonl(path: str | Path, limit: int | None = None) -> list[EvalItem]:
    """Read the eval-set JSONL of DESIGN.md; image paths are relative to the file's folder or absolute."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"eval file not found: {path}")
    items: list[EvalItem] = []
    errors: list[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"line {lineno}: not JSON ({exc.msg})")
            continue
        missing = [key for key in ("image", "question", "answer") if key not in row]
        if missing:
            errors.append(f"line {lineno}: missing {', '.join(missing)}")
            continue
        image = Path(row["image"])
        image = image if image.is_absolute() else path.parent / image
        category = row.get("category") or "open"
        if category not in CATEGORIES:
            errors.append(f"line {lineno}: unknown category {category!r} (valid: {', '.join(CATEGORIES)})")
            continue
        labels = row.get("labels")
        if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            errors.append(f"line {lineno}: labels must be a list of strings or null")
            continue
        items.append(
            EvalItem(
                id=str(row.get("id", f"{path.stem}-{lineno}")),
                image=str(image),
                question=str(row["question"]),
                answer=row["answer"],
                labels=labels or None,
                category=category,
            )
        )
        if limit and len(items) >= limit:
            break
    if errors:
        raise DatasetError(f"{path}: {len(errors)} bad line(s): " + "; ".join(errors[:20]))
    return items


# --------------------------------------------------------------------------- folder
def read_image_folder(folder: str | Path, limit: int | None = None) -> list[EvalItem]:
    """``folder/<class>/<image>``: one classification item per image, labels = every class name."""
    folder = Path(folder)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{folder}: expected one sub-folder per class, found none")
    labels = [c.replace("_", " ") for c in classes]
    items = []
    for cls, label in zip(classes, labels, strict=True):
        for image in sorted((folder / cls).iterdir()):
            if image.suffix.lower() in _IMAGE_SUFFIXES:
                items.append(
                    EvalItem(
                        id=f"{cls}/{image.name}",
                        image=str(image),
                        question="What is in this image?",
                        answer=label,
                        labels=labels,
                        category="object",
                    )
                )
    return items[:limit] if limit else items


# --------------------------------------------------------------------------- easy-VQA
_EASYVQA_SHAPES = ["circle", "rectangle", "triangle"]
_EASYVQA_COLORS = ["red", "green", "blue", "yellow", "teal", "brown", "black", "gray"]


def easyvqa_category(question: str) -> tuple[str, list[str] | None]:
    """Category and candidate labels of an easy-VQA question.

    "what shape" -> object over the 3 shapes; "what color" -> attribute over the 8 colours; yes/no
    questions with a negation ("is there not ...", "is no ...") -> reasoning, others -> attribute
    (colour) or object (shape); yes/no questions get no labels (they are not a classification).
    """
    q = question.lower()
    if q.startswith("what shape"):
        return "object", list(_EASYVQA_SHAPES)
    if q.startswith("what color"):
        return "attribute", list(_EASYVQA_COLORS)
    if re.search(r"\b(not|no)\b", q):
        return "reasoning", None
    if any(color in q for color in _EASYVQA_COLORS):
        return "attribute", None
    return "object", None


def read_easyvqa(split: str, limit: int | None = None) -> list[EvalItem]:
    """The easy-VQA package (MIT): 64x64 synthetic shapes; deterministic order (sorted by image id)."""
    try:
        import easy_vqa
    except ImportError as exc:  # pragma: no cover - it is in requirements.txt
        raise DatasetError("easy-VQA needs the easy-vqa package (pip install easy-vqa)") from exc
    if split == "train":
        questions, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        questions, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise DatasetError(f"easy-VQA has splits 'train' and 'test', not {split!r}")
    order = sorted(range(len(questions)), key=lambda k: (image_ids[k], questions[k]))
    items = []
    for k in order:
        category, labels = easyvqa_category(questions[k])
        items.append(
            EvalItem(
                id=f"easyvqa-{split}-{k}",
                image=paths[image_ids[k]],
                question=questions[k],
                answer=answers[k],
                labels=labels,
                category=category,
            )
        )
    if limit:
        items = _spread(items, limit)
    return items


def _spread(items: list[EvalItem], limit: int) -> list[EvalItem]:
    """An evenly spaced, deterministic subset, so a small N still covers every question type."""
    if limit >= len(items):
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


# --------------------------------------------------------------------------- hub datasets
_QUESTION_KEYS = ("question", "query", "prompt")
_ANSWER_KEYS = ("answer", "answers", "label", "fine_label", "labels")
_IMAGE_KEYS = ("image", "img", "picture")


def read_hf_dataset(name: str, split: str, limit: int | None = None) -> list[EvalItem]:
    """A ``datasets`` dataset (hub id, or a folder saved with ``save_to_disk``).

    Classification sets (CIFAR-100 and the like: an image and a ClassLabel) become "What is in this
    image?" over every class name; VQA sets need question and answer columns.
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover
        raise DatasetError("hub datasets need the datasets package") from exc
    try:
        if Path(name).is_dir():
            loaded = datasets.load_from_disk(name)
            dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # network, missing split, bad name: one clear message
        raise DatasetError(f"could not open dataset {name!r} split {split!r}: {exc}") from exc
    columns = dataset.column_names
    image_key = next((k for k in _IMAGE_KEYS if k in columns), None)
    answer_key = next((k for k in _ANSWER_KEYS if k in columns), None)
    if image_key is None or answer_key is None:
        raise DatasetError(f"dataset {name!r} needs an image column and an answer/label column; it has {columns}")
    question_key = next((k for k in _QUESTION_KEYS if k in columns), None)
    feature = dataset.features[answer_key]
    class_names = list(getattr(feature, "names", []) or [])
    items = []
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for index in range(count):
        row = dataset[index]
        answer = row[answer_key]
        if class_names and isinstance(answer, int):
            answer = class_names[answer].replace("_", " ")
        question = row[question_key] if question_key else "What is in this image?"
        items.append(
            EvalItem(
                id=f"{Path(name).name}-{split}-{index}",
                image=row[image_key],
                question=str(question),
                answer=answer if isinstance(answer, (str, list)) else str(answer),
                labels=[c.replace("_", " ") for c in class_names] or None,
                category=str(row.get("category") or ("object" if class_names else "open")),
            )
        )
    return items


# --------------------------------------------------------------------------- spec
def load_eval_items(spec: str) -> list[EvalItem]:
    """Resolve a ``--data`` spec (see the module docstring)."""
    if spec.startswith("easyvqa:"):
        _, _, rest = spec.partition(":")
        split, _, count = rest.partition(":")
        return read_easyvqa(split, _limit(count))
    if spec.startswith("hf:"):
        parts = spec[3:].split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]):
            raise DatasetError("use hf:NAME:SPLIT[:N], for example hf:cifar100:test:200")
        name, split, count = parts[0], parts[1], (parts[2] if len(parts) == 3 else "")
        return read_hf_dataset(name, split, _limit(count))
    path = Path(spec)
    if path.is_dir():
        return read_image_folder(path)
    if path.suffix == ".jsonl" or path.is_file():
        return read_eval_jsonl(path)
    raise DatasetError(f"unknown data spec {spec!r}: use FILE.jsonl, a folder, easyvqa:SPLIT[:N] or hf:NAME:SPLIT[:N]")

