"""Benchmark: annotation orders on the offline preset's pairs, and how fast the incremental retrain is.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_simulate.py [--seeds 5] [--image-features]

Writes data/benchmarks/simulate_offline.json (the simulator's --json object: the Annotate queue takes
the strategy it measured best, and the Leaderboard draws its curves) and docs/figures/bench_simulate.json
(timings and settings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.incremental import Basis, fit_incremental  # noqa: E402
from router.simulate import SimulateConfig, _preset_parts, costs_for, pool_features, simulate  # noqa: E402
from router.table import build_table  # noqa: E402


def time_incremental(n: int, d: int, backends: int = 2, repeats: int = 3) -> dict[str, float]:
    """Seconds to fit the incremental retrain on n judged queries of d-d features (PCA basis, cold and warm)."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (rng.random((n, backends)) < 1 / (1 + np.exp(-x[:, :backends]))).astype(np.float64)
    questions = [f"question {i % 97}" for i in range(n)]
    t0 = time.perf_counter()
    basis = Basis.from_pool(x)
    design = basis.transform(x, questions)
    t_basis = time.perf_counter() - t0
    cold, warm = [], []
    model = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = fit_incremental(design, y, basis=basis, backends=[str(b) for b in range(backends)])
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fit_incremental(design, y, basis=basis, backends=[str(b) for b in range(backends)], warm=model.coef)
        warm.append(time.perf_counter() - t0)
    return {"n": n, "d": d, "basis_s": round(t_basis, 3), "fit_cold_s": round(min(cold), 3), "fit_warm_s": round(min(warm), 3)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--image-features", action="store_true", help="embed the images with the preset's vision model")
    parser.add_argument("--full-retrain", action="store_true", help="also time one full train_router (it computes its own features)")
    parser.add_argument("--pairs", action="append", default=None, help="pairs JSONL (default: the offline preset's [router] pairs)")
    parser.add_argument("--sizes", default="1000,10000", help="judged-query counts to time the incremental retrain at")
    parser.add_argument("--encoder", choices=("minilm", "hashing"), default="minilm")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="write both JSON files here instead of data/benchmarks/ and docs/figures/")
    args = parser.parse_args()
    import tomllib

    preset_file = ROOT / "backends" / "presets" / "offline.toml"
    pairs = args.pairs or [str(ROOT / p) for p in tomllib.loads(preset_file.read_text())["router"]["pairs"]]
    pairs = [p for p in pairs if Path(p).is_file()]
    preset, embedder, name = _preset_parts("offline") if args.image_features else (None, None, None)
    t0 = time.perf_counter()
    table, _ = build_table(pairs=pairs)
    features = pool_features(table, args.encoder, embedder, name)
    t_features = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = simulate(table, features, costs_for(table, preset), SimulateConfig(seeds=args.seeds))
    t_sim = time.perf_counter() - t0
    figures = args.out_dir or ROOT / "docs" / "figures"
    results = args.out_dir or ROOT / "data" / "benchmarks"
    figures.mkdir(parents=True, exist_ok=True)
    result["settings"] = {"pairs": [Path(p).name for p in pairs], "seeds": args.seeds, "image_features": bool(embedder),
                          "command": "scripts/bench_simulate.py" + (" --image-features" if embedder else "")}
    (results / "simulate_offline.json").write_text(json.dumps(result, indent=1) + "\n")
    bench = {
        "pairs": [Path(p).name for p in pairs], "queries": table.n_queries, "backends": table.backends,
        "image_features": bool(embedder), "feature_dim": int(features.shape[1]), "seeds": args.seeds,
        "features_s": round(t_features, 2), "simulator_s": round(t_sim, 2),
        "judgments_to_match_random": result["judgments_to_match_random"],
        "final_accuracy": {n: c["routed_accuracy"][-1] for n, c in result["strategies"].items()},
        "incremental": [time_incremental(int(n), int(features.shape[1])) for n in args.sizes.split(",") if n.strip()],
    }
    if args.full_retrain:
        from router.base import BackendChoice
        from router.training import TrainConfig, train_router

        choices = [BackendChoice(b, "vlm" if i == 0 else "vlm+llm", c) for i, (b, c) in enumerate(zip(table.backends, costs_for(table, preset), strict=True))]
        t0 = time.perf_counter()
        # The real full retrain: it computes its own features (question encoder, and the images when embedded).
        train_router(table, choices, config=TrainConfig(threads=1), image_embedder=embedder, image_embedder_name=name)
        bench["full_retrain_s"] = round(time.perf_counter() - t0, 2)
    (figures / "bench_simulate.json").write_text(json.dumps(bench, indent=1))
    print(json.dumps(bench, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
