"""Versions: train -> evaluate -> promote -> rollback; corrupt or missing files fall back safely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.store import Store
from router.base import BackendChoice
from router.baselines import CategoryRuleRouter
from router.features import HashingTextEncoder
from router.lifecycle import TrainOutcome, ensure_router, load_active_router, rollback, train_version
from router.training import TrainConfig
from router.versions import INDEX_FILE, VersionRegistry, load_router, read_card
from tests.test_router_support import BACKENDS, make_pairs, write_jsonl

FAST = TrainConfig(timing_sample=0)


class BlindTextEncoder:
    """Every question becomes the same vector: a router that cannot tell one question from another."""

    name = "blind"
    dim = 8

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), self.dim), dtype=np.float32)

    def config(self) -> dict[str, object]:
        return {"name": self.name, "dim": self.dim}


def _train(out: Path, pairs: Path, **kwargs) -> TrainOutcome:  # type: ignore[no-untyped-def]
    kwargs.setdefault("config", FAST)
    kwargs.setdefault("text_encoder", HashingTextEncoder())
    return train_version(out_dir=out, pairs=[pairs], backends=BACKENDS, **kwargs)


@pytest.fixture()
def good_pairs(tmp_path: Path) -> Path:
    return write_jsonl(make_pairs(150, seed=2), tmp_path / "good.jsonl")


@pytest.fixture()
def noise_pairs(tmp_path: Path) -> Path:
    """The same questions and images, but correctness is a coin flip: nothing to learn."""
    rows = make_pairs(150, seed=2)
    rng = np.random.default_rng(9)
    for row in rows:
        row["correct"] = float(rng.random() < 0.5)
    return write_jsonl(rows, tmp_path / "noise.jsonl")


def test_save_load_round_trip_gives_the_same_decisions(tmp_path: Path, good_pairs: Path) -> None:
    outcome = _train(tmp_path / "routers", good_pairs)
    assert outcome.promoted and "no active router" in outcome.reason
    loaded = load_router(outcome.path)
    assert loaded.version == outcome.version and loaded.kind == "embedding"
    card = read_card(outcome.path)
    assert card["weights_sha256"] and card["metrics"]["routed_accuracy"] > 0.8
    for q in ["how many cats are there?", "what colour is this car?", "why is the dog here?"]:
        a = loaded.decide(None, q)
        assert a.version == outcome.version and a.fallback is None
    # The app's own backend list: costs come from it, and a backend it lacks is dropped.
    app = [BackendChoice("llava", "vlm+llm", 9.0), BackendChoice("clip", "vlm", 0.01)]
    restricted = load_router(outcome.path, backends=app)
    assert restricted.backend_names == ["llava", "clip"]
    assert list(restricted.costs) == [9.0, 0.01]
    assert restricted.decide(None, "how many cats are there?").choice == "llava"


def test_train_evaluate_promote_rollback_cycle(tmp_path: Path, good_pairs: Path, noise_pairs: Path) -> None:
    out = tmp_path / "routers"
    first = _train(out, good_pairs)
    assert first.promoted
    worse = _train(out, noise_pairs)  # compared on its own held-out rows, where the first one wins
    assert not worse.promoted and "candidate" in worse.reason
    registry = VersionRegistry(out)
    assert registry.active_version() == first.version
    forced = _train(out, noise_pairs, force=True)
    assert forced.promoted and forced.reason.startswith("forced")
    assert registry.active_version() == forced.version
    assert [e.version for e in registry.versions()] == [first.version, worse.version, forced.version]
    message = rollback(registry, first.version)
    assert first.version in message and registry.active_version() == first.version
    router, notice = load_active_router(out, backends=BACKENDS)
    assert router.version == first.version and notice is None
    history = json.loads((out / INDEX_FILE).read_text())["history"]
    assert [h["active"] for h in history] == [first.version, forced.version, first.version]


def test_only_the_better_router_is_promoted(tmp_path: Path, good_pairs: Path, noise_pairs: Path) -> None:
    """Candidate and active are scored on the same held-out rows; the better one ends up active."""
    out = tmp_path / "routers"
    registry = VersionRegistry(out)
    good = _train(out, good_pairs)
    # Worse: it cannot read the question, and without the prior correction it has nothing else to go on.
    blind = _train(out, good_pairs, text_encoder=BlindTextEncoder(), config=TrainConfig(timing_sample=0, prior_correction=False))
    assert not blind.promoted and blind.reason.startswith("routed accuracy on the same")
    assert registry.active_version() == good.version
    assert blind.active_metrics["n_queries"] == blind.card["metrics"]["n_queries"]  # the same rows for both
    assert blind.active_metrics["routed_accuracy"] >= blind.card["metrics"]["routed_accuracy"] + 0.2

    noise = _train(out, noise_pairs, force=True)  # a bad router made active by hand
    assert registry.active_version() == noise.version
    better = _train(out, good_pairs, config=TrainConfig(timing_sample=0, seed=1))
    assert better.promoted and better.reason.startswith("routed accuracy on the same")
    assert registry.active_version() == better.version
    assert better.card["metrics"]["routed_accuracy"] >= better.active_metrics["routed_accuracy"] + 0.2
    router, notice = load_active_router(out, backends=BACKENDS)
    assert router.version == better.version and notice is None


def test_corrupt_active_version_falls_back_to_the_previous_one(tmp_path: Path, good_pairs: Path) -> None:
    out = tmp_path / "routers"
    first = _train(out, good_pairs)
    second = _train(out, good_pairs, force=True)
    weights = Path(second.path) / "router.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    router, notice = load_active_router(out, backends=BACKENDS)
    assert router.version == first.version
    assert second.version in notice and "corrupt" in notice and f"previous router version {first.version}" in notice
    assert router.decide(None, "how many cats?").fallback is None


def test_everything_broken_falls_back_to_the_category_rule(tmp_path: Path, good_pairs: Path) -> None:
    out = tmp_path / "routers"
    only = _train(out, good_pairs)
    (Path(only.path) / "card.json").write_text("{ not json")
    router, notice = load_active_router(out, backends=BACKENDS)
    assert isinstance(router, CategoryRuleRouter)
    assert "category rule" in notice and "unreadable" in notice
    assert router.decide(None, "how many cats are there?").choice == "llava"
    assert router.decide(None, "what colour is the cat?").choice == "clip"


def test_no_versions_at_all(tmp_path: Path) -> None:
    router, notice = load_active_router(tmp_path / "nothing-here", backends=BACKENDS)
    assert isinstance(router, CategoryRuleRouter) and "no trained router yet" in notice
    router, notice = load_active_router(None, backends=BACKENDS)
    assert isinstance(router, CategoryRuleRouter)


def test_damaged_index_is_rebuilt_from_version_folders(tmp_path: Path, good_pairs: Path) -> None:
    out = tmp_path / "routers"
    first = _train(out, good_pairs)
    (out / INDEX_FILE).write_text("garbage")
    entries = VersionRegistry(out).versions()
    assert [e.version for e in entries] == [first.version]
    router, notice = load_active_router(out, backends=BACKENDS)
    assert router.version == first.version and "previous router version" in notice


def test_unknown_app_backend_is_reported(tmp_path: Path, good_pairs: Path) -> None:
    out = tmp_path / "routers"
    _train(out, good_pairs)
    app = BACKENDS + [BackendChoice("newcomer", "vlm", 0.2)]
    router, notice = load_active_router(out, backends=app)
    assert "newcomer" in notice and "never picks" in notice
    assert "newcomer" not in router.backend_names


def test_versions_recorded_in_the_store(tmp_path: Path, good_pairs: Path) -> None:
    store = Store.open(tmp_path / "routelens.db")
    try:
        store.import_pairs(good_pairs)
        out = tmp_path / "routers"
        first = train_version(out_dir=out, store=store, backends=BACKENDS, config=FAST, text_encoder=HashingTextEncoder())
        assert first.promoted
        assert first.card["data"]["pair_rows"] == 150 * 3 * 3
        second = train_version(out_dir=out, store=store, backends=BACKENDS, config=FAST, text_encoder=HashingTextEncoder(), force=True)
        rows = store.router_versions()
        assert [r["version"] for r in rows] == [first.version, second.version]
        assert store.active_router()["version"] == second.version
        registry = VersionRegistry(out, store)
        rollback(registry, first.version)
        assert store.active_router()["version"] == first.version
        router, notice = load_active_router(out, store, backends=BACKENDS)
        assert router.version == first.version and notice is None
        # With the store alone (paths recorded in it) the same router loads.
        router, notice = load_active_router(None, store, backends=BACKENDS)
        assert router.version == first.version
    finally:
        store.close()


def test_ensure_router_builds_a_first_version_once(tmp_path: Path, good_pairs: Path) -> None:
    out = tmp_path / "routers"
    router, notice = ensure_router(out, backends=BACKENDS, pairs=[good_pairs], text_encoder=HashingTextEncoder())
    assert router.kind == "embedding" and "built the first router" in notice
    again, notice = ensure_router(out, backends=BACKENDS, pairs=[good_pairs], text_encoder=HashingTextEncoder())
    assert again.version == router.version and notice is None
    fallback, notice = ensure_router(tmp_path / "other", backends=BACKENDS, pairs=[tmp_path / "missing.jsonl"])
    assert isinstance(fallback, CategoryRuleRouter) and "could not build" in notice
