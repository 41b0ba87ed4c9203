"""Hub smoke test (``make smoke-hub``): the hub presets' real models, loaded and asked three questions.

Loads every backend of the ``cpu`` preset, of ``gpu`` where a CUDA GPU is present, and the local part of
``mixed`` (its remote LLaVA runs on a server: ``docs/remote.md``), each through the product's own
loaders with the preset's options, and asks each the same three questions about the checked-in example
photos (``data/examples``): a question with candidate labels, one whose options the question lists, and
an open one. Prints each backend's card (device, quantisation, what stayed full precision, memory, load
time) and every answer with its top label scores and latency.

What cannot run here is skipped with the reason: everything when the hub is unreachable (``HF_HUB_OFFLINE``
set, or no connection to huggingface.co), the gpu preset without CUDA. Exit status: 0 when every backend
that could run answered every question (or everything was skipped), 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backends.presets import hub_reachable, load_preset  # noqa: E402

PRESETS = ("cpu", "gpu", "mixed")
EXAMPLES = ROOT / "data" / "examples"
#: (photo, question, labels): labels given, options listed in the question, an open question.
QUESTIONS: tuple[tuple[str, str, list[str] | None], ...] = (
    ("chelsea.jpg", "What animal is this?", ["cat", "dog", "rocket", "coffee"]),
    ("rocket.jpg", "Is this a rocket or an airplane?", None),
    ("coffee.jpg", "What is in the cup?", None),
)


def skip_reason(preset: str) -> str | None:
    """Why ``preset`` cannot run on this machine, or None."""
    if preset == "gpu":
        from backends.devices import cuda_available

        if not cuda_available():
            return "no CUDA GPU here"
    return None


def smoke_backend(backend: Any) -> bool:
    """Load one backend, ask it the three questions, print everything; True when all went well."""
    from backends.images import load_image

    start = time.perf_counter()
    loaded = backend.load()
    info = backend.describe()
    print(f"  {info.name} ({info.family}, {info.model_id}): loaded={loaded} in {time.perf_counter() - start:.1f} s")
    if not loaded:
        print(f"    FAILED to load: {info.error}")
        return False
    memory = f"{info.memory_mb:.0f} MB" if info.memory_mb is not None else "?"
    print(f"    device {info.device}, {info.quantization}, weights {memory}")
    for layer in info.full_precision_layers[:8]:
        print(f"    full precision: {layer}")
    ok = True
    for photo, question, labels in QUESTIONS:
        answer = backend.answer(load_image(EXAMPLES / photo), question, labels)
        top = ", ".join(f"{label} {score:.1%}" for label, score in (answer.label_scores or [])[:3])
        result = f"ERROR {answer.error}" if answer.error else repr(answer.text) + (f"  [{top}]" if top else "")
        print(f"    {photo:12s} {question!r}: {result}  ({answer.latency_s:.2f} s)")
        ok = ok and answer.ok
    return ok


def release(backend: Any) -> None:
    """Drop a backend's model before the next one loads (the gpu preset's four do not all fit everywhere)."""
    for attribute in ("_model", "_processor", "_tokenizer"):
        if hasattr(backend, attribute):
            setattr(backend, attribute, None)
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--no-quantize", action="store_true", help="load full precision instead of nf4")
    args = parser.parse_args(argv)

    if not hub_reachable():
        print(
            "hub unreachable (HF_HUB_OFFLINE is set or huggingface.co cannot be reached): skipped every preset. "
            "Run `make smoke-hub` where the model hub answers."
        )
        return 0

    from backends.registry import build_backends
    from backends.shared import SharedModels

    failures: list[str] = []
    for name in args.presets:
        reason = skip_reason(name)
        if reason:
            print(f"[{name}] skipped: {reason}")
            continue
        preset = load_preset(name)
        local = [spec for spec in preset.backends if spec.family != "remote"]
        remote = [spec.name for spec in preset.backends if spec.family == "remote"]
        print(f"[{name}] {preset.description}")
        if remote:
            print(f"  skipped {', '.join(remote)}: remote (needs its server; see docs/remote.md)")
        for backend in build_backends(local, shared=SharedModels(), quantize=False if args.no_quantize else None):
            if not smoke_backend(backend):
                failures.append(f"{name}/{backend.name}")
            release(backend)
    print("all answered" if not failures else f"FAILED: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
