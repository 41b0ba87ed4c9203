"""Eval-set readers (JSONL, folder, easy-VQA, a saved `datasets` dataset) and the backends command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets  # a pinned requirement: failing to import it fails the run
import pytest
from PIL import Image

from backends.evaluate import EvalSummary, run_eval
from data.datasets import DatasetError, EvalItem, easyvqa_category, load_eval_items
from data.pairs import read_pairs
from tests.doubles import EchoBackend

ROOT = Path(__file__).resolve().parent.parent


def test_jsonl_paths_are_relative_to_the_file(tmp_path) -> None:
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "set.jsonl").write_text(json.dumps({"id": "1", "image": "imgs/a.png", "question": "q?", "answer": ["x", "y"]}) + "\n")
    (item,) = load_eval_items(str(tmp_path / "set.jsonl"))
    assert Path(item.image) == tmp_path / "imgs" / "a.png"
    assert item.accepted == ["x", "y"] and item.category == "open"


def test_jsonl_errors_name_their_lines(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "a.png", "question": "q"}\nnot json\n{"image": "a", "question": "q", "answer": "a", "category": "nope"}\n')
    with pytest.raises(DatasetError) as error:
        load_eval_items(str(path))
    message = str(error.value)
    assert "line 1: missing answer" in message and "line 2: not JSON" in message and "line 3: unknown category" in message


def test_image_folder_is_a_classification_set(tmp_path) -> None:
    for cls in ("cat", "hot_dog"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "1.png")
    items = load_eval_items(str(tmp_path))
    assert [i.answer for i in items] == ["cat", "hot dog"]
    assert items[0].labels == ["cat", "hot dog"]


def test_easyvqa_spec_spreads_question_types() -> None:
    items = load_eval_items("easyvqa:test:30")
    assert len(items) == 30
    assert {i.category for i in items} == {"object", "attribute", "reasoning"}
    assert easyvqa_category("what shape is in the image?") == ("object", ["circle", "rectangle", "triangle"])
    assert easyvqa_category("is there not a red shape?") == ("reasoning", None)
    with pytest.raises(DatasetError, match="positive whole number"):
        load_eval_items("easyvqa:test:zero")
    with pytest.raises(DatasetError, match="splits"):
        load_eval_items("easyvqa:valid:3")


def test_hf_spec_reads_a_dataset_saved_locally(tmp_path) -> None:
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["apple", "maple_tree"])})
    data = datasets.Dataset.from_dict(
        {"img": [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")], "fine_label": [0, 1, 1]}, features=features
    )
    datasets.DatasetDict({"test": data}).save_to_disk(str(tmp_path / "tiny_cifar"))
    items = load_eval_items(f"hf:{tmp_path / 'tiny_cifar'}:test:2")
    assert [i.answer for i in items] == ["apple", "maple tree"]
    assert items[0].labels == ["apple", "maple tree"] and items[0].question == "What is in this image?"
    with pytest.raises(DatasetError, match="hf:NAME:SPLIT"):
        load_eval_items("hf:only-a-name")


def test_eval_runner_writes_pairs_the_pairs_reader_accepts(tmp_path) -> None:
    """Every row goes through data.pairs: a row the format refuses is left out and reported, never written."""
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    image = str((tmp_path / "a.png").resolve())
    items = [
        EvalItem(id="1", image=image, question="what shape?", answer="circle", category="object"),
        EvalItem(id="2", image=image, question="   ", answer="circle"),  # the format needs a question
        EvalItem(id="1", image=image, question="again?", answer="square"),  # the same id as an earlier item
        EvalItem(id="3", image=image, question="which colour?", answer="red", labels=["red", "blue"], category="attribute"),
    ]
    out_path = tmp_path / "runs" / "pairs.jsonl"
    summary = run_eval([EchoBackend("echo-a"), EchoBackend("echo-b", word="square")], items, out_path)

    rows = read_pairs(out_path).rows  # strict: raises on any bad line
    assert sorted((r["query_id"], r["backend"]) for r in rows) == [
        ("1", "echo-a"), ("1", "echo-b"), ("3", "echo-a"), ("3", "echo-b")
    ]
    assert {(r["query_id"], r["backend"]): r["correct"] for r in rows} == {
        ("1", "echo-a"): 1.0, ("1", "echo-b"): 0.0, ("3", "echo-a"): 1.0, ("3", "echo-b"): 1.0
    }
    assert all(r["image"] == image and r["source"] == "benchmark" and r["error"] is None for r in rows)
    assert json.loads(out_path.read_text().splitlines()[0])["image"] == image  # not under runs/: written absolute
    assert len(summary.skipped) == 4
    assert sum("'question' must not be empty" in s for s in summary.skipped) == 2
    assert sum("earlier item" in s for s in summary.skipped) == 2
    assert summary.accuracy()["echo-b"]["all"] == 0.5


def test_summary_table_lists_every_backend_and_category() -> None:
    summary = EvalSummary()
    summary.add("a", "object", 1.0, False)
    summary.add("a", "reasoning", 0.0, True)
    summary.add("b", "object", 0.0, False)
    table = summary.table()
    assert "object" in table and "reasoning" in table and "all" in table
    assert summary.accuracy()["a"]["all"] == 0.5


def test_backends_list_command() -> None:
    out = subprocess.run([sys.executable, "-m", "backends", "list"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for word in ("offline", "cpu", "gpu", "efficientnet-lite0", "llava-1.5-7b", "auto would pick"):
        assert word in out.stdout


def test_backends_run_bad_input_exits_cleanly(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "backends", "run", "--preset", "nope", "--data", "easyvqa:test:1", "--out", str(tmp_path / "p.jsonl")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "unknown preset 'nope'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_backends_run_offline_writes_pairs_and_accuracy(tmp_path) -> None:
    data = ROOT / "data" / "examples" / "examples.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()][:2]
    for row in rows:
        row["image"] = str(ROOT / "data" / "examples" / row["image"])
    subset = tmp_path / "two.jsonl"
    subset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_path = tmp_path / "pairs.jsonl"
    out = subprocess.run(
        [sys.executable, "-m", "backends", "run", "--preset", "offline", "--data", str(subset), "--out", str(out_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "accuracy per category" in out.stdout and "efficientnet-lite0" in out.stdout
    pairs = read_pairs(out_path).rows
    assert len(pairs) == 4 and {p["backend"] for p in pairs} == {"efficientnet-lite0", "gemma3-270m+tags"}
    assert all(0.0 <= p["correct"] <= 1.0 and Path(p["image"]).is_file() for p in pairs)
