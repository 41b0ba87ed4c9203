"""The shipped offline router on questions it never trained on, over seeds, against every baseline and peer.

    python scripts/bench_router_real.py                       # 5 seeds, writes docs/figures/router_real.json
    python scripts/bench_router_real.py --seeds 2 --out /tmp/r.json

Trains the router exactly as the offline preset ships it (its ``[router] pairs``: easy-VQA train plus the
bootstrap suite's training part, the preset's text encoder and image features), once per seed, and
evaluates every version on each evaluation set with ``--split all`` semantics (no image of an evaluation
set is in the training pairs; the script checks that and stops otherwise):

* ``real``: the bootstrap suite's evaluation part (real photos, ``data/bootstrap/eval.jsonl``);
* ``easyvqa``: the easy-VQA test set.

Per set it reports routed accuracy, ECE, ``delta_best_single`` with its paired-bootstrap interval, the
category rule, each single backend, the oracle, and every peer router (kNN, linear, MLP, MF,
sw_ranking) fitted on the same training rows, as mean and range over seeds, plus the router's margin
over each, and ECE with its bootstrap interval and the ECE a perfectly calibrated router would show on
the same cells. Decision latency (cold caches, image features included; and with the photo embedded first,
as the page does at upload) is timed on the real set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EVAL_SETS = {
    "real": "data/benchmarks/offline_pairs_bootstrap_eval.jsonl",
    "easyvqa": "data/benchmarks/offline_pairs_easyvqa_test_500.jsonl",
}


def _spread(values: list[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "min": None, "max": None}
    return {"mean": round(float(arr.mean()), 4), "min": round(float(arr.min()), 4), "max": round(float(arr.max()), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--preset", default="offline")
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures" / "router_real.json"))
    parser.add_argument("--timing", type=int, default=66, help="decisions to time on the real set (0: none)")
    parser.add_argument("--train-pairs", action="append", help="train on these pairs instead of the preset's [router] pairs")
    parser.add_argument("--sets", default=",".join(EVAL_SETS), help=f"evaluation sets, a comma list of {', '.join(EVAL_SETS)}")
    args = parser.parse_args(argv)

    from backends.presets import load_preset
    from router.__main__ import _image_embedder, _text_encoder
    from router.base import choices_from_preset
    from router.evaluation import evaluate
    from router.peers import fit_peers_for_router
    from router.table import build_table
    from router.training import TrainConfig, train_router

    preset = load_preset(args.preset)
    backends = choices_from_preset(preset)
    names = [b.name for b in backends]
    train_pairs = [str(ROOT / p) for p in (args.train_pairs or preset.router.get("pairs", []))]
    wanted = [k.strip() for k in args.sets.split(",") if k.strip()]
    if not wanted or set(wanted) - set(EVAL_SETS):
        parser.error(f"--sets takes some of {', '.join(EVAL_SETS)}")
    train, _ = build_table(pairs=train_pairs, backends=names)
    sets = {k: build_table(pairs=[str(ROOT / EVAL_SETS[k])], backends=names)[0] for k in wanted}
    for key, table in sets.items():
        shared = set(table.groups) & set(train.groups)
        if shared:
            parser.exit(2, f"{key}: {len(shared)} evaluation images are also in the training pairs; not a held-out figure\n")

    embedder, embedder_name = _image_embedder(preset, "auto")
    encoder = _text_encoder("minilm")
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        result = train_router(train, backends, config=TrainConfig(seed=seed), text_encoder=encoder,
                              image_embedder=embedder, image_embedder_name=embedder_name)
        train_s = time.perf_counter() - t0
        run: dict[str, Any] = {"seed": seed, "train_s": round(train_s, 2), "version": result.router.version}
        for key, table in sets.items():
            peers, _ = fit_peers_for_router(result.router, train, exclude_groups=list(table.groups), seed=seed)
            report = evaluate(result.router, table, None, peers=peers, seed=seed,
                              timing_sample=args.timing if key == "real" else 0)
            run[key] = {k: report.get(k) for k in (
                "n_queries", "routed_accuracy", "ece", "ece_ci95", "ece_if_calibrated", "best_single_accuracy", "best_single_backend", "oracle_accuracy",
                "category_rule_accuracy", "random_accuracy", "delta_best_single", "delta_best_single_ci95", "aiq",
                "per_backend_accuracy", "choice_share", "decision_ms_p50", "decision_ms_p95",
                "decision_ms_p50_image_warmed", "decision_ms_p95_image_warmed")}
            run[key]["peers"] = {n: {"routed_accuracy": p["routed_accuracy"], "ece": p["ece"], "aiq": p["aiq"]}
                                 for n, p in report.get("peers", {}).items()}
        runs.append(run)
        print(json.dumps({"seed": seed, **{k: {m: run[k][m] for m in ("routed_accuracy", "ece", "delta_best_single_ci95")}
                                           for k in sets}}), flush=True)

    summary: dict[str, Any] = {}
    for key in sets:
        rows = [r[key] for r in runs]
        peers = sorted(rows[0]["peers"])
        summary[key] = {
            "n_queries": rows[0]["n_queries"],
            "routed_accuracy": _spread([r["routed_accuracy"] for r in rows]),
            "ece": _spread([r["ece"] for r in rows]),
            "ece_ci95_per_seed": [r["ece_ci95"] for r in rows],
            # What a perfectly calibrated router with each seed's probabilities would show (mean, p95):
            # the ECE that sampling noise alone gives on this many cells.
            "ece_if_calibrated_per_seed": [r["ece_if_calibrated"] for r in rows],
            "delta_best_single": _spread([r["delta_best_single"] for r in rows]),
            "delta_best_single_ci95_per_seed": [r["delta_best_single_ci95"] for r in rows],
            "best_single": {"backend": rows[0]["best_single_backend"], "accuracy": rows[0]["best_single_accuracy"]},
            "per_backend_accuracy": rows[0]["per_backend_accuracy"],
            "category_rule_accuracy": rows[0]["category_rule_accuracy"],
            "oracle_accuracy": rows[0]["oracle_accuracy"],
            "random_accuracy": rows[0]["random_accuracy"],
            "peers": {n: {"routed_accuracy": _spread([r["peers"][n]["routed_accuracy"] for r in rows]),
                          "ece": _spread([r["peers"][n]["ece"] for r in rows])} for n in peers},
            "margin_over_peer_mean": {n: round(float(np.mean([r["routed_accuracy"] - r["peers"][n]["routed_accuracy"] for r in rows])), 4)
                                      for n in peers},
            "margin_over_rule_mean": round(float(np.mean([r["routed_accuracy"] - r["category_rule_accuracy"] for r in rows])), 4),
        }
        if key == "real" and args.timing:
            summary[key]["decision_ms_p50"] = _spread([r["decision_ms_p50"] for r in rows])
            summary[key]["decision_ms_p95"] = _spread([r["decision_ms_p95"] for r in rows])
            summary[key]["decision_ms_p50_image_warmed"] = _spread([r["decision_ms_p50_image_warmed"] for r in rows])
            summary[key]["decision_ms_p95_image_warmed"] = _spread([r["decision_ms_p95_image_warmed"] for r in rows])
    out = {
        "command": "python scripts/bench_router_real.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "preset": preset.name, "train_pairs": [str(Path(p).resolve().relative_to(ROOT)) if Path(p).resolve().is_relative_to(ROOT) else str(p) for p in train_pairs],
        "train_queries": train.n_queries, "seeds": args.seeds, "wall_s": round(time.perf_counter() - started, 1),
        "summary": summary, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
