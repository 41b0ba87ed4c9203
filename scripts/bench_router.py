"""Router benchmark: every router kind and baseline side by side, plus 2.5-million-row training.

    python scripts/bench_router.py                      # both parts (a few minutes on 2 cores)
    python scripts/bench_router.py --skip-scale         # part A only
    python scripts/bench_router.py --scale-only --rows 2500000

Part A (side by side). A synthetic visual-question benchmark with a known structure, written as a
real pairs JSONL with real PNG images, then read through the normal path (``build_table``):
five backends (two ``vlm``, three ``vlm+llm``) whose accuracy depends on the task category, on a
per-question difficulty and, for the ``vlm`` backends, on whether the image is dark. Questions come
from templates per category (some phrased so the keyword classifier gets them wrong). Features are
real: MiniLM question embeddings, Gemma 3 270M hidden states (local checkpoint) and a colour
histogram of the image. Every router is evaluated on the same held-out images; HuggingGPT (about a
second per question on this CPU) on a fixed subset, with the embedding router on that subset too.

Part B (scale). 2.5 million pair rows = 500,000 queries x 5 backends, as arrays (no JSONL), with a
random 384-d feature vector per query generated without the encoder (category centroid + difficulty
direction + noise; the encoder would cost about 500k x 2 ms). Timed: folding the pair rows into the
query table, the image split, fitting the heads, calibration and the held-out evaluation
(``train_router``). Run in a child process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from router.base import BackendChoice  # noqa: E402
from router.categories import CATEGORIES  # noqa: E402

BACKENDS = [
    BackendChoice("clip-vit-l-14-336", "vlm", 0.05, "CLIP ViT-L/14-336 zero-shot classifier"),
    BackendChoice("siglip-vit-b-16", "vlm", 0.05, "SigLIP ViT-B/16 zero-shot classifier"),
    BackendChoice("smolvlm-256m", "vlm+llm", 0.8, "SmolVLM 256M, a small vision-language model"),
    BackendChoice("qwen2-vl-2b", "vlm+llm", 1.5, "Qwen2-VL 2B instruct, reads text well"),
    BackendChoice("llava-1.5-7b", "vlm+llm", 3.0, "LLaVA 1.5 7B, CLIP ViT-L/14-336 with Vicuna"),
]
# Accuracy per category (rows: CATEGORIES order) per backend (columns: BACKENDS order): recognition
# favours the contrastive models, counting/OCR/reasoning the VLM+LLM models (the paper's finding).
ACCURACY = np.array([
    [0.86, 0.88, 0.60, 0.70, 0.72],  # object
    [0.82, 0.78, 0.60, 0.70, 0.72],  # scene
    [0.72, 0.76, 0.35, 0.45, 0.52],  # fine_grained
    [0.76, 0.72, 0.60, 0.70, 0.68],  # attribute
    [0.30, 0.28, 0.45, 0.62, 0.55],  # counting
    [0.15, 0.25, 0.45, 0.72, 0.50],  # ocr
    [0.35, 0.33, 0.50, 0.60, 0.64],  # spatial
    [0.30, 0.32, 0.40, 0.55, 0.66],  # knowledge
    [0.25, 0.22, 0.45, 0.60, 0.66],  # reasoning
    [0.30, 0.28, 0.50, 0.60, 0.63],  # open
])
DIFFICULTY_WEIGHT = np.array([1.6, 1.6, 0.8, 0.6, 0.6])  # hard questions hurt the vlm backends most
DARK_PENALTY = np.array([1.4, 1.4, 0.3, 0.3, 0.3])  # logit penalty on dark images
TEMPLATES: dict[str, list[str]] = {
    "object": ["what is this {o}?", "is there a {o} in the image?", "what object is next to the {o}?", "identify the thing near the {o}"],
    "scene": ["where was this photo of the {o} taken?", "is the {o} indoors or outdoors?", "what place is the {o} in?"],
    "fine_grained": ["what breed is the {o}?", "what kind of {o} is this?", "which model of {o} is shown?"],
    "attribute": ["what color is the {o}?", "what is the {o} made of?", "what shape is the {o}?", "is the {o} red?"],
    "counting": ["how many {o}s are there?", "count the {o}s", "what is the number of {o}s in the picture?"],
    "ocr": ["what does the sign on the {o} say?", "what is written on the {o}?", "read the label on the {o}"],
    "spatial": ["what is to the left of the {o}?", "is the {o} above the table?", "where is the {o}?"],
    "knowledge": ["who invented the {o}?", "what is the {o} used for?", "in what year was this {o} made?"],
    "reasoning": ["why is the {o} here?", "what would happen if the {o} fell?", "is it safe to touch the {o}?"],
    "open": ["tell me about the {o}", "describe the {o} in detail", "anything unusual about the {o}?"],
}
OBJECTS = [
    "dog", "cat", "car", "bus", "bicycle", "cup", "bottle", "chair", "table", "tree", "boat", "bird", "horse",
    "clock", "phone", "laptop", "book", "sign", "pizza", "banana", "apple", "train", "plane", "kite", "umbrella",
    "bench", "lamp", "shoe", "hat", "guitar", "ball", "bridge", "building", "flower", "truck", "camera",
]


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def make_bench_pairs(folder: Path, n_images: int, questions_per_image: int, seed: int) -> tuple[Path, dict[str, dict[str, float]]]:
    """Write PNG images and a pairs JSONL (the documented format) under ``folder``.

    Also returns the true P(correct) of every (query, backend): routing by it is the best any router
    can do (the "Bayes" row), which is the meaningful ceiling; the oracle also profits from luck.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / "pairs.jsonl"
    true_p: dict[str, dict[str, float]] = {}
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n_images):
            dark = rng.random() < 0.3
            base = rng.integers(0, 40, 3) if dark else rng.integers(90, 255, 3)
            img = Image.new("RGB", (32, 32), tuple(int(v) for v in base))
            colour = tuple(int(v) for v in (rng.integers(0, 60, 3) if dark else rng.integers(0, 255, 3)))
            img.paste(colour, (int(rng.integers(0, 16)), int(rng.integers(0, 16)), 24, 24))
            image_name = f"images/{i:05d}.png"
            img.save(folder / image_name)
            for k in range(questions_per_image):
                c = int(rng.integers(len(CATEGORIES)))
                category = CATEGORIES[c]
                templates = TEMPLATES[category]
                question = templates[int(rng.integers(len(templates)))].format(o=OBJECTS[int(rng.integers(len(OBJECTS)))])
                difficulty = rng.normal()
                # Difficulty shows partly in the wording: long questions are harder.
                if difficulty > 0.8:
                    question = question.rstrip("?") + " in this cluttered picture?"
                logits = _logit(ACCURACY[c]) - DIFFICULTY_WEIGHT * difficulty - DARK_PENALTY * dark
                p_correct = 1 / (1 + np.exp(-logits))
                true_p[f"q{i}-{k}"] = {b.name: float(v) for b, v in zip(BACKENDS, p_correct, strict=True)}
                correct = rng.random(len(BACKENDS)) < p_correct
                for b, backend in enumerate(BACKENDS):
                    handle.write(json.dumps({
                        "query_id": f"q{i}-{k}", "question": question, "image": image_name, "image_sha256": None,
                        "category": category, "backend": backend.name, "answer": "", "correct": float(correct[b]),
                        "latency_s": backend.cost, "source": "benchmark",
                    }) + "\n")
    return path, true_p


def colour_histogram(image: Any) -> np.ndarray:
    """A simple real image feature: 4x4x4 RGB histogram of a 16x16 thumbnail."""
    small = np.asarray(image.convert("RGB").resize((16, 16))).reshape(-1, 3) // 64
    return np.bincount(small[:, 0] * 16 + small[:, 1] * 4 + small[:, 2], minlength=64).astype(np.float32)


def part_a(args: argparse.Namespace) -> dict[str, Any]:
    from router.baselines import BestSingleRouter, CategoryRuleRouter, HuggingGPTRouter, OracleRouter, Priors, RandomRouter
    from router.evaluation import evaluate, side_by_side
    from router.features import MiniLMTextEncoder
    from router.table import build_table
    from router.training import TrainConfig, train_router

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pairs, true_p = make_bench_pairs(Path(tmp), args.images, args.questions_per_image, args.seed)
        table, warnings = build_table(pairs=[pairs], backends=[b.name for b in BACKENDS])
        print(f"[A] {table.stats['pair_rows']} pair rows, {table.n_queries} queries, {len(set(table.groups))} images, "
              f"{len(set(table.questions))} distinct questions ({time.perf_counter() - t0:.1f}s)", flush=True)
        minilm = MiniLMTextEncoder()
        results = {}
        t = time.perf_counter()
        results["embedding"] = train_router(table, BACKENDS, config=TrainConfig(timing_sample=args.timing), text_encoder=minilm,
                                            image_embedder=colour_histogram, image_embedder_name="colour-histogram")
        print(f"[A] embedding router (MiniLM + image) trained in {time.perf_counter() - t:.1f}s", flush=True)
        t = time.perf_counter()
        results["embedding_text_only"] = train_router(table, BACKENDS, config=TrainConfig(timing_sample=args.timing), text_encoder=minilm)
        print(f"[A] embedding router (MiniLM, text only) trained in {time.perf_counter() - t:.1f}s", flush=True)
        lm = None
        if not args.skip_llm:
            from backends.gemma_cache import checkpoint_dir, is_complete
            from router.llm_router import LLMTextEncoder, load_lm_dir

            ckpt = checkpoint_dir()
            if is_complete(ckpt) or args.convert_gemma:
                t = time.perf_counter()
                lm = load_lm_dir(ckpt if is_complete(ckpt) else __import__("router.llm_router", fromlist=["x"]).default_lm_dir())
                print(f"[A] Gemma 3 270M loaded in {time.perf_counter() - t:.1f}s", flush=True)
                t = time.perf_counter()
                results["llm"] = train_router(
                    table, BACKENDS, config=TrainConfig(kind="llm", timing_sample=min(args.timing, 20)),
                    text_encoder=LLMTextEncoder(loader=lambda: lm, model_name="gemma3-270m"),
                    image_embedder=colour_histogram, image_embedder_name="colour-histogram",
                )
                print(f"[A] llm router (Gemma 3 270M hidden states + image) trained in {time.perf_counter() - t:.1f}s", flush=True)
            else:
                print("[A] no local Gemma checkpoint; llm router and HuggingGPT skipped (pass --convert-gemma)", flush=True)

        ref = results["embedding"]
        held = ref.heldout_index
        for name, res in results.items():
            assert np.array_equal(res.heldout_index, held), name  # the same held-out images for every router
            out[name] = res.card["metrics"]
        priors = Priors.from_json(ref.card["priors"])
        baselines = {
            "best_single": BestSingleRouter(BACKENDS, priors=priors, version="baseline"),
            "random": RandomRouter(BACKENDS, priors=priors, version="baseline", seed=args.seed),
            "category_rule(known category)": CategoryRuleRouter(BACKENDS, priors=priors, version="baseline"),
            "oracle": OracleRouter(BACKENDS, truth=table.truth(held), version="baseline"),
            "bayes(true P)": OracleRouter(BACKENDS, truth=true_p, version="baseline"),
        }
        for name, router in baselines.items():
            out[name] = evaluate(router, table, held, timing_sample=args.timing)
        no_cats = table.subset(np.arange(table.n_queries))
        no_cats.categories = [None] * no_cats.n_queries
        out["category_rule(keywords)"] = evaluate(baselines["category_rule(known category)"], no_cats, held, timing_sample=args.timing)
        if lm is not None and args.hugginggpt_queries > 0:
            subset = held[np.random.default_rng(args.seed).permutation(held.size)[: args.hugginggpt_queries]]
            hg = HuggingGPTRouter(BACKENDS, lm=lm, version="baseline")
            t = time.perf_counter()
            out["hugginggpt(subset)"] = evaluate(hg, table, subset, timing_sample=min(args.timing, 10))
            print(f"[A] HuggingGPT on {subset.size} queries in {time.perf_counter() - t:.1f}s", flush=True)
            out["embedding(same subset)"] = evaluate(ref.router, table, subset, features=ref.features[subset], timing_sample=0)
            out["bayes(same subset)"] = evaluate(baselines["bayes(true P)"], table, subset, timing_sample=0)
        # The cost trade-off of the default router.
        sweep = {}
        for lam in (0.0, 0.1, 0.3, 1.0):
            r = evaluate(ref.router, table, held, features=ref.features[held], lambda_cost=lam, timing_sample=0)
            sweep[str(lam)] = {k: r[k] for k in ("routed_accuracy", "mean_cost", "choice_share")}
        out["_lambda_sweep(embedding)"] = sweep
        out["_data"] = {k: ref.card["data"][k] for k in ("pair_rows", "queries", "images", "distinct_questions", "train_queries", "calibration_queries", "heldout_queries")}
        out["_calibration(embedding)"] = ref.card["calibration"]
        print()
        keys = ("n_queries", "routed_accuracy", "selection_accuracy", "ece", "mean_cost", "decision_ms_p50")
        print(side_by_side({k: v for k, v in out.items() if not k.startswith("_")}, keys))
        shared = {k: ref.card["metrics"][k] for k in ("best_single_accuracy", "best_single_backend", "oracle_accuracy", "random_accuracy",
                                                      "category_rule_accuracy", "gap_closed", "ece_choice", "category_accuracy")}
        bayes = out["bayes(true P)"]["routed_accuracy"]
        best = shared["best_single_accuracy"]
        shared["gap_closed_to_bayes"] = round((out["embedding"]["routed_accuracy"] - best) / (bayes - best), 4) if bayes > best else None
        out["_reference"] = shared
        print("\nheld-out reference (embedding router's report):", json.dumps(shared))
        print("lambda sweep (embedding):", json.dumps(sweep))
    return out


def part_b_child(rows: int, n_backends: int, seed: int, dim: int, from_jsonl: bool = False) -> dict[str, Any]:
    """Runs in its own process: generate 2.5M pair rows as arrays, then time the training."""
    from router.features import MiniLMTextEncoder
    from router.table import PairTable
    from router.training import TrainConfig, train_router

    rng = np.random.default_rng(seed)
    n_queries = rows // n_backends
    t0 = time.perf_counter()
    cat = rng.integers(len(CATEGORIES), size=n_queries)
    difficulty = rng.normal(size=n_queries).astype(np.float32)
    centroids = rng.normal(size=(len(CATEGORIES), dim)).astype(np.float32)
    direction = rng.normal(size=dim).astype(np.float32)
    features = np.empty((n_queries, dim), dtype=np.float32)
    for s in range(0, n_queries, 50_000):
        e = min(s + 50_000, n_queries)
        block = centroids[cat[s:e]] + 0.8 * difficulty[s:e, None] * direction + 1.5 * rng.standard_normal((e - s, dim), dtype=np.float32)
        features[s:e] = block / np.linalg.norm(block, axis=1, keepdims=True)
    acc = ACCURACY[:, :n_backends]
    logits = _logit(acc[cat]) - DIFFICULTY_WEIGHT[:n_backends] * difficulty[:, None]
    p_true = 1 / (1 + np.exp(-logits))
    correct_qb = (rng.random((n_queries, n_backends)) < p_true).astype(np.float32)
    bayes_choice = np.argmax(p_true, axis=1)
    del p_true
    # The pair rows themselves: one per (query, backend), shuffled like a real export.
    order = rng.permutation(n_queries * n_backends)
    q_index = (order // n_backends).astype(np.int64)
    b_index = (order % n_backends).astype(np.int64)
    correct = correct_qb[q_index, b_index]
    del correct_qb, order
    query_ids = [f"q{i}" for i in range(n_queries)]
    groups = [f"img{i // 2}" for i in range(n_queries)]  # two questions per image
    categories = [CATEGORIES[c] for c in cat]
    generate_s = time.perf_counter() - t0

    names = [b.name for b in BACKENDS[:n_backends]]
    jsonl_info: dict[str, Any] = {}
    if from_jsonl:
        # The same rows as a real pairs file (written untimed), then read through build_table.
        from router.table import build_table

        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "pairs.jsonl"
        t = time.perf_counter()
        with open(path, "w", encoding="utf-8") as handle:
            for q, b, y in zip(q_index.tolist(), b_index.tolist(), correct.tolist(), strict=True):
                handle.write(json.dumps({
                    "query_id": query_ids[q], "question": f"question {q}", "image": None,
                    "image_sha256": f"{q // 2:064x}", "category": categories[q], "backend": names[b],
                    "answer": "", "correct": y, "latency_s": BACKENDS[b].cost, "source": "benchmark",
                }) + "\n")
        jsonl_info = {"jsonl_mb": round(path.stat().st_size / 2**20, 1), "write_jsonl_s": round(time.perf_counter() - t, 1)}
        del q_index, b_index, correct
        t1 = time.perf_counter()
        table, _ = build_table(pairs=[path], backends=names)
        # Features follow the table's query order (first appearance in the file).
        features = features[np.array([int(qid[1:]) for qid in table.query_ids])]
        fold_s = time.perf_counter() - t1
        tmp.cleanup()
    else:
        t1 = time.perf_counter()
        table = PairTable.from_columns(
            backends=names, query_ids=query_ids, questions=query_ids, groups=groups,
            query_index=q_index, backend_index=b_index, correct=correct, categories=categories,
        )
        del q_index, b_index, correct
        fold_s = time.perf_counter() - t1
    result = train_router(
        table, BACKENDS[:n_backends], config=TrainConfig(timing_sample=0),
        text_encoder=MiniLMTextEncoder(),  # recorded in the card, never loaded: features are given
        features=features,
    )
    total_s = time.perf_counter() - t1
    m = result.card["metrics"]
    held = result.heldout_index
    order = np.array([int(qid[1:]) for qid in table.query_ids])
    bayes = float(table.correct[held, bayes_choice[order[held]]].mean())
    m["bayes_accuracy (routing by the true P)"] = round(bayes, 4)
    m["gap_closed_to_bayes"] = round((m["routed_accuracy"] - m["best_single_accuracy"]) / (bayes - m["best_single_accuracy"]), 4)
    return {
        "pair_rows": int(table.stats["pair_rows"]),
        "queries": table.n_queries,
        "feature_dim": dim,
        "torch_threads": __import__("torch").get_num_threads(),
        "generate_s": round(generate_s, 1),
        "input": "pairs JSONL read through build_table" if from_jsonl else "pair columns (PairTable.from_columns)",
        **jsonl_info,
        "rows_to_table_s": round(fold_s, 1),
        "train_total_s (rows to table + split + fit + calibrate + held-out eval)": round(total_s, 1),
        "fit_s": result.card["training"]["fit_seconds"],
        "epochs": result.card["training"]["epochs_run"],
        "steps": result.card["training"]["steps"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "heldout": {k: m[k] for k in ("n_queries", "routed_accuracy", "best_single_accuracy", "oracle_accuracy",
                                      "random_accuracy", "category_rule_accuracy", "selection_accuracy", "ece", "gap_closed",
                                      "bayes_accuracy (routing by the true P)", "gap_closed_to_bayes")},
        "calibration": result.card["calibration"],
    }


def part_b(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--scale-child", "--rows", str(args.rows), "--seed", str(args.seed)]
    if args.scale_from_jsonl:
        cmd.append("--scale-from-jsonl")
    print(f"[B] {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.scale_timeout, cwd=ROOT)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"scale benchmark failed with status {proc.returncode}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["child_wall_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--questions-per-image", type=int, default=2)
    parser.add_argument("--hugginggpt-queries", type=int, default=40)
    parser.add_argument("--timing", type=int, default=50, help="decide() calls timed per router")
    parser.add_argument("--rows", type=int, default=2_500_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-llm", action="store_true")
    parser.add_argument("--convert-gemma", action="store_true", help="build the Gemma checkpoint if missing (about 95 s)")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--scale-only", action="store_true")
    parser.add_argument("--scale-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scale-timeout", type=int, default=900)
    parser.add_argument("--scale-from-jsonl", action="store_true", help="part B reads a real 2.5M-line pairs JSONL")
    parser.add_argument("--json-out", help="also write every figure to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.scale_child:
        print(json.dumps(part_b_child(args.rows, len(BACKENDS), args.seed, 384, args.scale_from_jsonl)))
        return
    report: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv])}
    if not args.scale_only:
        report["side_by_side"] = part_a(args)
    if not args.skip_scale:
        report["scale"] = part_b(args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
