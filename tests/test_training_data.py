"""What the shipped router learns from: its origins are balanced and its evaluation photos stay out."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from router.table import build_table

ROOT = Path(__file__).resolve().parents[1]


def _pairs(path: Path, prefix: str, n: int, *, dataset: str | None = None) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            for backend, ok in (("clf", i % 2), ("llm", 1 - i % 2)):
                row = {"query_id": f"{prefix}-{i}", "question": "What is this?", "backend": backend, "correct": float(ok),
                       "image_sha256": hashlib.sha256(f"{prefix}{i}".encode()).hexdigest()}
                if dataset:
                    row["dataset"] = dataset
                fh.write(json.dumps(row) + "\n")
    return path


def test_every_origin_gets_the_same_total_weight(tmp_path: Path) -> None:
    big = _pairs(tmp_path / "synthetic.jsonl", "a", 30)
    small = _pairs(tmp_path / "photos.jsonl", "b", 10)
    table, _ = build_table(pairs=[big, small])
    assert table.origins[:1] == ["synthetic.jsonl"] and table.origins[-1:] == ["photos.jsonl"]
    w = table.origin_weights(np.arange(table.n_queries))
    assert w.mean() == pytest.approx(1.0)
    assert w[:30].sum() == pytest.approx(w[30:].sum())
    # A subset keeps the rule over the rows it holds; one origin alone weighs every row 1.
    assert np.allclose(table.origin_weights(np.arange(30)), 1.0)
    assert np.allclose(table.subset(np.arange(30, 40)).origin_weights(np.arange(10)), 1.0)


def test_a_rows_dataset_field_names_its_origin(tmp_path: Path) -> None:
    path = _pairs(tmp_path / "store-export.jsonl", "c", 4, dataset="data/bootstrap/train.jsonl")
    table, _ = build_table(pairs=[path])
    assert set(table.origins) == {"data/bootstrap/train.jsonl"}


def test_the_offline_router_never_trains_on_the_photos_it_is_measured_on() -> None:
    preset = tomllib.loads((ROOT / "backends" / "presets" / "offline.toml").read_text(encoding="utf-8"))
    shipped = [ROOT / p for p in preset["router"]["pairs"]]
    assert any("bootstrap_train" in p.name for p in shipped), "the shipped router should learn from real photos"
    train, _ = build_table(pairs=shipped)
    held, _ = build_table(pairs=[ROOT / "data" / "benchmarks" / "offline_pairs_bootstrap_eval.jsonl"])
    assert held.n_queries >= 60
    assert not set(train.groups) & set(held.groups)
    eval_ids = {json.loads(line)["id"] for line in (ROOT / "data" / "bootstrap" / "eval.jsonl").open(encoding="utf-8")}
    assert not eval_ids & set(train.query_ids)
