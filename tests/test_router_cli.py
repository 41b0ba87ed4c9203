"""``python -m router``: train / evaluate / versions / rollback, and clear messages for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from router.__main__ import main
from tests.test_router_support import BACKENDS, make_pairs, write_jsonl

REPO = Path(__file__).resolve().parents[1]
EVALUATE_KEYS = {
    "routed_accuracy", "best_single_accuracy", "oracle_accuracy", "random_accuracy",
    "category_rule_accuracy", "selection_accuracy", "ece", "mean_cost", "decision_ms_p50",
}


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    backends = tmp_path / "backends.json"
    backends.write_text(json.dumps([b.to_json() for b in BACKENDS]))
    return {
        "pairs": write_jsonl(make_pairs(150, seed=4), tmp_path / "pairs.jsonl"),
        "backends": backends,
        "out": tmp_path / "routers",
    }


def test_train_evaluate_versions_rollback(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--backends", str(files["backends"])]
    assert main(["train", "--pairs", str(files["pairs"]), "--out", str(files["out"]), "--encoder", "hashing", "--json", *common]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["promoted"] and first["metrics"]["routed_accuracy"] > 0.8

    assert main(["evaluate", "--router", str(files["out"]), "--pairs", str(files["pairs"]), "--json", "--timing", "5", *common]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= EVALUATE_KEYS
    assert report["split"] == "heldout" and report["version"] == first["version"]
    assert report["routed_accuracy"] == pytest.approx(first["metrics"]["routed_accuracy"])
    assert report["decision_ms_p50"] is not None

    assert main(["evaluate", "--router", first["path"], "--pairs", str(files["pairs"]), "--json", "--split", "all", "--timing", "0"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert everything["n_queries"] > report["n_queries"]

    assert main(["train", "--pairs", str(files["pairs"]), "--out", str(files["out"]), "--encoder", "hashing", "--force", *common]) == 0
    out = capsys.readouterr().out
    assert "promoted (now active)" in out

    assert main(["versions", "--dir", str(files["out"])]) == 0
    listing = capsys.readouterr().out
    assert first["version"] in listing and listing.count("\n* ") + listing.startswith("* ") == 1

    assert main(["rollback", first["version"], "--dir", str(files["out"])]) == 0
    assert f"router version {first['version']} is active" in capsys.readouterr().out
    assert main(["versions", "--dir", str(files["out"]), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["version"] for e in entries if e["active"]] == [first["version"]]


def test_versions_with_db(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "r.db"
    assert main(["train", "--pairs", str(files["pairs"]), "--db", str(db), "--out", str(files["out"]), "--encoder", "hashing",
                 "--backends", str(files["backends"])]) == 0
    capsys.readouterr()
    assert main(["versions", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.count("embedding-") == 1 and "* embedding-" in out


def test_too_few_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = write_jsonl(make_pairs(4), tmp_path / "tiny.jsonl")
    assert main(["train", "--pairs", str(pairs), "--out", str(tmp_path / "o"), "--encoder", "hashing"]) == 2
    err = capsys.readouterr().err
    assert "too few" in err and "at least 40 are needed" in err and "Traceback" not in err


def test_missing_fields_by_line_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_pairs(20)
    del rows[2]["backend"]
    pairs = write_jsonl(rows, tmp_path / "bad.jsonl")
    assert main(["train", "--pairs", str(pairs), "--out", str(tmp_path / "o"), "--encoder", "hashing"]) == 2
    err = capsys.readouterr().err
    assert "line 3:" in err and "backend" in err and "--lenient" in err
    assert main(["train", "--pairs", str(pairs), "--out", str(tmp_path / "o"), "--encoder", "hashing", "--lenient"]) == 0
    assert "line 3:" in capsys.readouterr().err


def test_unknown_backend_warning(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_pairs(60, seed=1) + [dict(r, backend="ghost") for r in make_pairs(5, seed=1) if r["backend"] == "clip"]
    pairs = write_jsonl(rows, tmp_path / "p.jsonl")
    code = main(["train", "--pairs", str(pairs), "--out", str(tmp_path / "o"), "--encoder", "hashing", "--backends", str(files["backends"])])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "ghost (15 rows)" in err and "ignored" in err


def test_missing_files_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--pairs", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "pairs file not found" in capsys.readouterr().err
    assert main(["evaluate", "--router", str(tmp_path), "--pairs", str(tmp_path / "nope.jsonl"), "--json"]) == 2
    assert "no router at" in capsys.readouterr().err


def test_module_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "router", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "train" in result.stdout and "evaluate" in result.stdout
