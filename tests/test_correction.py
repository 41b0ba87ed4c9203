"""The learned router as a correction on the per-category prior, and the honest bare category rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router.baselines import CategoryRuleRouter, Priors
from router.correction import UNFAMILIAR_NOTE, PriorCorrection
from router.familiarity import Familiarity
from router.features import HashingTextEncoder
from router.prior import CategoryPrior
from router.table import build_table
from router.training import TrainConfig, train_router
from router.versions import load_router, save_router
from tests.test_router_support import BACKENDS, make_pairs, write_jsonl


def _unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_familiarity_is_one_near_the_anchors_and_zero_far_from_them() -> None:
    anchors = _unit_rows(200, 16, 0)
    groups = [f"g{i // 2}" for i in range(200)]  # pairs of rows share an image
    familiarity, oof = Familiarity.fit(anchors, groups, np.arange(200), text_dim=16)
    assert oof.shape == (200,) and oof.min() >= 0.0 and oof.max() <= 1.0
    near = anchors[:5] + 0.01 * _unit_rows(5, 16, 1)
    far = -np.ones((1, 16)) * 10.0  # a direction the anchors do not cover better than chance
    assert np.all(familiarity.weight(near) == 1.0)
    assert familiarity.similarity(far)[0] < familiarity.similarity(near).min()


def test_out_of_fold_familiarity_never_counts_the_same_image() -> None:
    base = _unit_rows(50, 8, 2)
    features = np.repeat(base, 2, axis=0)  # every image asked twice: identical rows
    groups = [f"g{i // 2}" for i in range(100)]
    grouped, _ = Familiarity.fit(features, groups, np.arange(100), text_dim=8, k=1)
    ungrouped, _ = Familiarity.fit(features, [str(i) for i in range(100)], np.arange(100), text_dim=8, k=1)
    # With the twin visible every row looks perfectly familiar (similarity 1); grouped, the twin is
    # excluded, so the reference range sits well below 1.
    assert ungrouped.low == pytest.approx(1.0, abs=1e-5)
    assert grouped.high < 0.9


def test_weight_zero_gives_the_prior_and_weight_one_the_learned_probability() -> None:
    correction = PriorCorrection(CategoryPrior(), None)
    learned = np.array([[0.9, 0.2]])
    prior = np.array([[0.3, 0.6]])
    assert correction.blend(learned, prior, np.array([0.0])) == pytest.approx(prior)
    assert correction.blend(learned, prior, np.array([1.0])) == pytest.approx(learned)
    halfway = correction.blend(learned, prior, np.array([0.5]))[0]
    assert 0.3 < halfway[0] < 0.9 and 0.2 < halfway[1] < 0.6
    assert PriorCorrection.note(0.2) == UNFAMILIAR_NOTE and PriorCorrection.note(0.9) is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = write_jsonl(make_pairs(150, seed=3), tmp_path_factory.mktemp("p") / "pairs.jsonl")
    table = build_table(pairs=[path], backends=[b.name for b in BACKENDS])[0]
    return train_router(table, BACKENDS, config=TrainConfig(timing_sample=0), text_encoder=HashingTextEncoder())


def test_a_trained_router_carries_its_prior_and_survives_save_and_load(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    router = trained.router
    assert router.correction is not None and router.correction.prior.measured
    assert router.card["correction"]["familiarity"]["anchors"] > 0
    questions = ["how many dogs are there?", "what color is the cup?", "zq xv unheard-of wording"]
    before = [router.decide(None, q).to_json() for q in questions]
    loaded = load_router(save_router(router, tmp_path / "v"), text_encoder=HashingTextEncoder())
    after = [loaded.decide(None, q).to_json() for q in questions]
    for a, b in zip(before, after, strict=True):
        assert a["choice"] == b["choice"]
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)
        assert a["note"] == b["note"]
    # Routing still follows the data: counting to the vlm+llm, colour to the vlm.
    assert before[0]["choice"] == "llava" and before[1]["choice"] == "clip"


def test_an_unfamiliar_question_leans_on_the_prior_and_says_so(trained) -> None:  # type: ignore[no-untyped-def]
    router = trained.router
    decision = router.decide(None, "qqq zzz xyzzy plugh").to_json()
    assert decision["note"] == UNFAMILIAR_NOTE
    prior = router.correction.prior_matrix(router.backends, ["qqq zzz xyzzy plugh"])[0]
    corrected = router.correction.blend(prior[None, :], prior[None, :], np.array([0.0]))[0]
    assert [decision["probabilities"][b.name] for b in router.backends] == pytest.approx(corrected, abs=1e-5)


def test_the_bare_category_rule_invents_no_numbers() -> None:
    rule = CategoryRuleRouter(BACKENDS)
    decision = rule.decide(None, "how many cats are there?").to_json()
    assert decision["choice"] == "llava"
    assert decision["confidence"] is None and decision["probabilities"] is None
    assert "category rule" in decision["note"] and "counting" in decision["note"]
    measured = CategoryRuleRouter(BACKENDS, priors=Priors({"clip": 0.6, "llava": 0.5, "slow": 0.4})).decide(None, "what is this?")
    assert measured.to_json()["confidence"] == pytest.approx(0.6)
