"""run_all wall time against the sum of the backends run one after another (offline preset by default).

    python scripts/bench_run_all.py --preset offline --questions 20 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    from backends.images import load_image
    from backends.presets import load_preset
    from backends.registry import build_backends
    from backends.run_all import BackendRunner
    from backends.shared import SharedModels
    from data.datasets import read_eval_jsonl

    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="offline")
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    preset = load_preset(args.preset)
    backends = build_backends(preset.backends, shared=SharedModels())
    runner = BackendRunner(backends)
    list(runner.load_all())
    items = read_eval_jsonl(ROOT / "data" / "benchmarks" / "photos.jsonl")
    items += read_eval_jsonl(ROOT / "data" / "benchmarks" / "easyvqa_test_500.jsonl", limit=args.questions)
    items = items[: args.questions]
    sequential, concurrent, first = [], [], []
    for item in items:
        image = load_image(item.image)
        start = time.perf_counter()
        for backend in backends:
            backend.answer(image, item.question, item.labels)
        sequential.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i, _ in enumerate(runner.stream(image, item.question, item.labels)):
            if i == 0:
                first.append(time.perf_counter() - start)
        concurrent.append(time.perf_counter() - start)
    runner.close()
    p = lambda xs, q: sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    print(f"preset {preset.name}, {len(items)} questions, backends: {', '.join(b.name for b in backends)}")
    print(f"one after another (sum): mean {statistics.mean(sequential):.3f} s, p50 {p(sequential, .5):.3f} s")
    print(f"run_all (concurrent):    mean {statistics.mean(concurrent):.3f} s, p50 {p(concurrent, .5):.3f} s")
    print(f"run_all first answer:    mean {statistics.mean(first):.3f} s, p50 {p(first, .5):.3f} s")
    print(f"speed-up of all answers: {statistics.mean(sequential) / statistics.mean(concurrent):.2f}x")
    if args.json:
        def summary(xs: list[float]) -> dict[str, float]:
            return {"mean_s": statistics.mean(xs), "p50_s": p(xs, .5)}

        args.json.write_text(json.dumps({
            "preset": preset.name, "questions": len(items), "backends": [b.name for b in backends],
            "sequential_sum": summary(sequential), "run_all_all_answers": summary(concurrent),
            "run_all_first_answer": summary(first), "speed_up": statistics.mean(sequential) / statistics.mean(concurrent),
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
