"""Training: a router must learn a routing that is known by construction; image split; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router.base import BackendChoice, RouterError
from router.features import HashingTextEncoder
from router.table import FOLD_HELDOUT, FOLD_TRAIN, PairTable, build_table, split_folds
from router.training import TrainConfig, train_router
from tests.test_router_support import BACKENDS, colour_histogram, make_pairs, write_jsonl


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("pairs")
    path = write_jsonl(make_pairs(240, seed=3), folder / "pairs.jsonl")
    table, warnings = build_table(pairs=[path], backends=[b.name for b in BACKENDS])
    result = train_router(table, BACKENDS, config=TrainConfig(timing_sample=5), text_encoder=HashingTextEncoder())
    return result


def test_router_learns_the_known_routing(trained) -> None:  # type: ignore[no-untyped-def]
    m = trained.card["metrics"]
    assert m["n_queries"] >= 100
    # Recognition -> clip, counting/reasoning -> llava, with 8% label noise on each, so perfect
    # routing scores about 0.92; the oracle is higher only because the coin-flip backend gets lucky.
    assert m["routed_accuracy"] >= 0.84, m
    assert m["routed_accuracy"] >= m["best_single_accuracy"] + 0.25, m
    assert m["routed_accuracy"] > m["random_accuracy"] + 0.3
    assert m["selection_accuracy"] >= 0.88
    assert m["gap_closed"] >= 0.5
    router = trained.router
    assert router.decide(None, "how many boats are there?").choice == "llava"
    assert router.decide(None, "what color is the boat?").choice == "clip"
    # Cost: with a large lambda the cheap backend wins even for counting.
    assert router.decide(None, "how many boats are there?", lambda_cost=5.0).choice == "clip"


def test_category_head_and_card(trained) -> None:  # type: ignore[no-untyped-def]
    card = trained.card
    assert card["category_head"] is True
    assert card["metrics"]["category_accuracy"] >= 0.8
    assert card["text_only"] is True and card["feature_config"]["text_encoder"]["name"] == "hashing"
    data = card["data"]
    assert data["pair_rows"] == 240 * 3 * 3 and data["queries"] == 240 * 3 and data["groups"] == 240
    assert data["train_queries"] + data["calibration_queries"] + data["heldout_queries"] == data["queries"]
    assert card["calibration"]["method"] in ("temperature", "platt", "isotonic")
    json.dumps(card)  # a card is plain JSON


def test_split_is_by_image(trained) -> None:  # type: ignore[no-untyped-def]
    groups = np.array(trained.table.groups, dtype=object)
    folds = trained.folds
    for g in set(groups):
        assert len(set(folds[groups == g])) == 1, g
    train_groups = set(groups[folds == FOLD_TRAIN])
    held_groups = set(groups[folds == FOLD_HELDOUT])
    assert train_groups and held_groups and not (train_groups & held_groups)


def test_split_is_stable_when_data_grows() -> None:
    small = [f"img{i}" for i in range(300)]
    large = small + [f"new{i}" for i in range(700)]
    f_small, method = split_folds(small)
    f_large, _ = split_folds(large)
    assert method == "hash"
    assert np.array_equal(f_small, f_large[:300])
    share = (f_large == FOLD_HELDOUT).mean()
    assert 0.12 < share < 0.28


def test_calibration_on_held_out_rows(tmp_path: Path) -> None:
    """Held-out ECE over every (query, backend) cell, on a set large enough for the number to mean something."""
    rows = make_pairs(1500, seed=5, noise=0.15)
    table, _ = build_table(pairs=[write_jsonl(rows, tmp_path / "p.jsonl")], backends=[b.name for b in BACKENDS])
    result = train_router(table, BACKENDS, config=TrainConfig(timing_sample=0), text_encoder=HashingTextEncoder())
    m = result.card["metrics"]
    assert m["n_pairs"] >= 2000
    assert m["ece"] <= 0.05, m
    assert m["ece_choice"] <= 0.08, m  # one value per query, so noisier
    assert "out-of-fold" in result.card["calibration"]["fitted_on"]


def test_image_features_are_used_when_images_are_at_hand(tmp_path: Path) -> None:
    rows = make_pairs(60, seed=1, image_dir=tmp_path / "images")
    path = write_jsonl(rows, tmp_path / "pairs.jsonl")
    table, _ = build_table(pairs=[path], backends=[b.name for b in BACKENDS])
    assert all(g.startswith("sha256:") for g in table.groups)  # file hashes, not paths
    assert len(set(table.groups)) == 60
    result = train_router(
        table, BACKENDS, config=TrainConfig(timing_sample=3), text_encoder=HashingTextEncoder(),
        image_embedder=colour_histogram, image_embedder_name="colour-histogram",
    )
    card = result.card
    assert card["text_only"] is False
    assert card["feature_config"]["image_embedder"] == "colour-histogram"
    assert card["feature_config"]["image_dim"] == 64
    assert card["metrics"]["routed_accuracy"] >= card["metrics"]["best_single_accuracy"] + 0.2, card["metrics"]
    image = str(tmp_path / "images" / "img0.png")
    d = result.router.decide(image, "how many cups are there?")
    assert d.choice == "llava" and d.fallback is None  # counting -> vlm+llm
    assert result.router.decide(image, "what color is the cup?").choice == "clip"  # recognition -> vlm
    d2 = result.router.decide(None, "how many cups are there?")  # no image at hand: still decides, the same way
    assert d2.choice == "llava" and d2.fallback is None


def test_text_only_card_when_no_image_is_at_hand(tmp_path: Path) -> None:
    rows = make_pairs(60, seed=1)
    table, _ = build_table(pairs=[write_jsonl(rows, tmp_path / "p.jsonl")], backends=[b.name for b in BACKENDS])
    result = train_router(table, BACKENDS, config=TrainConfig(timing_sample=0), text_encoder=HashingTextEncoder(), image_embedder=colour_histogram)
    assert result.card["text_only"] is True
    assert any("question text only" in w for w in result.warnings)


def test_too_few_rows_says_how_many_are_needed(tmp_path: Path) -> None:
    rows = make_pairs(5, seed=0)
    table, _ = build_table(pairs=[write_jsonl(rows, tmp_path / "p.jsonl")], backends=[b.name for b in BACKENDS])
    with pytest.raises(RouterError, match=r"at least 40 are needed"):
        train_router(table, BACKENDS, text_encoder=HashingTextEncoder())


def test_one_backend_is_not_enough(tmp_path: Path) -> None:
    rows = [r for r in make_pairs(60) if r["backend"] == "clip"]
    table, _ = build_table(pairs=[write_jsonl(rows, tmp_path / "p.jsonl")])
    with pytest.raises(RouterError, match="at least 2 backends"):
        train_router(table, BACKENDS, text_encoder=HashingTextEncoder())


def test_unknown_backends_are_ignored_with_a_warning(tmp_path: Path) -> None:
    rows = make_pairs(20)
    rows += [dict(r, backend="mystery") for r in rows if r["backend"] == "clip"]
    table, warnings = build_table(pairs=[write_jsonl(rows, tmp_path / "p.jsonl")], backends=["clip", "llava", "slow"])
    assert table.backends == ["clip", "llava", "slow"]
    assert any("mystery (60 rows)" in w for w in warnings)


def test_missing_fields_are_reported_by_line(tmp_path: Path) -> None:
    rows = make_pairs(3)
    del rows[1]["correct"]
    del rows[4]["question"]
    path = write_jsonl(rows, tmp_path / "p.jsonl")
    with path.open("a") as handle:
        handle.write("{not json\n")
    with pytest.raises(RouterError) as info:
        build_table(pairs=[path])
    message = str(info.value)
    assert "line 2:" in message and "correct" in message
    assert "line 5:" in message and "question" in message
    assert f"line {len(rows) + 1}:" in message
    table, warnings = build_table(pairs=[path], strict=False)
    assert table.stats["pair_rows"] == len(rows) - 2 and "skipped" in warnings[0]


def test_judgments_override_benchmark_rows_for_the_same_cell(tmp_path: Path) -> None:
    base = {"query_id": "q1", "question": "how many?", "backend": "clip", "correct": 0.0, "source": "benchmark"}
    rows = [base, dict(base, correct=1.0, source="judgment"), dict(base, backend="llava", correct=0.5)]
    table, _ = build_table(pairs=[write_jsonl(rows, tmp_path / "p.jsonl")])
    assert table.backends == ["clip", "llava"]
    assert table.correct.tolist() == [[1.0, 0.5]]
    assert table.stats["sources"] == {"benchmark": 2, "judgment": 1}


def test_table_from_columns_matches_rows() -> None:
    table = PairTable.from_columns(
        backends=["a", "b"], query_ids=["q0", "q1"], questions=["x", "y"], groups=["g0", "g1"],
        query_index=np.array([0, 0, 1, 1, 1]), backend_index=np.array([0, 1, 0, 1, 1]),
        correct=np.array([1.0, 0.0, 0.0, 1.0, 0.0]),
    )
    assert table.correct.tolist() == [[1.0, 0.0], [0.0, 0.5]]
    assert table.stats["pair_rows"] == 5


def test_backend_without_data_is_left_out(tmp_path: Path) -> None:
    rows = make_pairs(60)
    extra = BackendChoice("unseen", "vlm", 0.1)
    table, warnings = build_table(pairs=[write_jsonl(rows, tmp_path / "p.jsonl")], backends=["clip", "llava", "slow", "unseen"])
    assert any("unseen" in w for w in warnings)
    result = train_router(table, BACKENDS + [extra], config=TrainConfig(timing_sample=0), text_encoder=HashingTextEncoder())
    assert result.router.backend_names == ["clip", "llava", "slow"]


@pytest.fixture(scope="module")
def image_router(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A router on image features whose embedder records the thread it runs on (and can be told to fail)."""
    import threading

    folder = tmp_path_factory.mktemp("image-pairs")
    rows = make_pairs(60, seed=1, image_dir=folder / "images")
    table, _ = build_table(pairs=[write_jsonl(rows, folder / "pairs.jsonl")], backends=[b.name for b in BACKENDS])
    hooks: dict = {"threads": [], "fail": False}

    def recording_histogram(image):  # type: ignore[no-untyped-def]
        if hooks["fail"]:
            raise RuntimeError("embedder exploded")
        hooks["threads"].append(threading.current_thread().name)
        return colour_histogram(image)

    router = train_router(table, BACKENDS, config=TrainConfig(timing_sample=0), text_encoder=HashingTextEncoder(),
                          image_embedder=recording_histogram, image_embedder_name="colour-histogram").router
    return router, hooks, folder / "images"


def test_a_decision_embeds_the_image_on_its_own_thread_and_hands_back_its_errors(image_router) -> None:  # type: ignore[no-untyped-def]
    """The image features are computed on the deciding thread after the question (two threads were no
    faster on two cores, docs/router.md); the features are the ones the extractor gives, and an embedder
    that fails makes the decision fall back, never raise."""
    import threading

    import numpy as np

    router, hooks, images = image_router
    image = str(images / "img3.png")
    router.clear_caches()
    hooks["threads"].clear()
    text, vec = router._encode(image, "how many cups are there?")
    assert hooks["threads"] == [threading.current_thread().name]
    assert np.allclose(vec, router.extractor.image_vector(image))
    assert np.allclose(text, router.extractor.text_encoder.encode(["how many cups are there?"])[0])
    router.clear_caches()
    hooks["fail"] = True
    try:
        decision = router.decide(str(images / "img4.png"), "what color is the cup?")
    finally:
        hooks["fail"] = False
    assert decision.fallback and "embedder exploded" in decision.fallback


def test_an_image_embedded_at_upload_is_not_embedded_again_by_the_decision(image_router) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    router, hooks, images = image_router
    with Image.open(images / "img5.png") as handle:
        picture = handle.convert("RGB")
    router.clear_caches()
    hooks["threads"].clear()
    router.warm(picture)
    assert len(hooks["threads"]) == 1
    router.decide(picture, "what color is the cup?")
    assert len(hooks["threads"]) == 1, "the decision embedded the warmed image again"
    router.warm("/no/such/file.png")  # never raises: the decision reports a bad image


def test_the_switch_margin_is_fitted_saved_and_loaded(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    from router.versions import load_router, save_router

    router = trained.router
    fit = router.card["switch_margin_fit"]
    assert "out-of-fold" in fit["rule"] and fit["queries"] >= 20
    assert router.card["switch_margin"] == router.switch_margin and router.switch_margin >= 0.0
    save_router(router, tmp_path / "v")
    card_path = tmp_path / "v" / "card.json"
    card = json.loads(card_path.read_text())
    card["switch_margin"] = 0.05  # whatever was fitted: what the card says is what comes back
    card_path.write_text(json.dumps(card))
    loaded = load_router(tmp_path / "v", text_encoder=HashingTextEncoder())
    assert loaded.switch_margin == 0.05
    decision = loaded.decide(None, "how many cups are there?").to_json()
    assert decision["switch_margin"] == 0.05 and decision["default_backend"] == router.fallback_backend
    loaded.switch_margin = 0.0
    assert "switch_margin" not in loaded.decide(None, "how many?").to_json()



def test_training_with_the_switch_margin_off_fits_none(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = make_pairs(40, seed=4)
    table, _ = build_table(pairs=[write_jsonl(rows, tmp_path / "pairs.jsonl")], backends=[b.name for b in BACKENDS])
    off = train_router(table, BACKENDS, config=TrainConfig(timing_sample=0, switch_margin=False),
                       text_encoder=HashingTextEncoder()).router
    assert off.switch_margin == 0.0 and off.card["switch_margin_fit"] == {"rule": "off"}
    assert "switch_margin" not in off.decide(None, "how many cups are there?").to_json()
