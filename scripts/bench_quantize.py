"""Benchmark nf4 (bitsandbytes 4-bit) against full precision: weight memory, load time and answer latency.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python scripts/bench_quantize.py            # about 1-2 minutes on 2 cores
    python scripts/bench_quantize.py --skip-full --repeats 5                         # tiny models only, seconds
    python scripts/bench_quantize.py --skip-tiny --full-repeats 2                    # ViT-B-32 only
    python scripts/bench_quantize.py --json out.json                                  # also write the figures

Every model loads through the product's own backends (``OpenClipBackend``, ``HFVisionBackend``), on the
device ``--device`` resolves to (CPU here: float32 compute for nf4, per docs/models.md):

1. the tiny open_clip and LLaVA models the tests use (random weights, saved to a temporary folder);
2. a full-size open_clip ViT-B-32 with random weights (``pretrained=None``, ``require_pretrained=False``:
   no download; weights do not change size or speed), where it also reports the cosine similarity
   between nf4 and full-precision image embeddings.

"full" is the placement's compute dtype: float32 on CPU; bf16 on CUDA (open_clip's "bf16" precision keeps
embeddings and LayerNorms in float32), as each row's quantization label says.

Reported per model and precision: weight memory (parameters + buffers + 4-bit statistics), load time,
and latency p50/p95 of one answer (labels given: zero-shot or log-likelihood scoring; free text:
greedy generate) and of one image embedding.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from backends.base import Backend
from backends.hf_vision import HFVisionBackend
from backends.open_clip_zero_shot import OpenClipBackend

LABELS = ["cat", "dog", "hot air balloon", "coffee"]


def timings(call: Callable[[], Any], repeats: int) -> dict[str, float]:
    call()  # warm-up: first-call allocations are not latency
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    samples.sort()
    p95 = samples[min(len(samples) - 1, int(round(0.95 * (len(samples) - 1))))]
    return {"p50_ms": round(1000 * statistics.median(samples), 2), "p95_ms": round(1000 * p95, 2)}


def checked(answer: Any) -> Any:
    if not answer.ok:
        raise SystemExit(f"backend failed: {answer.error}")
    return answer


def measure_backend(backend: Backend, image: Image.Image, repeats: int, free_text: bool) -> tuple[dict[str, Any], Any]:
    """One loaded backend's row, and its image embedding (open_clip only, else None)."""
    if not backend.load():
        raise SystemExit(f"{backend.name} failed to load: {backend.info.error}")
    info = backend.describe()
    row: dict[str, Any] = {
        "quantization": info.quantization,
        "device": info.device,
        "memory_mb": round(info.memory_bytes / 2**20, 2),
        "load_s": round(info.load_time_s or 0.0, 2),
        "full_precision_layers": info.full_precision_layers,
        "answer_labels": timings(lambda: checked(backend.answer(image, "What is it?", labels=LABELS)), repeats),
    }
    if free_text:
        row["answer_free_text"] = timings(lambda: checked(backend.answer(image, "What is it?")), repeats)
    embedding = None
    if isinstance(backend, OpenClipBackend):
        row["embed_image"] = timings(lambda: backend.embed_image(image), repeats)
        embedding = backend.embed_image(image)
    return row, embedding


def measure(make: Callable[[bool], Backend], image: Image.Image, repeats: int, free_text: bool) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    embeddings = {}
    for quantize in (False, True):
        row, embedding = measure_backend(make(quantize), image, repeats, free_text)
        rows["nf4" if quantize else "full"] = row
        if embedding is not None:
            embeddings[quantize] = embedding
    rows["nf4_vs_full_memory"] = round(rows["nf4"]["memory_mb"] / rows["full"]["memory_mb"], 3)
    if embeddings:
        rows["image_embedding_cosine"] = round(float(np.dot(embeddings[False], embeddings[True])), 4)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (tiny models)")
    parser.add_argument("--full-repeats", type=int, default=5, help="timed calls per measurement (ViT-B-32)")
    parser.add_argument("--skip-full", action="store_true", help="skip the full-size ViT-B-32")
    parser.add_argument("--skip-tiny", action="store_true", help="skip the tiny open_clip and LLaVA models")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import open_clip  # noqa: F401 - imported up front so that load times leave out first imports
    import transformers  # noqa: F401

    from tests.tiny_models import build_tiny_llava_dir, build_tiny_open_clip_dir

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8))
    results: dict[str, Any] = {}
    if not args.skip_tiny:
        with tempfile.TemporaryDirectory() as folder:
            clip_dir = build_tiny_open_clip_dir(Path(folder) / "open_clip")
            llava_dir = build_tiny_llava_dir(Path(folder) / "llava")
            results["tiny open_clip"] = measure(
                lambda q: OpenClipBackend("tiny-clip", model_name=f"local-dir:{clip_dir}", quantize=q, device=args.device),
                image, args.repeats, free_text=False,
            )
            results["tiny llava"] = measure(
                lambda q: HFVisionBackend("tiny-llava", model_id=str(llava_dir), quantize=q, device=args.device,
                                          max_new_tokens=8),
                image, args.repeats, free_text=True,
            )
    if not args.skip_full:
        import torch

        def vit_b_32(quantize: bool) -> OpenClipBackend:
            torch.manual_seed(0)  # the same random weights for fp32 and nf4, so the cosine compares like with like
            backend = OpenClipBackend("vit-b-32", model_name="ViT-B-32", pretrained=None, require_pretrained=False,
                                      quantize=quantize, device=args.device)
            backend.load()
            return backend

        results["ViT-B-32 (random weights)"] = measure(vit_b_32, image, args.full_repeats, free_text=False)

    for model, rows in results.items():
        print(f"\n== {model}")
        for precision in ("full", "nf4"):
            row = rows[precision]
            timing = ", ".join(
                f"{key} p50 {value['p50_ms']} ms / p95 {value['p95_ms']} ms"
                for key, value in row.items()
                if isinstance(value, dict)
            )
            print(f"  {precision:5s} {row['memory_mb']:9.2f} MB  load {row['load_s']:6.2f} s  {timing}")
            print(f"        {row['quantization']} on {row['device']}")
        extra = {k: v for k, v in rows.items() if k not in ("full", "nf4")}
        print(f"  {extra}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
