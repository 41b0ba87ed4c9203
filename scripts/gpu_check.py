"""GPU check (``make gpu-check``): the 4-bit CUDA path end to end, with memory and latency figures.

1. The GPU-marked tests: tiny open_clip, LLaVA and Gemma models loaded nf4 on CUDA through the
   product's own loaders (``pytest -m gpu``).
2. Real-size architectures with random weights (no weights need downloading): open_clip ViT-L-14-336
   (the paper's CLIP) and a LLaVA-1.5-7B-shaped model (CLIP ViT-L/14-336 tower + 7B Llama), each
   loaded bf16 and nf4 through ``OpenClipBackend`` / ``HFVisionBackend``; weight memory, peak GPU
   memory, load time and answer latency.
3. A compare: both nf4 backends answer one question concurrently through ``BackendRunner``; time to
   the first answer and to all answers.

Random weights give meaningless answers; the figures are about memory and speed, which depend on
the shapes alone. Prints one JSON report (and writes it to --json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LLAVA_7B = {
    "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
               "image_size": 336, "patch_size": 14, "projection_dim": 768},
    "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "max_position_embeddings": 4096},
}
#: For a dry run of this script on a CPU (--dry-run): the same code on a small LLaVA and a small CLIP.
LLAVA_SMALL = {
    "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": 336, "patch_size": 14, "projection_dim": 64},
    "text": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 2, "max_position_embeddings": 4096},
}


class Gpu:
    """torch.cuda memory counters, or zeros on a CPU dry run."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def allocated(self) -> int:
        return self.torch.cuda.memory_allocated() if self.cuda else 0

    def peak(self) -> int:
        return self.torch.cuda.max_memory_allocated() if self.cuda else 0

    def empty(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()


#: The test files with @pytest.mark.gpu tests (named, so collection needs no web or database packages).
GPU_TEST_FILES = ("tests/test_open_clip_tiny.py", "tests/test_hf_vision_tiny.py", "tests/test_offline_tiny.py")


def gib(n: float | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def run_gpu_tests() -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *GPU_TEST_FILES],
        cwd=ROOT, capture_output=True, text=True,
    )
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    print("\n".join(tail), flush=True)
    return {"returncode": proc.returncode, "summary": tail[-1] if tail else "", "seconds": round(time.perf_counter() - start, 1)}


def build_llava_dir(path: Path, shape: dict[str, dict[str, int]], device: str) -> Path:
    """A LLaVA-1.5-shaped model with random bf16 weights and a small local tokenizer."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from tests.tiny_models import TINY_CHAT_TEMPLATE, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**shape["vision"]),
        text_config=LlamaConfig(
            vocab_size=32064, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **shape["text"],
        ),
        image_token_index=image_token_id, image_seq_length=576, vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    del model
    Gpu(device).empty()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=TINY_CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    return path


def measure(backend: Any, image: Any, questions: list[tuple[str, list[str] | None]], gpu: Gpu) -> dict[str, Any]:
    gpu.sync()
    gpu.reset_peak()
    before = gpu.allocated()
    start = time.perf_counter()
    ok = backend.load()
    load_s = time.perf_counter() - start
    info = backend.describe()
    row: dict[str, Any] = {
        "backend": backend.name, "quantization": info.quantization, "status": info.status, "error": info.error,
        "load_s": round(load_s, 2), "weights_gib": gib(info.memory_bytes),
        "allocated_after_load_gib": gib(gpu.allocated() - before),
    }
    if not ok:
        return row
    latencies = []
    for question, labels in questions:
        answer = backend.answer(image, question, labels)
        latencies.append(answer.latency_s)
        row.setdefault("errors", []).append(answer.error) if answer.error else None
    latencies.sort()
    row["latency_p50_s"] = round(latencies[len(latencies) // 2], 4)
    row["latency_max_s"] = round(latencies[-1], 4)
    row["peak_gib"] = gib(gpu.peak() - before)
    return row


def release(backend: Any, gpu: Gpu) -> None:
    import gc

    for attr in list(vars(backend)):
        if attr in ("model", "_model", "processor", "_processor"):
            setattr(backend, attr, None)
    gc.collect()
    gpu.empty()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-7b", action="store_true", help="skip the LLaVA-7B-shaped model (needs ~30 GB disk, ~1 min)")
    parser.add_argument("--dry-run", action="store_true", help="run the same steps on the CPU with small shapes")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        print(json.dumps({"cuda": False, "message": "no CUDA GPU here: nothing to check"}))
        return 0
    device = "cpu" if args.dry_run else "cuda"
    gpu = Gpu(device)
    clip_model = "ViT-B-32" if args.dry_run else "ViT-L-14-336"
    llava_shape = LLAVA_SMALL if args.dry_run else LLAVA_7B
    from PIL import Image

    from backends.hf_vision import HFVisionBackend
    from backends.open_clip_zero_shot import OpenClipBackend
    from backends.run_all import BackendRunner

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if gpu.cuda else "cpu (dry run)", "torch": torch.__version__,
        "bitsandbytes": __import__("bitsandbytes").__version__, "transformers": __import__("transformers").__version__,
    }
    if not args.skip_tests and not args.dry_run:
        report["gpu_tests"] = run_gpu_tests()
    image = Image.open(ROOT / "data" / "examples" / "chelsea.jpg").convert("RGB")
    questions = [("What animal is this?", ["cat", "dog", "rocket", "coffee"]), ("Is this a cat or a dog?", None),
                 ("What is in the picture?", None)] * 3
    if args.dry_run:  # ranking 1000 ImageNet classes on a CPU takes minutes; keep the dry run short
        questions = questions[:2]
    rows = []
    for quantize in (False, True):
        clip = OpenClipBackend(f"clip-{clip_model}{'-nf4' if quantize else '-full'}", model_name=clip_model,
                               pretrained=None, require_pretrained=False, quantize=quantize, device=device)
        rows.append(measure(clip, image, questions, gpu))
        print(json.dumps(rows[-1]), flush=True)
        release(clip, gpu)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        if not args.skip_7b:
            start = time.perf_counter()
            llava_dir = build_llava_dir(Path(tmp) / "llava", llava_shape, device)
            report["llava_7b_build_s"] = round(time.perf_counter() - start, 1)
            for quantize in (False, True):
                llava = HFVisionBackend(f"llava-7b-shape{'-nf4' if quantize else '-full'}", model_id=str(llava_dir),
                                        quantize=quantize, device=device, max_new_tokens=8)
                rows.append(measure(llava, image, questions, gpu))
                print(json.dumps(rows[-1]), flush=True)
                release(llava, gpu)
            clip = OpenClipBackend("clip-nf4", model_name=clip_model, pretrained=None, require_pretrained=False,
                                   quantize=True, device=device)
            llava = HFVisionBackend("llava-nf4", model_id=str(llava_dir), quantize=True, device=device, max_new_tokens=8)
            runner = BackendRunner([clip, llava])
            list(runner.load_all())
            timings = []
            for question, labels in questions[:3]:
                start = time.perf_counter()
                order = []
                for answer in runner.stream(image, question, labels):
                    order.append((answer.backend, round(time.perf_counter() - start, 4), answer.error))
                timings.append({"question": question, "first_s": order[0][1], "all_s": order[-1][1], "order": order})
            runner.close()
            report["compare"] = timings
    report["backends"] = rows
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
