"""Small torch modules run through ONNX Runtime on the CPU, compiled once and cached on disk.

The router embeds one question and one photo per decision. In eager torch each of those is a hundred or
so small operators, and on a 2-core CPU their per-op cost (and torch's OpenMP threads spinning against
the backends' threads) is most of the time: EfficientNet-Lite0 takes about 20 ms and MiniLM about 12 ms
on a quiet machine and several times that while a backend generates beside them. ONNX Runtime runs the
same graph with fused operators and degrades far less under load (docs/benchmarks.md has the figures).

:func:`compile_module` exports a module with ``torch.onnx.export`` (the TorchScript exporter), writes it
to ``$ROUTELENS_CACHE/onnx/`` under a name that fingerprints its weights, torch and ONNX Runtime, checks
that ONNX Runtime reproduces torch's outputs on the example inputs, and returns a runner. Anything that
goes wrong (the packages missing, an export error, outputs that differ) returns None with a log line,
and the caller keeps the torch path: the accelerated path is an optimisation, never a requirement.
``ROUTELENS_ONNX=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Environment switch: "0", "false", "no" or "off" keeps every module on torch.
ENV_SWITCH = "ROUTELENS_ONNX"
#: Bump when the export settings change, so cached files from older settings are not reused.
EXPORT_FORMAT = "1"
#: Largest difference from torch's outputs that the check accepts (float32 rounding is about 1e-5).
TOLERANCE = 1e-3
#: Cached graphs kept; older ones (other weights, other versions) are removed.
KEEP_FILES = 8
OPSET = 17

_export_lock = threading.Lock()  # torch.onnx.export is not re-entrant; one export at a time per process


def onnx_enabled() -> bool:
    """True unless ``ROUTELENS_ONNX`` turns the ONNX Runtime path off."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_folder() -> Path:
    from backends.gemma_cache import cache_root

    return cache_root() / "onnx"


class OnnxRunner:
    """Runs one ONNX Runtime session: ``runner(*arrays)`` gives the outputs as numpy arrays."""

    def __init__(self, session: Any, input_names: Sequence[str], path: Path) -> None:
        self.session = session
        self.input_names = list(input_names)
        self.path = path

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.input_names, arrays, strict=True)))

    @property
    def file_bytes(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0


def fingerprint(module: Any, extra: str = "") -> str:
    """A short hash of the module's weights, its class, torch's and ONNX Runtime's versions and ``extra``."""
    import onnxruntime
    import torch

    digest = hashlib.sha256(f"{EXPORT_FORMAT}|{type(module).__qualname__}|{torch.__version__}|{onnxruntime.__version__}|{extra}".encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def compile_module(
    module: Any,
    example_inputs: Sequence[Any],
    *,
    name: str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    threads: int = 1,
    extra_fingerprint: str = "",
    cache_dir: Path | None = None,
) -> OnnxRunner | None:
    """``module`` (eval mode, CPU) as an ONNX Runtime session, or None where that is not possible.

    ``threads``: ONNX Runtime's intra-op threads. One by default: the router runs beside the backends on
    a 2-core CPU, and one thread per session was as fast as two for a cold decision (24 ms against 26 ms
    p50) while leaving the other core to whatever else runs."""
    if not onnx_enabled():
        return None
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
        import onnxruntime as ort
    except ImportError as exc:
        log.info("ONNX Runtime not available (%s); %s stays on torch", exc, name)
        return None
    try:
        folder = cache_dir or cache_folder()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}-{fingerprint(module, extra_fingerprint)}.onnx"
        if path.is_file():
            path.touch()  # recently used: pruned last
        else:
            _export(module, example_inputs, path, input_names, output_names, dynamic_axes)
        _prune(folder, keep=path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        # No spinning: a spinning pool keeps a core busy after each run, and the backends' torch threads and
        # the other session need it (docs/router.md: with spinning on, a cold decision took twice as long).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        runner = OnnxRunner(session, input_names, path)
        _check(module, runner, example_inputs)
        return runner
    except Exception as exc:  # the torch path stays: this is only an optimisation
        log.warning("%s stays on torch: ONNX Runtime path unavailable (%s: %s)", name, type(exc).__name__, exc)
        return None


def _export(module: Any, example_inputs: Sequence[Any], path: Path, input_names: Sequence[str],
            output_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]] | None) -> None:
    import warnings

    import torch

    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with _export_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes are not the user's business
        torch.onnx.export(
            module, tuple(example_inputs), str(partial), input_names=list(input_names), output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in (dynamic_axes or {}).items()}, opset_version=OPSET, dynamo=False,
        )
    os.replace(partial, path)  # atomic: another process never reads half a file


def _check(module: Any, runner: OnnxRunner, example_inputs: Sequence[Any]) -> None:
    import torch

    with torch.inference_mode():
        expected = module(*example_inputs)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    got = runner(*[t.detach().cpu().numpy() for t in example_inputs])
    if len(got) != len(expected):
        raise ValueError(f"the graph gives {len(got)} outputs, torch {len(expected)}")
    for ours, theirs in zip(got, expected, strict=True):
        theirs = theirs.detach().float().cpu().numpy()
        if ours.shape != theirs.shape or not np.allclose(ours, theirs, atol=TOLERANCE, rtol=TOLERANCE):
            raise ValueError(f"outputs differ from torch's by {float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape else 'shape'}")


def _prune(folder: Path, keep: Path) -> None:
    try:
        files = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in [f for f in files if f != keep][KEEP_FILES - 1:]:
        try:
            old.unlink()
        except OSError:  # in use by another process, or already gone
            continue


__all__ = ["ENV_SWITCH", "OnnxRunner", "cache_folder", "compile_module", "fingerprint", "onnx_enabled"]
