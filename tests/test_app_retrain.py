"""Retrain from judgments in the app, promote only when better, roll back (real MiniLM: slow)."""

from __future__ import annotations

import pytest
from PIL import Image

from backends.presets import parse_preset
from components.runtime import AppConfig, Runtime
from router.base import RouterError
from tests.doubles import EchoBackend

pytestmark = pytest.mark.slow


@pytest.fixture()
def runtime(tmp_path):
    preset = parse_preset({"name": "doubles", "backends": [{"name": "clip", "family": "open_clip"}, {"name": "llava", "family": "hf_vision"}]}, "t")
    backends = [EchoBackend("clip", kind="vlm", cost=0.1), EchoBackend("llava", kind="vlm+llm", cost=1.0)]
    rt = Runtime(AppConfig(db_path=tmp_path / "db.sqlite"), preset=preset, backends=backends)
    rt.start_loading()
    assert rt.wait_until_loaded(120)
    yield rt
    rt.close()


def judge_many(rt: Runtime, n: int) -> None:
    """Recognition questions: clip right, llava wrong; reasoning questions: the reverse."""
    for i in range(n):
        image = Image.new("RGB", (40, 40), (i * 7 % 256, i * 13 % 256, i * 29 % 256))
        recognition = i % 2 == 0
        question = f"What object is shown in photo {i}?" if recognition else f"Why would someone do this, case {i}?"
        result = rt.compare_all(image, question, "")
        verdicts = {"clip": 1.0, "llava": 0.0} if recognition else {"clip": 0.0, "llava": 1.0}
        rt.judge(result.query_id, verdicts, client_key=f"k{i}")


def test_retrain_promotes_then_keeps_then_rolls_back(runtime) -> None:
    assert runtime.router.active.kind == "category_rule"
    with pytest.raises(RouterError, match=r"need pairs for at least 2 backends to learn a routing; got 0"):
        runtime.router.retrain()  # nothing judged yet, and this preset ships no pairs
    judge_many(runtime, 120)
    report = runtime.router.retrain()
    assert "promoted" in report and "| routed accuracy |" in report
    first = runtime.router.active
    assert first.kind == "embedding"
    decision = runtime.router.decide(Image.new("RGB", (40, 40)), "Why would someone do this?")
    assert decision["choice"] == "llava" and decision["version"] == first.version
    second_report = runtime.router.retrain()
    assert "kept the active router" in second_report
    assert runtime.router.active.version == first.version
    forced = runtime.router.retrain(force=True)
    assert "promoted" in forced and runtime.router.active.version != first.version
    runtime.router.activate(first.version)
    assert runtime.router.active.version == first.version
    versions = runtime.router.versions()
    assert len(versions) == 3 and sum(bool(v["active"]) for v in versions) == 1
