"""OpenClipBackend on a tiny random open_clip model saved locally, loaded through open_clip's factory
(``local-dir:`` and ``pretrained=<checkpoint file>``), fp32 and nf4. Shapes and invariants only."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from backends.base import BackendError
from backends.open_clip_zero_shot import OpenClipBackend, rank_labels, resolve_templates
from tests.checks import check_ranking
from tests.tiny_models import TINY_OPEN_CLIP_CFG, build_tiny_open_clip_dir

LABELS = ["cat", "dog", "hot air balloon", "coffee"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_open_clip_dir(tmp_path_factory.mktemp("open_clip") / "tiny")


@pytest.fixture(scope="module")
def fp32(tiny_dir: Path) -> OpenClipBackend:
    backend = OpenClipBackend("clip-fp32", model_name=f"local-dir:{tiny_dir}", quantize=False, device="cpu")
    assert backend.load(), backend.info.error
    return backend


@pytest.fixture(scope="module")
def nf4(tiny_dir: Path) -> OpenClipBackend:
    backend = OpenClipBackend("clip-nf4", model_name=f"local-dir:{tiny_dir}", device="cpu")
    assert backend.load(), backend.info.error
    return backend


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8))


def test_fp32_card(fp32: OpenClipBackend, tiny_dir: Path) -> None:
    info = fp32.describe()
    assert info.status == "ready" and info.kind == "vlm" and info.family == "open_clip"
    assert info.model_id == f"local-dir:{tiny_dir}"
    assert info.device == "cpu" and info.quantization == "none (float32)" and info.full_precision_layers == []
    assert info.memory_bytes and info.memory_bytes > 1_000_000


def test_user_labels_ranked(fp32: OpenClipBackend, image: Image.Image) -> None:
    answer = fp32.answer(image, "What is in the picture?", labels=LABELS)
    assert answer.ok, answer.error
    check_ranking(answer.label_scores, LABELS)
    assert answer.text == answer.label_scores[0][0]
    assert answer.latency_s > 0


def test_labels_parsed_from_question(fp32: OpenClipBackend, image: Image.Image) -> None:
    answer = fp32.answer(image, "Is this a cat or a dog?")
    assert answer.ok, answer.error
    check_ranking(answer.label_scores, ["cat", "dog"])


def test_given_labels_win_over_question_options(fp32: OpenClipBackend, image: Image.Image) -> None:
    answer = fp32.answer(image, "Is this a cat or a dog?", labels=["red", "green", "blue"])
    check_ranking(answer.label_scores, ["red", "green", "blue"])


def test_imagenet_fallback_uses_cached_class_embeddings(fp32: OpenClipBackend, image: Image.Image) -> None:
    answer = fp32.answer(image, "What is this?")
    assert answer.ok, answer.error
    assert answer.label_scores is not None and len(answer.label_scores) == fp32.imagenet_top_k
    classes = set(open_clip.IMAGENET_CLASSNAMES)
    assert all(label in classes for label, _ in answer.label_scores)
    scores = [score for _, score in answer.label_scores]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-9
    assert answer.text == answer.label_scores[0][0]
    embeddings = fp32.imagenet_embeddings()
    assert embeddings.shape == (1000, TINY_OPEN_CLIP_CFG["embed_dim"])
    assert fp32.imagenet_embeddings() is embeddings  # built once per backend


def test_embed_image_is_a_unit_vector(fp32: OpenClipBackend, image: Image.Image) -> None:
    vector = fp32.embed_image(image)
    assert vector.shape == (TINY_OPEN_CLIP_CFG["embed_dim"],) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(fp32.embed_image(image), vector, rtol=1e-6, atol=1e-6)


def test_nf4_replaces_mlp_linears_and_answers(
    nf4: OpenClipBackend, fp32: OpenClipBackend, image: Image.Image
) -> None:
    model = nf4._model
    blocks = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    for block in blocks:
        for layer in (block.mlp.c_fc, block.mlp.c_proj):
            assert isinstance(layer, bnb.nn.Linear4bit)
            assert layer.weight.dtype == torch.uint8
            assert layer.int8_original_dtype == torch.float32
        assert not isinstance(block.attn.out_proj, bnb.nn.Linear4bit)
    info = nf4.describe()
    assert info.quantization == "nf4 (bitsandbytes), 8 linear layers, compute float32"
    assert any("attn.out_proj" in name for name in info.full_precision_layers)
    assert any("in_proj_weight" in name for name in info.full_precision_layers)
    assert nf4.quant_report is not None and len(nf4.quant_report.replaced) == 2 * len(blocks)
    assert info.memory_bytes < fp32.describe().memory_bytes

    answer = nf4.answer(image, "Is it a cat, a dog or coffee?")
    assert answer.ok, answer.error
    check_ranking(answer.label_scores, ["cat", "dog", "coffee"])
    assert nf4.answer(image, "What is this?").ok
    cosine = float(np.dot(nf4.embed_image(image), fp32.embed_image(image)))
    assert cosine > 0.9


def test_nf4_answers_concurrently(nf4: OpenClipBackend, image: Image.Image) -> None:
    results = []

    def ask(index: int) -> None:
        results.append(nf4.answer(image, "Is this a cat or a dog?", labels=[f"{LABELS[index % 4]}", "coffee"]))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6 and all(r.ok for r in results), [r.error for r in results]


def test_builtin_style_config_with_pretrained_checkpoint_file(
    tiny_dir: Path, fp32: OpenClipBackend, image: Image.Image, tmp_path: Path
) -> None:
    """The ``model_name`` + ``pretrained=<file>`` route (how a downloaded checkpoint for a built-in
    architecture loads): the tiny architecture is registered as an open_clip model config first."""
    name = "RouteLensTiny-ViT-test"
    (tmp_path / f"{name}.json").write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    checkpoint = tiny_dir / "open_clip_model.safetensors"
    backend = OpenClipBackend("clip-file", model_name=name, pretrained=str(checkpoint), quantize=False, device="cpu")
    assert backend.load(), backend.info.error
    assert backend.describe().model_id == f"{name}/{checkpoint}"
    np.testing.assert_allclose(backend.embed_image(image), fp32.embed_image(image), atol=1e-5)


def test_missing_weights_are_an_error_not_an_exception(image: Image.Image) -> None:
    backend = OpenClipBackend("clip-missing", model_name="ViT-B-32", pretrained="/nonexistent/weights.safetensors")
    answer = backend.answer(image, "Is this a cat or a dog?")
    assert not answer.ok and answer.error.startswith("could not load")
    assert backend.describe().status == "failed"
    with pytest.raises(BackendError, match="could not load: could not build open_clip model .*not a known tag or valid file path"):
        backend.embed_image(image)


def test_rank_labels_postprocess() -> None:
    ranked = rank_labels(np.array([0.5, 2.0, -1.0]), ["a", "b", "c"])
    assert [label for label, _ in ranked] == ["b", "a", "c"]
    assert sum(score for _, score in ranked) == pytest.approx(1.0)
    assert len(rank_labels(np.arange(10.0), [str(i) for i in range(10)], top_k=3)) == 3
    with pytest.raises(ValueError, match="2 scores for 3 labels"):
        rank_labels(np.zeros(2), ["a", "b", "c"])


def test_resolve_templates() -> None:
    assert len(resolve_templates("simple")) == 7
    assert len(resolve_templates("openai")) == 80
    prompts = [t("cat") for t in resolve_templates(["a photo of a {}.", "art of {}"])]
    assert prompts == ["a photo of a cat.", "art of cat"]
    assert resolve_templates("this is a photo of a {}.")[0]("dog") == "this is a photo of a dog."
    with pytest.raises(ValueError, match="unknown template set 'nonsense'"):
        resolve_templates("nonsense")
    with pytest.raises(ValueError, match="containing"):
        resolve_templates(["no placeholder"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nf4_on_cuda(tiny_dir: Path, fp32: OpenClipBackend, image: Image.Image) -> None:
    backend = OpenClipBackend("clip-cuda", model_name=f"local-dir:{tiny_dir}", device="cuda")
    assert backend.load(), backend.info.error
    assert backend.describe().device == "cuda" and backend.describe().quantization.endswith("compute bfloat16")
    assert backend._model.transformer.get_cast_dtype() == torch.bfloat16
    check_ranking(backend.answer(image, "Is this a cat or a dog?").label_scores, ["cat", "dog"])
    assert float(np.dot(backend.embed_image(image), fp32.embed_image(image))) > 0.9


def test_construction_is_cheap_and_checks_options() -> None:
    """Building a backend imports no model code and loads nothing; bad options fail at once."""
    backend = OpenClipBackend("lazy", model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert backend.describe().status == "not loaded" and backend.describe().model_id == "ViT-B-32/laion2b_s34b_b79k"
    with pytest.raises(ValueError, match="containing"):
        OpenClipBackend("bad", label_templates=["no placeholder"])
    with pytest.raises(ValueError, match="unknown template set 'fancy'"):
        OpenClipBackend("bad", imagenet_templates="fancy")
