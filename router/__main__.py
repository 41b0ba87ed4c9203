"""Command line: ``python -m router train|evaluate|versions|rollback``.

    python -m router train --pairs PAIRS.jsonl [--db DB] --out DIR [--kind embedding|llm] [--force]
    python -m router evaluate --router DIR --pairs PAIRS.jsonl [--split all] [--train-pairs TRAIN.jsonl] --json
    python -m router versions --db DB            (or --dir DIR)
    python -m router rollback VERSION --db DB    (or --dir DIR)
    python -m router bootstrap --preset P [--data SET ...] [--limit N] [--db DB]   (router/bootstrap.py)
    python -m router simulate --pairs P [--strategies random,uncertainty,...] [--seeds N] [--json]   (router/simulate.py)

Problems a person can fix (too few rows, bad lines, unknown backends, missing files) are printed as
one clear message on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from router.base import BackendChoice, RouterError


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@contextmanager
def _open_store(path: str | None) -> Iterator[Any]:
    if path is None:
        yield None
        return
    try:
        from data.store import Store
    except ImportError as exc:
        raise RouterError(f"--db needs the data package's store (data/store.py): {exc}") from None
    store = Store.open(path)
    try:
        yield store
    finally:
        close = getattr(store, "close", None)
        if callable(close):
            close()


def _load_backends(args: argparse.Namespace) -> tuple[list[BackendChoice] | None, Any]:
    """Backend choices from --backends FILE (JSON list or preset TOML) or --preset NAME; else None."""
    from router.base import choices_from_preset

    if getattr(args, "backends", None):
        path = Path(args.backends)
        if not path.is_file():
            raise RouterError(f"backend list not found: {path}")
        if path.suffix == ".toml":
            from backends.presets import load_preset_file

            preset = load_preset_file(path)
            return choices_from_preset(preset), preset
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            items = data["backends"] if isinstance(data, dict) else data
            return [BackendChoice.from_json(item) for item in items], None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise RouterError(f"{path}: expected a JSON list of {{name, kind, cost, description}} ({exc})") from None
    if getattr(args, "preset", None):
        from backends.presets import PresetError, load_preset

        try:
            preset = load_preset(args.preset)
        except PresetError as exc:
            raise RouterError(str(exc)) from None
        return choices_from_preset(preset), preset
    return None, None


def _image_embedder(preset: Any, wanted: str) -> tuple[Callable[[Any], Any] | None, str | None]:
    """The preset's image-feature backend's ``embed_image`` (``[router] image_features``), if any."""
    if wanted == "none" or preset is None:
        return None, None
    name = (getattr(preset, "router", {}) or {}).get("image_features")
    if not name:
        return None, None
    try:
        from backends.registry import build_backend

        backend = build_backend(preset.spec(name))
        if not hasattr(backend, "embed_image"):
            _warn(f"backend {name} gives no image features; training on the question text only")
            return None, None
        return backend.embed_image, name
    except Exception as exc:  # image features are optional
        _warn(f"image features from {name} unavailable ({exc}); training on the question text only")
        return None, None


def _text_encoder(name: str) -> Any:
    from router.features import HashingTextEncoder, MiniLMTextEncoder

    return HashingTextEncoder() if name == "hashing" else (MiniLMTextEncoder() if name == "minilm" else None)


def cmd_train(args: argparse.Namespace) -> int:
    from router.lifecycle import train_version
    from router.training import TrainConfig

    if not args.pairs and not args.db:
        raise RouterError("give --pairs PAIRS.jsonl, --db DB, or both")
    backends, preset = _load_backends(args)
    embedder, embedder_name = _image_embedder(preset, args.image_features)
    config = TrainConfig(kind=args.kind, lambda_cost=args.lambda_cost, seed=args.seed, threads=args.threads)
    encoder = None if args.kind == "llm" else _text_encoder(args.encoder)
    with _open_store(args.db) as store:
        outcome = train_version(
            out_dir=args.out,
            pairs=args.pairs or [],
            store=store,
            backends=backends,
            config=config,
            force=args.force,
            strict=not args.lenient,
            text_encoder=encoder,
            image_embedder=embedder,
            image_embedder_name=embedder_name,
            llm_model_dir=args.llm_model_dir,
        )
    for message in outcome.warnings:
        _warn(message)
    summary = outcome.summary()
    summary.pop("warnings")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        m = summary["metrics"]
        state = "promoted (now active)" if outcome.promoted else "saved, not promoted"
        print(f"router {outcome.version}: {state}: {outcome.reason}")
        print(f"  folder: {outcome.path}")
        print(f"  text only: {summary['text_only']}; data: {json.dumps(summary['data'])}")
        print("  held-out: " + ", ".join(f"{k}={v}" for k, v in m.items()))
    return 0


def _resolve_router_dir(path: Path) -> Path:
    from router.versions import CARD_FILE, INDEX_FILE, VersionRegistry

    if (path / CARD_FILE).is_file():
        return path
    if (path / INDEX_FILE).is_file():
        registry = VersionRegistry(path)
        active = registry.active_version()
        if active is None:
            raise RouterError(f"{path} has versions but none is active; pass a version folder")
        return registry.path_of(active)
    raise RouterError(f"no router at {path} (expected {CARD_FILE}, or a versions folder with {INDEX_FILE})")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from router.evaluation import evaluate
    from router.table import build_table, heldout_mask
    from router.versions import load_router

    directory = _resolve_router_dir(Path(args.router))
    backends, preset = _load_backends(args)
    embedder, _ = _image_embedder(preset, args.image_features)
    router = load_router(directory, backends=backends, image_embedder=embedder, llm_model_dir=args.llm_model_dir)
    table, warnings = build_table(pairs=args.pairs, backends=router.backend_names, strict=not args.lenient)
    for message in warnings:
        _warn(message)
    index = None
    if args.split == "heldout":
        split = router.card.get("split", {})
        mask = heldout_mask(table.groups, split)
        index = [i for i, keep in enumerate(mask) if keep]
        if not index:
            raise RouterError(
                f"none of the {table.n_queries} queries in {', '.join(args.pairs)} falls in router {router.version}'s held-out "
                "images; for a separate test file pass --split all"
            )
    rows = list(range(table.n_queries)) if index is None else index
    features, peers, peers_info = _peers_for(args, router, table, rows)
    report = evaluate(router, table, index, lambda_cost=args.lambda_cost, timing_sample=args.timing, features=features, peers=peers)
    report["split"] = args.split
    report.setdefault("peers", {})
    if peers_info is not None:
        report["peers_training"] = peers_info
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            if key == "cost_quality":
                value = f"{len(value['overall']['points'])} curve points overall, {len(value['by_category'])} categories (see --json)"
            elif key == "peers":
                value = "; ".join(f"{n} {m['routed_accuracy']} (ece {m['ece']}, aiq {m['aiq']})" for n, m in value.items()) or "none"
            print(f"{key:>24}: {value}")
    return 0


def _peers_for(args: argparse.Namespace, router: Any, table: Any, rows: list[int]) -> tuple[Any, Any, dict[str, Any] | None]:
    """Evaluation-row features and the peer routers fitted on the router's training rows (see router.peers).

    The training rows come from ``--train-pairs`` when given, else from the evaluated pairs themselves
    (their rows outside the held-out images); rows sharing an image with an evaluated row are left out.
    """
    from router.peers import PEER_NAMES, fit_peers_for_router, router_features
    from router.table import build_table

    names = PEER_NAMES if args.peers == "all" else [n.strip() for n in args.peers.split(",") if n.strip() and n.strip() != "none"]
    if not names or not hasattr(router, "score_features") or getattr(router, "extractor", None) is None:
        return None, None, None
    features = router_features(router, table, rows)
    source = table
    if args.train_pairs:
        source, warnings = build_table(pairs=args.train_pairs, backends=router.backend_names, strict=not args.lenient)
        for message in warnings:
            _warn(f"--train-pairs: {message}")
    peers, info = fit_peers_for_router(router, source, exclude_groups=[table.groups[i] for i in rows], names=names)
    info["source"] = ", ".join(args.train_pairs) if args.train_pairs else "the evaluated pairs outside the held-out images"
    return features, peers, info


def cmd_versions(args: argparse.Namespace) -> int:
    from router.versions import VersionRegistry

    if not args.db and not args.dir:
        raise RouterError("give --db DB or --dir DIR")
    with _open_store(args.db) as store:
        entries = [e.to_json() for e in VersionRegistry(args.dir, store).versions()]
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("no router versions yet")
        return 0
    print(f"{'':2}{'version':40} {'kind':10} {'created':21} {'routed':>7} {'best1':>7} {'oracle':>7} {'ece':>7}")
    for e in entries:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        print(
            f"{'*' if e['active'] else ' '} {e['version']:40} {e['kind']:10} {e['created_at']:21} "
            f"{fmt(e['routed_accuracy']):>7} {fmt(e['best_single_accuracy']):>7} {fmt(e['oracle_accuracy']):>7} {fmt(e['ece']):>7}"
        )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from router.lifecycle import rollback
    from router.versions import VersionRegistry

    if not args.db and not args.dir:
        raise RouterError("give --db DB or --dir DIR")
    with _open_store(args.db) as store:
        print(rollback(VersionRegistry(args.dir, store), args.version))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m router", description="Train, evaluate and version RouteLens routers.")
    sub = parser.add_subparsers(dest="command", required=True)

    def backend_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--backends", help="JSON list of {name, kind, cost, description}, or a preset .toml")
        p.add_argument("--preset", help="a preset name (offline, cpu, gpu) or .toml file giving the backends")
        p.add_argument("--image-features", choices=("auto", "none"), default="auto",
                       help="auto: the preset's [router] image_features backend when a preset is given")
        p.add_argument("--llm-model-dir", help="local checkpoint for the llm router (default: the Gemma 3 270M cache)")
        p.add_argument("--lenient", action="store_true", help="skip bad pair lines (listed as warnings) instead of stopping")

    train = sub.add_parser("train", help="train a router version from pairs and/or store judgments")
    train.add_argument("--pairs", action="append", help="performance pairs JSONL (repeatable)")
    train.add_argument("--db", help="SQLite store whose judgments are added to the pairs")
    train.add_argument("--out", required=True, help="versions folder (created)")
    train.add_argument("--kind", choices=("embedding", "llm"), default="embedding")
    train.add_argument("--force", action="store_true", help="make the new version active even if it is not better")
    train.add_argument("--encoder", choices=("minilm", "hashing"), default="minilm", help="text encoder of the embedding router")
    train.add_argument("--lambda-cost", type=float, default=0.0, help="default accuracy/cost trade-off stored in the router")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=None, help="torch threads while fitting the heads (1 is fastest on a busy CPU)")
    train.add_argument("--json", action="store_true", help="print the outcome as JSON")
    backend_options(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="evaluate a router version against baselines and the oracle")
    ev.add_argument("--router", required=True, help="a version folder, or a versions folder (its active version)")
    ev.add_argument("--pairs", action="append", required=True, help="performance pairs JSONL (repeatable)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--split", choices=("heldout", "all"), default="heldout",
                    help="heldout (default): only queries whose image is in the router's held-out fold; all: every query")
    ev.add_argument("--lambda-cost", type=float, default=None)
    ev.add_argument("--timing", type=int, default=50, help="decide() calls to time (0 = none)")
    ev.add_argument("--train-pairs", action="append",
                    help="the router's training pairs (repeatable): the peer routers are fitted on their rows outside the "
                         "router's held-out images (default: the --pairs rows outside them)")
    ev.add_argument("--peers", default="all",
                    help="peer routers to fit and report: all (default), none, or a comma list of knn,linear,mlp,mf,sw_ranking")
    backend_options(ev)
    ev.set_defaults(func=cmd_evaluate)

    ver = sub.add_parser("versions", help="list router versions (* = active)")
    ver.add_argument("--db")
    ver.add_argument("--dir")
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(func=cmd_versions)

    rb = sub.add_parser("rollback", help="make an earlier version active")
    rb.add_argument("version")
    rb.add_argument("--db")
    rb.add_argument("--dir")
    rb.set_defaults(func=cmd_rollback)

    from router import bootstrap  # python -m router bootstrap: its options and main live there

    bootstrap.add_parser(sub)
    from router import simulate  # python -m router simulate: replay annotation orders (router/simulate.py)

    simulate.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except RouterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # data.pairs.PairsError, unreadable files
        print(f"error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the store's errors (data.store.StoreError) are for people too
        if type(exc).__module__.startswith("data."):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
