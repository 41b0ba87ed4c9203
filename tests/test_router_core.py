"""The router's building blocks: the utility decision, fallbacks, categories, calibration, features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.base import BackendChoice, Router, RouterError, Scores, choose_by_utility, normalised_costs, utility_matrix
from router.calibration import Calibrator, expected_calibration_error, fit_calibrator, sigmoid
from router.categories import CATEGORIES, classify_question, is_recognition, normalise_category
from router.features import HashingTextEncoder, ImageFeatures, LRUCache, image_content_hash

BACKENDS = [
    BackendChoice("cheap", "vlm", 0.1),
    BackendChoice("mid", "vlm+llm", 1.0),
    BackendChoice("dear", "vlm+llm", 2.0),
]


class FixedRouter(Router):
    kind = "fixed"

    def __init__(self, probs: list[float], **kwargs: Any) -> None:
        super().__init__(BACKENDS, **kwargs)
        self.probs = probs

    def _score(self, image: Any, question: str, **context: Any) -> Scores:
        if question == "boom":
            raise RuntimeError("model exploded")
        if question == "nan":
            return Scores(np.array([np.nan, 0.5, 0.5]))
        return Scores(np.array(self.probs), "counting")


# ------------------------------------------------------------------------------------ decision
def test_expected_utility_prefers_cheaper_backend_as_lambda_grows() -> None:
    router = FixedRouter([0.70, 0.80, 0.85])
    assert router.decide(None, "q").choice == "dear"
    d = router.decide(None, "q", lambda_cost=0.2)  # utilities: 0.69, 0.70, 0.65
    assert d.choice == "mid"
    assert d.utilities["mid"] == pytest.approx(0.80 - 0.2 * 0.5)
    assert router.decide(None, "q", lambda_cost=1.0).choice == "cheap"
    assert d.confidence == pytest.approx(0.80)  # the chosen backend's probability, not its utility
    assert d.probabilities == pytest.approx({"cheap": 0.70, "mid": 0.80, "dear": 0.85})
    assert d.latency_ms >= 0 and d.category == "counting" and d.fallback is None


def test_ties_go_to_the_cheaper_backend() -> None:
    assert choose_by_utility(np.array([0.5, 0.5, 0.5]), [2.0, 0.5, 1.0]) == 1
    rows = choose_by_utility(np.array([[0.5, 0.5], [0.9, 0.1]]), [1.0, 0.0])
    assert list(rows) == [1, 0]


def test_costs_are_normalised_and_zero_costs_disable_lambda() -> None:
    assert list(normalised_costs([1.0, 2.0, 4.0])) == [0.25, 0.5, 1.0]
    assert list(normalised_costs([0.0, 0.0])) == [0.0, 0.0]
    assert utility_matrix(np.array([0.3, 0.6]), [0.0, 0.0], 5.0).tolist() == [0.3, 0.6]


def test_decide_falls_back_instead_of_raising() -> None:
    router = FixedRouter([0.1, 0.2, 0.3], fallback_backend="mid", version="v1")
    d = router.decide(None, "boom")
    assert d.choice == "mid" and "model exploded" in d.fallback and d.probabilities == {}
    d = router.decide(None, "nan")
    assert d.choice == "mid" and d.fallback


def test_min_confidence_floor_switches_to_fallback_backend() -> None:
    router = FixedRouter([0.30, 0.20, 0.10], min_confidence=0.5, fallback_backend="dear")
    d = router.decide(None, "q")
    assert d.choice == "dear" and "below" in d.fallback and d.confidence == pytest.approx(0.10)
    assert FixedRouter([0.9, 0.2, 0.1], min_confidence=0.5, fallback_backend="dear").decide(None, "q").choice == "cheap"


def test_backend_choice_validation_and_decision_json() -> None:
    with pytest.raises(RouterError, match="kind"):
        BackendChoice("x", "llm", 1.0)
    with pytest.raises(RouterError, match="cost"):
        BackendChoice("x", "vlm", -1.0)
    with pytest.raises(RouterError, match="unique"):
        FixedRouter.__bases__[0].__init__(FixedRouter([0, 0, 0]), [BACKENDS[0], BACKENDS[0]])  # type: ignore[misc]
    data = FixedRouter([0.1, 0.2, 0.3], version="v9").decide(None, "q").to_json()
    assert data["choice"] == "dear" and data["version"] == "v9" and set(data) >= {"confidence", "probabilities", "category", "latency_ms"}


# ------------------------------------------------------------------------------------ categories
@pytest.mark.parametrize(
    "question, category",
    [
        ("How many dogs are in the picture?", "counting"),
        ("What does the sign say?", "ocr"),
        ("Why is the man holding an umbrella?", "reasoning"),
        ("What is to the left of the cup?", "spatial"),
        ("Who painted this painting?", "knowledge"),
        ("What color is the bus?", "attribute"),
        ("What shape is this?", "attribute"),
        ("What breed is this dog?", "fine_grained"),
        ("What kind of bird is this?", "fine_grained"),
        ("Is this indoors or outdoors?", "scene"),
        ("What is this?", "object"),
        ("Is there a cat?", "object"),
        ("Describe the mood of the image", "open"),
    ],
)
def test_keyword_classifier(question: str, category: str) -> None:
    assert classify_question(question) == category


def test_category_helpers() -> None:
    assert set(CATEGORIES) >= {"object", "counting", "open"}
    assert is_recognition("attribute") and not is_recognition("counting") and not is_recognition(None)
    assert normalise_category("Fine-Grained") == "fine_grained"
    assert normalise_category("colour") == "attribute"
    assert normalise_category("nonsense") is None and normalise_category(None) is None


# ------------------------------------------------------------------------------------ calibration
def test_ece_values() -> None:
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.0
    assert expected_calibration_error(np.array([0.9] * 10), np.array([1.0] * 9 + [0.0])) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(np.array([0.9] * 10), np.zeros(10)) == pytest.approx(0.9)
    assert np.isnan(expected_calibration_error(np.array([]), np.array([])))
    masked = expected_calibration_error(np.array([0.9, 0.1]), np.array([0.0, 0.0]), mask=np.array([False, True]))
    assert masked == pytest.approx(0.1)


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic", "auto"])
def test_calibrators_fix_overconfident_logits(method: str) -> None:
    rng = np.random.default_rng(1)
    n = 6000
    true_logit = rng.normal(0, 1.5, size=(n, 2))
    labels = (rng.random((n, 2)) < sigmoid(true_logit)).astype(float)
    logits = true_logit * 3.0 + np.array([1.0, -0.5])  # overconfident and shifted
    fit, test = slice(0, n // 2), slice(n // 2, n)
    before = expected_calibration_error(sigmoid(logits[test]), labels[test])
    cal = fit_calibrator(method, logits[fit], labels[fit])
    after = expected_calibration_error(cal.transform(logits[test]), labels[test])
    assert before > 0.1
    assert after < 0.03, (method, cal.method, after)
    restored = Calibrator.from_tensors(cal.method, cal.to_tensors(), 2)
    assert np.allclose(restored.transform(logits[:5]), cal.transform(logits[:5]))


def test_calibrator_handles_soft_labels_and_masks() -> None:
    logits = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, -1.0]] * 10)
    labels = np.array([[0.5, np.nan], [0.5, 1.0], [0.5, 1.0], [0.5, 0.0]] * 10)
    cal = fit_calibrator("platt", logits, labels)
    probs = cal.transform(logits)
    assert np.all(np.isfinite(probs)) and np.allclose(probs[:, 0], 0.5, atol=0.02)


# ------------------------------------------------------------------------------------ features
def test_hashing_encoder_is_deterministic_and_normalised() -> None:
    enc = HashingTextEncoder(dim=64)
    a = enc.encode(["how many cats?", "what colour is it?", "how many cats?"])
    assert a.shape == (3, 64) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0)
    assert np.array_equal(a[0], a[2]) and not np.array_equal(a[0], a[1])
    assert np.array_equal(HashingTextEncoder(dim=64).encode(["how many cats?"])[0], a[0])


def test_image_features_cached_by_content(tmp_path: Path) -> None:
    from PIL import Image

    calls = []

    def embed(image: Any) -> np.ndarray:
        calls.append(image.size)
        return np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) + 1.0

    img = Image.new("RGB", (8, 8), (10, 20, 30))
    path = tmp_path / "a.png"
    img.save(path)
    copy = tmp_path / "b.png"
    copy.write_bytes(path.read_bytes())
    feats = ImageFeatures(embed)
    v1 = feats.embed(path)
    v2 = feats.embed(copy)  # same bytes under another name: cache hit
    v3 = feats.embed(Image.new("RGB", (8, 8), (10, 20, 30)))  # same pixels in memory
    v4 = feats.embed(Image.new("RGB", (8, 8), (10, 20, 30)))
    assert len(calls) == 2
    assert np.allclose(v1, v2) and np.allclose(v1, v3) and np.allclose(v3, v4)
    assert np.linalg.norm(v1) == pytest.approx(1.0)
    assert image_content_hash(path) == image_content_hash(path.read_bytes())


def test_lru_cache_evicts_oldest() -> None:
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3


def test_minilm_encoder_accepts_a_plain_encode_wrapper() -> None:
    from router.features import MiniLMTextEncoder

    class Wrapper:  # like backends.text_encoder.TextEncoder: encode(texts) only, no keyword options
        def __init__(self) -> None:
            self.calls = 0

        def encode(self, texts: list[str]) -> np.ndarray:
            self.calls += 1
            return np.stack([np.full(384, float(len(t))) for t in texts])

    wrapper = Wrapper()
    enc = MiniLMTextEncoder(model=wrapper)
    out = enc.encode(["ab", "abc", "ab"])
    assert out.shape == (3, 384) and np.allclose(np.linalg.norm(out, axis=1), 1.0)
    enc.encode(["ab"])
    assert wrapper.calls == 1  # cached per text
