"""Promotion reads its own noise: a paired bootstrap of the difference, and it fails closed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router.features import HashingTextEncoder
from router.lifecycle import PROMOTION_MARGIN, compare_on_rows, paired_bootstrap, train_version
from router.report import render_report
from router.training import TrainConfig
from router.versions import VersionRegistry
from tests.test_router_support import BACKENDS, make_pairs, write_jsonl


def test_paired_bootstrap_brackets_the_mean_and_narrows_with_more_queries() -> None:
    rng = np.random.default_rng(0)
    small = rng.choice([-1.0, 0.0, 0.0, 1.0, 1.0], size=40)
    large = rng.choice([-1.0, 0.0, 0.0, 1.0, 1.0], size=4000)
    for diff in (small, large):
        low, high = paired_bootstrap(diff)
        assert low <= diff.mean() <= high
    assert (paired_bootstrap(large)[1] - paired_bootstrap(large)[0]) < (paired_bootstrap(small)[1] - paired_bootstrap(small)[0])
    same = compare_on_rows(np.ones(30), np.ones(30))
    assert same == {"difference": 0.0, "ci95": [0.0, 0.0], "n_queries": 30}


def _train(out: Path, pairs: Path, **kwargs):  # type: ignore[no-untyped-def]
    config = kwargs.pop("config", TrainConfig(timing_sample=0))
    return train_version(out_dir=out, pairs=[pairs], backends=BACKENDS, config=config,
                         text_encoder=kwargs.pop("text_encoder", HashingTextEncoder()), **kwargs)


def test_promotion_reports_the_interval_and_fails_closed(tmp_path: Path) -> None:
    pairs = write_jsonl(make_pairs(120, seed=5), tmp_path / "pairs.jsonl")
    out = tmp_path / "routers"
    first = _train(out, pairs)
    assert first.promoted and first.reason == "no active router yet"

    second = _train(out, pairs, config=TrainConfig(timing_sample=0, seed=1))
    vs_active = second.comparison["vs_active"]
    low, high = vs_active["ci95"]
    assert low <= vs_active["difference"] <= high
    assert second.promoted == (low > PROMOTION_MARGIN and vs_active["difference"] >= 0 and "same backend" not in second.reason)
    assert {"vs_best_single", "vs_category_rule"} <= set(second.comparison)
    report = render_report(second)
    assert "new − active" in report and "new − category rule" in report and "[" in report

    # Break the active version's card: evaluating it fails, so the active one is kept (fail closed).
    registry = VersionRegistry(out)
    active = registry.active_version()
    card = registry.path_of(active) / "card.json"
    card.write_text(json.dumps({"kind": "embedding"}), encoding="utf-8")
    third = _train(out, pairs, config=TrainConfig(timing_sample=0, seed=2))
    assert not third.promoted and "could not be evaluated" in third.reason
    assert registry.active_version() == active
    forced = _train(out, pairs, config=TrainConfig(timing_sample=0, seed=3), force=True)
    assert forced.promoted and forced.reason.startswith("forced; ")


@pytest.mark.parametrize("n", [1, 5])
def test_bootstrap_of_a_constant_difference_is_that_constant(n: int) -> None:
    assert paired_bootstrap(np.full(n, 0.25)) == pytest.approx((0.25, 0.25))
