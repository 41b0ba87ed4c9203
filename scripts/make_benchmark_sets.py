"""Write the eval sets the default router and the benchmarks use, with their images, under data/benchmarks.

easy-VQA train (600 questions, evenly spread) for the router's first version, easy-VQA test (500) for
held-out figures, and the 10 example photos. Images are copied beside the JSONL files so the pairs that
``python -m backends run`` writes there hold relative, portable image paths.

    python scripts/make_benchmark_sets.py [--out DIR] [--train 600] [--test 500]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.datasets import EvalItem, read_easyvqa, read_eval_jsonl

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "benchmarks"


def write_set(name: str, items: list[EvalItem], out: Path = OUT) -> None:
    images = out / "images"
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
    (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{name}: {len(rows)} items")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder to write to (default {OUT})")
    parser.add_argument("--train", type=int, default=600, help="easy-VQA train questions (the file is named by it)")
    parser.add_argument("--test", type=int, default=500, help="easy-VQA test questions (the file is named by it)")
    args = parser.parse_args(argv)
    write_set(f"easyvqa_train_{args.train}", read_easyvqa("train", args.train), args.out)
    write_set(f"easyvqa_test_{args.test}", read_easyvqa("test", args.test), args.out)
    write_set("photos", read_eval_jsonl(ROOT / "data" / "examples" / "examples.jsonl"), args.out)


if __name__ == "__main__":
    main()
