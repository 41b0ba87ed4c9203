"""Every script in scripts/ runs, on tiny settings, as a subprocess, and writes the fields docs/benchmarks.md
(and the other docs) take their figures from.

Each test runs one script the way a person would (``python scripts/X.py ...``) with small counts and a
temporary output folder, then checks the exit status and the script's JSON (or text) output. The ones that
load real models or launch the app are marked ``slow``; those that drive Chromium are also ``browser``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.live_app import CHROMIUM, ROOT, VISION_ONLY_PRESET, check_screenshot, free_port, launched_app

SCRIPTS = ROOT / "scripts"
CAT = ROOT / "data" / "examples" / "chelsea.jpg"
#: Scripts whose smoke test lives elsewhere, and why.
ELSEWHERE = {
    "bench_remote.py": "needs llama-cpp-python's server (requirements-server.txt): tests/test_remote_llamacpp.py",
    "bench_openai_api.py": "needs a launched app with the endpoint: tests/test_openai_api.py::test_bench_openai_api_script_smoke",
}
#: script -> the tests here that run it (filled by @runs_script).
COVERED: dict[str, list[str]] = {}

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)")


def runs_script(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def mark(test: Callable[..., None]) -> Callable[..., None]:
        COVERED.setdefault(name, []).append(test.__name__)
        return test

    return mark


def run_script(name: str, *args: str | Path, timeout: float = 120, expect_rc: int = 0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    assert proc.returncode == expect_rc, f"{name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def read_json(path: Path) -> Any:
    assert path.is_file(), f"{path} was not written"
    return json.loads(path.read_text(encoding="utf-8"))


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_timing(row: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert isinstance(row[key], (int, float)) and row[key] >= 0, (key, row)


def test_every_script_has_a_smoke_test() -> None:
    scripts = {path.name for path in SCRIPTS.glob("*.py")}
    assert scripts == set(COVERED) | set(ELSEWHERE), "add a smoke test here (or a reason to ELSEWHERE) for each script"
    assert not set(COVERED) & set(ELSEWHERE)


# ------------------------------------------------------------------------------------------ data and checks
@runs_script("import_cycles.py")
def test_import_cycles_finds_none() -> None:
    proc = run_script("import_cycles.py", timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "0 import cycle(s)"


@runs_script("make_examples.py")
def test_make_examples_rebuilds_the_checked_in_photos(tmp_path: Path) -> None:
    proc = run_script("make_examples.py", "--out", tmp_path, timeout=120)
    assert "wrote 10 examples" in proc.stdout
    checked_in = ROOT / "data" / "examples"
    assert (tmp_path / "examples.jsonl").read_text() == (checked_in / "examples.jsonl").read_text()
    for row in jsonl(tmp_path / "examples.jsonl"):
        with Image.open(tmp_path / row["image"]) as new, Image.open(checked_in / row["image"]) as old:
            assert new.size == old.size and max(new.size) <= 448
            difference = np.abs(np.asarray(new.convert("RGB"), dtype=np.int16) - np.asarray(old.convert("RGB"), dtype=np.int16))
        assert difference.mean() < 2.0, row["image"]  # the same photo (JPEG encoders may differ by a pixel level)


@runs_script("make_benchmark_sets.py")
def test_make_benchmark_sets_writes_portable_sets(tmp_path: Path) -> None:
    proc = run_script("make_benchmark_sets.py", "--out", tmp_path, "--train", "4", "--test", "3", timeout=120)
    assert proc.stdout.split() == ["easyvqa_train_4:", "4", "items", "easyvqa_test_3:", "3", "items", "photos:", "10", "items"]
    shipped = ROOT / "data" / "benchmarks"
    assert (tmp_path / "photos.jsonl").read_text() == (shipped / "photos.jsonl").read_text()
    for name, count, full in (("easyvqa_train_4", 4, "easyvqa_train_600"), ("easyvqa_test_3", 3, "easyvqa_test_500")):
        rows = jsonl(tmp_path / f"{name}.jsonl")
        assert len(rows) == count and len({r["id"] for r in rows}) == count
        assert rows[0] == jsonl(shipped / f"{full}.jsonl")[0]  # the same first item as the shipped set
        for row in rows:
            assert set(row) == {"id", "image", "question", "answer", "labels", "category"}
            assert row["image"].startswith("images/")  # relative to the JSONL: portable
            copied = tmp_path / row["image"]
            assert copied.is_file()
            if (shipped / row["image"]).is_file():
                assert copied.read_bytes() == (shipped / row["image"]).read_bytes()


@runs_script("build_bootstrap_suite.py")
def test_build_bootstrap_suite_is_deterministic(tmp_path: Path) -> None:
    shipped = ROOT / "data" / "bootstrap"
    shutil.copy(shipped / "questions.toml", tmp_path / "questions.toml")
    proc = run_script("build_bootstrap_suite.py", "--suite", tmp_path, timeout=120)
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    for split in ("train", "eval"):
        assert counts[split] == len(jsonl(tmp_path / f"{split}.jsonl")) > 0
        assert (tmp_path / f"{split}.jsonl").read_text() == (shipped / f"{split}.jsonl").read_text()
    assert counts["images"] == len(list((tmp_path / "images").iterdir())) == len(list((shipped / "images").iterdir()))


@runs_script("refresh_image_keys.py")
def test_refresh_image_keys_rewrites_only_the_keys(tmp_path: Path) -> None:
    from data.images import image_key

    shipped = ROOT / "data" / "benchmarks" / "offline_pairs_photos.jsonl"
    rows = jsonl(shipped)
    (tmp_path / "images").mkdir()
    for image in {row["image"] for row in rows}:
        shutil.copy(shipped.parent / image, tmp_path / image)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(dict(row, image_sha256="0" * 64)) + "\n" for row in rows))  # stale keys
    proc = run_script("refresh_image_keys.py", pairs, timeout=60)
    assert proc.stdout.strip() == f"{pairs}: {len(rows)} rows, {len(rows)} image_sha256 values changed"
    refreshed = jsonl(pairs)
    assert [dict(r, image_sha256=None) for r in refreshed] == [dict(r, image_sha256=None) for r in rows]
    assert [r["image_sha256"] for r in refreshed] == [image_key(tmp_path / r["image"]) for r in rows]
    again = run_script("refresh_image_keys.py", pairs, timeout=60)
    assert again.stdout.strip().endswith(f"{len(rows)} rows, 0 image_sha256 values changed")


# ------------------------------------------------------------------------------------------ benchmarks, fast
@runs_script("bench_store.py")
def test_bench_store_reports_throughput_size_and_reads(tmp_path: Path) -> None:
    out = tmp_path / "store.json"
    proc = run_script(
        "bench_store.py", "--single-judgments", "10", "--writers", "2", "--writer-judgments", "4", "--size-judgments", "30",
        "--read-judgments", "100", "--dir", tmp_path / "work", "--json", out, timeout=120,
    )
    figures = read_json(out)["figures"]
    for key in ("judgments_per_s_1_writer_full", "judgments_per_s_1_writer_normal", "judgments_per_s_writer_processes",
                "judgments_per_s_writer_threads"):
        assert figures[key] > 0, key
    # a judged query (query, decision, 3 answers, judgment) takes more room than the judgment alone
    assert 0 < figures["mib_per_10k_judgments"] < figures["mib_per_10k_judged_queries"]
    assert figures["n_pairs"] == 300  # 100 judgments x 3 verdicts
    check_timing(figures, "read_pairs_s", "read_stats_s", "read_open_s")
    # the text table carries the same rows as docs/benchmarks.md
    for label in ("judgments/s, 1 writer, synchronous=FULL", "judgments/s, 2 writers (processes), FULL",
                  "db size per 10,000 judgments", "read all performance pairs at 100 judgments (300 pairs)"):
        assert label in proc.stdout


@runs_script("bench_quantize.py")
def test_bench_quantize_tiny_models(tmp_path: Path) -> None:
    out = tmp_path / "quantize.json"
    proc = run_script("bench_quantize.py", "--skip-full", "--repeats", "1", "--device", "cpu", "--json", out, timeout=240)
    report = read_json(out)
    assert set(report) == {"tiny open_clip", "tiny llava"}
    for model, rows in report.items():
        assert rows["full"]["quantization"].startswith("none (float32)"), model
        assert rows["nf4"]["quantization"].startswith("nf4 (bitsandbytes)"), model
        for precision in ("full", "nf4"):
            row = rows[precision]
            assert row["device"] == "cpu" and row["memory_mb"] > 0
            check_timing(row, "load_s")
            check_timing(row["answer_labels"], "p50_ms", "p95_ms")
        assert 0 < rows["nf4_vs_full_memory"] < 1, model
    assert report["tiny open_clip"]["image_embedding_cosine"] > 0.9
    check_timing(report["tiny open_clip"]["nf4"]["embed_image"], "p50_ms", "p95_ms")
    check_timing(report["tiny llava"]["nf4"]["answer_free_text"], "p50_ms", "p95_ms")
    assert "== tiny open_clip" in proc.stdout and "== tiny llava" in proc.stdout


@runs_script("gpu_check.py")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: the script runs the real check")
def test_gpu_check_without_cuda_says_so_and_exits_cleanly() -> None:
    proc = run_script("gpu_check.py", "--skip-tests", timeout=60)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"cuda": False, "message": "no CUDA GPU here: nothing to check"}


@runs_script("smoke_hub.py")
def test_smoke_hub_skips_everything_without_the_hub() -> None:
    """``make smoke-hub`` is for a machine where the hub answers; here (HF_HUB_OFFLINE) it says so and passes."""
    proc = run_script("smoke_hub.py", timeout=60)
    assert proc.stdout.startswith("hub unreachable") and "skipped every preset" in proc.stdout
    assert "make smoke-hub" in proc.stdout


@runs_script("bench_offline.py")
def test_bench_offline_refuses_unknown_measurements() -> None:
    proc = run_script("bench_offline.py", "--only", "vision,warp-drive", timeout=60, expect_rc=2)
    assert "--only takes some of vision_first, vision, llm_cold_nf4, llm_nf4, llm_fp32" in proc.stderr


@runs_script("bench_router_real.py")
def test_bench_router_real_refuses_training_on_its_evaluation_photos(tmp_path: Path) -> None:
    leak = ROOT / "data" / "benchmarks" / "offline_pairs_bootstrap_eval.jsonl"
    proc = run_script("bench_router_real.py", "--train-pairs", leak, "--sets", "real", "--out", tmp_path / "r.json",
                      timeout=300, expect_rc=2)
    assert "evaluation images are also in the training pairs" in proc.stderr
    assert not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------------------------------ benchmarks, slow
@runs_script("gpu_check.py")
@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path: Path) -> None:
    """The same steps as on a GPU with small shapes (about 50 s): every row loads and answers."""
    out = tmp_path / "gpu.json"
    run_script("gpu_check.py", "--dry-run", "--json", out, timeout=300)
    report = read_json(out)
    assert report["device"] == "cpu (dry run)"
    rows = {row["backend"]: row for row in report["backends"]}
    assert set(rows) == {"clip-ViT-B-32-full", "clip-ViT-B-32-nf4", "llava-7b-shape-full", "llava-7b-shape-nf4"}
    for name, row in rows.items():
        assert row["status"] == "ready" and row["error"] is None and "errors" not in row, row
        assert row["weights_gib"] > 0, name
        check_timing(row, "load_s", "latency_p50_s", "latency_max_s")
    assert rows["clip-ViT-B-32-nf4"]["weights_gib"] < 0.6 * rows["clip-ViT-B-32-full"]["weights_gib"]
    assert len(report["compare"]) == 2  # the dry run keeps two of the questions
    for question in report["compare"]:
        assert sorted(backend for backend, _, _ in question["order"]) == ["clip-nf4", "llava-nf4"]
        assert all(error is None for _, _, error in question["order"])
        assert 0 <= question["first_s"] <= question["all_s"]


@runs_script("bench_quantize.py")
@pytest.mark.slow
def test_bench_quantize_full_size_vit_b_32(tmp_path: Path) -> None:
    """The docs' ViT-B-32 row: ~577 MiB in fp32, ~305 MiB in nf4, embeddings at cosine ~0.997."""
    out = tmp_path / "quantize.json"
    run_script("bench_quantize.py", "--skip-tiny", "--full-repeats", "1", "--device", "cpu", "--json", out, timeout=300)
    rows = read_json(out)["ViT-B-32 (random weights)"]
    assert 500 < rows["full"]["memory_mb"] < 650
    assert rows["nf4"]["memory_mb"] < 0.6 * rows["full"]["memory_mb"]
    assert rows["image_embedding_cosine"] > 0.99
    for precision in ("full", "nf4"):
        check_timing(rows[precision]["answer_labels"], "p50_ms")
        check_timing(rows[precision]["embed_image"], "p50_ms")


@runs_script("bench_router.py")
@pytest.mark.slow
def test_bench_router_side_by_side_and_scale(tmp_path: Path) -> None:
    out = tmp_path / "router.json"
    run_script(
        "bench_router.py", "--images", "40", "--questions-per-image", "2", "--skip-llm", "--timing", "3", "--rows", "5000",
        "--json-out", out, timeout=300,
    )
    report = read_json(out)
    side = report["side_by_side"]
    assert side["_data"]["pair_rows"] == 40 * 2 * 5
    for name in ("embedding", "embedding_text_only", "best_single", "random", "category_rule(known category)", "oracle",
                 "bayes(true P)"):
        row = side[name]
        assert 0 <= row["routed_accuracy"] <= 1 and 0 <= row["ece"] <= 1, name
        assert row["n_queries"] == side["embedding"]["n_queries"], name  # the same held-out queries for every router
        check_timing(row, "decision_ms_p50")
    assert side["oracle"]["routed_accuracy"] >= max(side[n]["routed_accuracy"] for n in ("embedding", "best_single", "random"))
    assert set(side["_lambda_sweep(embedding)"]) == {"0.0", "0.1", "0.3", "1.0"}
    scale = report["scale"]
    assert scale["pair_rows"] == 5000 and scale["queries"] == 1000
    check_timing(scale, "train_total_s (rows to table + split + fit + calibrate + held-out eval)", "peak_rss_mb")
    assert 0 <= scale["heldout"]["ece"] <= 1 and 0 <= scale["heldout"]["routed_accuracy"] <= 1


@runs_script("bench_offline.py")
@pytest.mark.slow
def test_bench_offline_vision_backend(tmp_path: Path) -> None:
    """The real EfficientNet-Lite0 + MiniLM backend in its own process: load, weights, RSS, latency, easy-VQA."""
    out = tmp_path / "offline.json"
    run_script("bench_offline.py", "--skip-cold", "--only", "vision", "--questions", "2", "--easyvqa", "2", "--json", out,
               timeout=300)
    report = read_json(out)
    assert set(report) == {"vision"}
    vision = report["vision"]
    assert 180 < vision["memory_mb"] < 240  # docs: 105 MB in torch + ONNX Runtime's copies of both networks
    check_timing(vision, "load_s", "peak_rss_mb", "process_wall_s")
    latency = vision["latency"]
    assert latency["questions"] == 2
    check_timing(latency, "p50_s", "p95_s")
    assert latency["sample_answers"][0] == "What is in the photo? -> cat"  # chelsea, with the label list
    shapes = vision["easyvqa_shapes"]
    assert shapes["questions"] == 2
    for variant in ("with_none", "without_none"):
        assert 0 <= shapes[variant]["accuracy"] <= 1


@runs_script("bench_run_all.py")
@pytest.mark.slow
def test_bench_run_all_offline_preset(tmp_path: Path) -> None:
    out = tmp_path / "run_all.json"
    proc = run_script("bench_run_all.py", "--preset", "offline", "--questions", "2", "--json", out, timeout=300)
    report = read_json(out)
    assert report["questions"] == 2 and report["backends"] == ["efficientnet-lite0", "gemma3-270m+tags"]
    for key in ("sequential_sum", "run_all_all_answers", "run_all_first_answer"):
        check_timing(report[key], "mean_s", "p50_s")
    assert report["run_all_first_answer"]["mean_s"] <= report["run_all_all_answers"]["mean_s"]
    assert report["speed_up"] > 0
    assert "run_all first answer:" in proc.stdout


# ------------------------------------------------------------------------------------------ against a launched app
@pytest.fixture(scope="module")
def vision_app(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("scripts-app")
    preset = folder / "vision-only.toml"
    preset.write_text(VISION_ONLY_PRESET)
    db_path = folder / "routelens.sqlite"
    with launched_app(db_path, preset=str(preset)) as url:
        yield url, db_path


@runs_script("load_test.py")
@pytest.mark.slow
def test_load_test_against_a_running_app(vision_app, tmp_path: Path) -> None:
    url, db_path = vision_app
    out = tmp_path / "load.json"
    proc = run_script("load_test.py", "--url", url, "--db", db_path, "--users", "2", "--compares", "1", "--judges", "1",
                      "--max-seconds", "120", "--json", out, timeout=300)
    report = read_json(out)
    assert report["errors"] == [] and report["users"] == 2
    assert all(report["checks"].values()), report["checks"]
    assert report["endpoints"]["compare"]["ok"] == 2 and report["endpoints"]["judge"]["ok"] >= 2
    for endpoint in ("compare", "judge"):
        check_timing(report["endpoints"][endpoint], "p50_s", "p95_s", "max_s")
    assert report["throughput_requests_per_s"] > 0
    database = report["database"]
    assert database["judgments_acknowledged"] == database["judgments_stored"] == 2
    assert database["integrity_check"] == "ok"
    assert report["duplicate_retries_saved"] == [0, 0]
    assert "PASS  no errors" in proc.stdout


@runs_script("screenshot.py")
@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_screenshot_saves_the_pages(vision_app, tmp_path: Path) -> None:
    url, _ = vision_app
    run_script("screenshot.py", "--url", url, "--out", tmp_path, "--ask", CAT, "Is this a cat or a dog?",
               "--tab", "Leaderboard & router", "--wait", "120", timeout=300)
    names = sorted(path.name for path in tmp_path.glob("*.png"))
    assert names == ["answered.png", "start.png", "tab-leaderboard.png"]
    for name in names:
        check_screenshot(tmp_path / name, width=1400, min_height=1000)


@runs_script("bench_app.py")
@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_bench_app_times_the_page_and_answers(tmp_path: Path) -> None:
    """``make run`` with a fresh data folder, then Chromium asks twice (about a minute)."""
    out = tmp_path / "app.json"
    proc = run_script("bench_app.py", "--preset", "offline", "--port", str(free_port()), "--json", out, timeout=600)
    report = read_json(out)
    assert report["panels"] == 2
    assert 0 < report["page_served_s"] <= report["interactive_s"]
    for key in ("first_question", "later_question"):
        assert 0 < report[key]["first_answer_s"] <= report[key]["all_answers_s"], report
    assert "page served" in proc.stdout


@runs_script("bench_simulate.py")
def test_bench_simulate_writes_the_simulator_result_and_timings(tmp_path: Path) -> None:
    from tests.test_simulate import synthetic_pool

    pool = synthetic_pool(tmp_path / "pool.jsonl", n=300)
    run_script("bench_simulate.py", "--pairs", pool, "--seeds", "2", "--sizes", "200", "--encoder", "hashing",
               "--full-retrain", "--out-dir", tmp_path / "out")
    result = read_json(tmp_path / "out" / "simulate_offline.json")
    assert {"random", "kcenter"} <= set(result["strategies"]) and result["judgments_to_match_random"]["random"] == 1.0
    assert result["settings"]["seeds"] == 2
    bench = read_json(tmp_path / "out" / "bench_simulate.json")
    assert bench["queries"] == 300 and [row["n"] for row in bench["incremental"]] == [200]
    check_timing(bench["incremental"][0], "basis_s", "fit_cold_s", "fit_warm_s")
    check_timing(bench, "features_s", "simulator_s", "full_retrain_s")
