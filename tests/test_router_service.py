"""The active-router service on its own: no Gradio, no Runtime, just backend choices, a folder and encoders."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from router.base import RouterError
from router.features import HashingTextEncoder
from router.lifecycle import TrainOutcome, train_version
from router.service import LOADING_NOTICE, RouterService
from router.training import TrainConfig
from tests.test_router_support import BACKENDS, colour_histogram, make_pairs, write_jsonl

FAST = TrainConfig(timing_sample=0)
REPO = Path(__file__).resolve().parents[1]
COUNTING = "how many cats are there?"
RECOGNITION = "what colour is the cat?"


def _train(versions: Path, pairs: Path, *, force: bool = False) -> TrainOutcome:
    return train_version(out_dir=versions, pairs=[pairs], backends=BACKENDS, config=FAST, text_encoder=HashingTextEncoder(), force=force)


def _service(versions: Path, **kwargs) -> RouterService:  # type: ignore[no-untyped-def]
    kwargs.setdefault("text_encoder", HashingTextEncoder)
    return RouterService(backends=BACKENDS, versions_dir=versions, **kwargs)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(make_pairs(120, seed=4), tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


def test_importing_the_service_pulls_in_no_ui_and_no_app() -> None:
    code = "import sys, router.service; bad = [m for m in ('gradio', 'components', 'components.runtime') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_category_rule_decides_until_the_learned_router_has_loaded(tmp_path: Path, pairs: Path) -> None:
    trained = _train(tmp_path / "routers", pairs)
    entered, release = threading.Event(), threading.Event()

    def slow_encoder() -> HashingTextEncoder:
        entered.set()
        assert release.wait(60), "the test never released the encoder"
        return HashingTextEncoder()

    service = _service(tmp_path / "routers", text_encoder=slow_encoder)
    loader = threading.Thread(target=service.ensure_loaded)
    loader.start()
    try:
        assert entered.wait(60)
        assert not service.ready and service.active.kind == "category_rule"
        decision = service.decide(None, RECOGNITION)
        assert decision["choice"] == "clip" and decision["fallback"] == LOADING_NOTICE  # recognition -> vlm
        assert service.decide(None, COUNTING)["choice"] == "llava"
        assert "category_rule router" in service.status() and "loading" in service.status()
    finally:
        release.set()
        loader.join(60)
    assert service.ready and service.active.version == trained.version and service.notice is None
    decision = service.decide(None, COUNTING)
    assert decision["version"] == trained.version and decision["fallback"] is None and decision["choice"] == "llava"
    assert service.describe() == {"kind": "embedding", "version": trained.version, "notice": None}
    assert service.card()["version"] == trained.version


def test_activate_hot_swaps_the_served_router(tmp_path: Path, pairs: Path) -> None:
    versions = tmp_path / "routers"
    first = _train(versions, pairs)
    second = _train(versions, pairs, force=True)
    service = _service(versions)
    service.ensure_loaded()
    assert service.active.version == second.version
    service.activate(first.version)
    assert service.active.version == first.version
    assert service.decide(None, COUNTING)["version"] == first.version
    assert [(v["version"], v["active"]) for v in service.versions()] == [(first.version, True), (second.version, False)]
    with pytest.raises(RouterError, match="unknown router version 'nope'"):
        service.activate("nope")
    assert service.active.version == first.version  # a failed activation leaves the served router alone


def test_first_start_builds_from_the_shipped_pairs_then_retrain_promotes_only_when_better(tmp_path: Path) -> None:
    shipped = write_jsonl(make_pairs(50, seed=6, image_dir=tmp_path / "images"), tmp_path / "shipped.jsonl")
    asked: list[str] = []

    def image_features():  # type: ignore[no-untyped-def]
        asked.append("image")
        return colour_histogram, "colour-histogram"

    service = _service(tmp_path / "routers", pairs=[shipped], image_features=image_features)
    service.ensure_loaded()
    first = service.active
    assert first.kind == "embedding" and "built the first router" in service.notice
    assert service.card()["feature_config"]["image_embedder"] == "colour-histogram" and asked
    assert service.decide(None, COUNTING)["fallback"] is None  # a first build is news, not a degraded route
    kept = service.retrain()  # the same data and seed: a tie, which keeps the active router
    assert "kept the active router" in kept and "| routed accuracy |" in kept
    assert service.active is first
    steps: list[float] = []
    forced = service.retrain(force=True, progress=lambda fraction, desc="": steps.append(fraction))
    assert "promoted" in forced and "forced" in forced
    # the bar follows the real steps (reading, features per image, training, evaluation, promotion), forward only
    assert steps[0] == 0.02 and steps[-1] == 1.0 and steps == sorted(steps) and len(steps) > 10
    assert service.active.version != first.version  # hot-swapped without a restart
    assert service.decide(None, COUNTING)["version"] == service.active.version


def test_retrain_with_nothing_to_train_on_says_so(tmp_path: Path) -> None:
    service = _service(tmp_path / "routers")
    with pytest.raises(RouterError, match="nothing to train on"):
        service.retrain()
    assert service.active.kind == "category_rule"


def _next_best(decision: dict, failed: set[str]) -> str:  # type: ignore[type-arg]
    if decision["utilities"] is None:  # the bare category rule: the first working backend of the same kind
        kind = {b.name: b.kind for b in BACKENDS}
        wanted = "vlm+llm" if "counting" in (decision.get("note") or "") else "vlm"
        return next(b.name for b in BACKENDS if b.name not in failed and kind[b.name] == wanted)
    utilities = {name: u for name, u in decision["utilities"].items() if name not in failed}
    return max(utilities, key=utilities.__getitem__)


def test_a_failed_backend_is_never_picked(tmp_path: Path, pairs: Path) -> None:
    failed: set[str] = set()
    _train(tmp_path / "routers", pairs)
    service = _service(tmp_path / "routers", failed_backends=lambda: failed)
    assert service.decide(None, COUNTING)["choice"] == "llava"
    failed.add("llava")  # read on every decision: a backend that fails later is avoided from then on
    decision = service.decide(None, COUNTING)  # the category rule, before loading
    assert decision["choice"] == _next_best(decision, failed) != "llava"
    assert "llava failed to load" in decision["fallback"]
    service.ensure_loaded()
    decision = service.decide(None, COUNTING)  # the learned router
    assert decision["router_kind"] == "embedding" and decision["choice"] == _next_best(decision, failed) != "llava"
    assert decision["confidence"] == decision["probabilities"][decision["choice"]]
    assert "llava failed to load" in decision["fallback"]
    failed.update({"clip", "slow"})  # nothing left to pick: the router's own choice stands
    assert service.decide(None, COUNTING)["choice"] == "llava"


@pytest.mark.parametrize("how", ["truncated-weights", "garbage-card"])
def test_a_corrupt_router_file_falls_back_to_the_category_rule_with_a_notice(tmp_path: Path, pairs: Path, how: str) -> None:
    trained = _train(tmp_path / "routers", pairs)
    folder = Path(trained.path)
    if how == "truncated-weights":
        weights = folder / "router.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        (folder / "card.json").write_text("{ not json")
    service = _service(tmp_path / "routers")
    service.ensure_loaded()
    assert service.ready and service.active.kind == "category_rule"
    assert trained.version in service.notice and "could not be loaded" in service.notice and "category rule" in service.notice
    decision = service.decide(None, RECOGNITION)
    assert decision["choice"] == "clip" and decision["fallback"] == service.notice
    assert service.notice in service.status()


def test_a_router_that_cannot_even_start_loading_keeps_the_category_rule(tmp_path: Path) -> None:
    def broken_encoder() -> HashingTextEncoder:
        raise OSError("no encoder weights")

    service = _service(tmp_path / "routers", text_encoder=broken_encoder)
    service.ensure_loaded()
    assert service.ready and service.active.kind == "category_rule"
    assert service.notice == "the learned router could not load (no encoder weights); the category rule decides"
    assert service.decide(None, COUNTING)["fallback"] == service.notice
