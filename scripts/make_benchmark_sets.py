"""Write the eval sets the default router and the benchmarks use, with their images, under data/benchmarks.

easy-VQA train (600 questions, evenly spread) for the router's first version, easy-VQA test (500) for
held-out figures, and the 10 example photos. Images are copied beside the JSONL files so the pairs that
``python -m backends run`` writes there hold relative, portable image paths.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import sys

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.datasets import EvalItem, read_easyvqa, read_eval_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "benchmarks"


def write_set(name: str, items: list[EvalItem]) -> None:
    images = OUT / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in items:
        source = Path(item.image)
        # easy-VQA names its images 0.png, 1.png ... in both splits, so the split goes into the name.
        target = images / (f"{item.id.rsplit('-', 1)[0]}-{source.name}" if item.id.startswith("easyvqa") else source.name)
        if not target.exists():
            shutil.copyfile(source, target)
        rows.append({
            "id": item.id, "image": f"images/{target.name}", "question": item.question, "answer": item.answer,
            "labels": item.labels, "category": item.category,
        })
    (OUT / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{name}: {len(rows)} items")


def main() -> None:
    write_set("easyvqa_train_600", read_easyvqa("train", 600))
    write_set("easyvqa_test_500", read_easyvqa("test", 500))
    write_set("photos", read_eval_jsonl(ROOT / "data" / "examples" / "examples.jsonl"))


if __name__ == "__main__":
    main()
