"""Run a preset's backends over an eval set and write performance pairs (one row per item x backend).

Rows are written as they come, so an interrupted run keeps what it finished. Each row goes through the
pairs format's own validator and line writer (:mod:`data.pairs`), so the file is one that
:func:`data.pairs.read_pairs` accepts; a row the format refuses (an empty question, a repeated item id)
is left out and listed in the summary's ``skipped``. The summary is each backend's accuracy per category.
Every row's ``image_sha256`` is the image's key (:func:`data.images.image_key`), the key the store and
the dataset readers give the same photo, so a train/held-out split by image keeps a photo on one side.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from backends.base import Answer, Backend
from backends.images import ImageError, load_image
from backends.run_all import BackendRunner
from backends.scoring import score_answer
from data.datasets import EvalItem
from data.images import image_key
from data.pairs import dump_pair, pair_key, validate_pair


@dataclass
class EvalSummary:
    """Correct counts per (backend, category); ``table()`` renders it for a terminal."""

    totals: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0]))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    items: int = 0
    skipped: list[str] = field(default_factory=list)

    def add(self, backend: str, category: str, correct: float, error: bool) -> None:
        for key in ((backend, category), (backend, "all")):
            self.totals[key][0] += correct
            self.totals[key][1] += 1
        if error:
            self.errors[backend] += 1

    def accuracy(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for (backend, category), (correct, count) in self.totals.items():
            out[backend][category] = correct / count if count else 0.0
        return dict(out)

    def table(self) -> str:
        accuracy = self.accuracy()
        categories = sorted({c for per in accuracy.values() for c in per if c != "all"}) + ["all"]
        width = max([len(b) for b in accuracy] + [7])
        lines = ["backend".ljust(width) + "".join(c[:11].rjust(12) for c in categories) + "errors".rjust(8)]
        for backend, per in accuracy.items():
            cells = "".join((f"{per[c]:.3f}" if c in per else "-").rjust(12) for c in categories)
            lines.append(backend.ljust(width) + cells + str(self.errors.get(backend, 0)).rjust(8))
        return "\n".join(lines)


def pair_row(item: EvalItem, answer: Answer, sha256: str, image_path: str | None) -> dict[str, Any]:
    """One performance pair (the format of :mod:`data.pairs`; not validated here).

    ``sha256`` is the image's key (:func:`data.images.image_key`), the one the store gives the same photo.
    """
    text = answer.text or ""
    correct = 0.0 if answer.error else score_answer(text, item.accepted)
    return {
        "query_id": item.id,
        "question": item.question,
        "image": str(Path(image_path).resolve()) if image_path else None,
        "image_sha256": sha256,
        "category": item.category,
        "backend": answer.backend,
        "answer": text,
        "correct": correct,
        "latency_s": round(answer.latency_s, 4),
        "source": "benchmark",
        "error": answer.error,
    }


def run_eval(
    backends: Sequence[Backend],
    items: Iterable[EvalItem],
    out_path: str | Path,
    *,
    progress: Callable[[Iterable[EvalItem]], Iterable[EvalItem]] = lambda it: it,
) -> EvalSummary:
    """Answer every item with every backend concurrently; append pairs to ``out_path``."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    folder = out_path.parent.resolve()
    summary = EvalSummary()
    written: set[tuple[str, str, str]] = set()
    runner = BackendRunner(backends)
    try:
        with out_path.open("w", encoding="utf-8", newline="\n") as out:
            for item in progress(items):
                try:
                    image = _item_image(item.image)
                    # The key of the normalised image is the key of the file (item.image_sha256, the
                    # store's): taken from the image already decoded, so the file is decoded once.
                    sha256 = image_key(image)
                except (ImageError, OSError) as exc:
                    summary.skipped.append(f"{item.id}: {exc}")
                    continue
                path = str(item.image) if isinstance(item.image, (str, Path)) else None
                summary.items += 1
                for answer in runner.stream(image, item.question, item.labels):
                    try:
                        row = validate_pair(pair_row(item, answer, sha256, path))
                    except ValueError as exc:
                        summary.skipped.append(f"{item.id} ({answer.backend}): {exc}")
                        continue
                    if pair_key(row) in written:
                        summary.skipped.append(f"{item.id} ({answer.backend}): the id of an earlier item")
                        continue
                    written.add(pair_key(row))
                    out.write(dump_pair(row, folder) + "\n")
                    summary.add(answer.backend, item.category, row["correct"], answer.error is not None)
                out.flush()
    finally:
        runner.close()
    return summary


def _item_image(image: Any) -> Image.Image:
    return load_image(image if not isinstance(image, (str, Path)) else Path(image))
