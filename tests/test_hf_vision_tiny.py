"""HFVisionBackend on a tiny random LLaVA saved with ``save_pretrained`` and loaded through
``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained`` (fp32 and nf4 on CPU)."""

from __future__ import annotations

import shutil
from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from PIL import Image

from backends.hf_vision import ARCHITECTURES, HFVisionBackend, softmax_ranking
from backends.messages import vqa_prompt
from tests.checks import check_ranking
from tests.tiny_models import (
    build_tiny_blip2_dir,
    build_tiny_llava_dir,
    build_tiny_qwen2_vl_dir,
)

LABELS = ["cat", "dog", "hot air balloon"]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava_dir(tmp_path_factory.mktemp("llava") / "tiny-llava")


@pytest.fixture(scope="module")
def fp32(llava_dir: Path) -> HFVisionBackend:
    backend = HFVisionBackend("llava-fp32", model_id=str(llava_dir), quantize=False, max_new_tokens=6, device="cpu")
    assert backend.load(), backend.info.error
    return backend


@pytest.fixture(scope="module")
def nf4(llava_dir: Path) -> HFVisionBackend:
    backend = HFVisionBackend("llava-nf4", model_id=str(llava_dir), max_new_tokens=6, device="cpu")
    assert backend.load(), backend.info.error
    return backend


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8))


def test_fp32_card_and_chat_template_prompt(fp32: HFVisionBackend, llava_dir: Path) -> None:
    info = fp32.describe()
    assert info.status == "ready" and info.kind == "vlm+llm" and info.family == "hf_vision"
    assert info.model_id == str(llava_dir) and info.device == "cpu"
    assert info.quantization.startswith("none") and info.full_precision_layers == []
    assert info.memory_bytes and info.memory_bytes > 0
    assert fp32.arch is ARCHITECTURES["llava"]
    text = vqa_prompt("what color is this?", None).messages[-1].text  # the shared instruction
    assert fp32.build_prompt("what color is this?") == f"USER: <image>\n{text}\nASSISTANT:"
    with_options = fp32.build_prompt("what is it?", ["cat", "dog"])
    assert with_options.startswith("USER: <image>\nwhat is it?") and "cat, dog" in with_options


def test_free_text_answer_by_greedy_generate(fp32: HFVisionBackend, image: Image.Image) -> None:
    answer = fp32.answer(image, "what color is this?")
    assert answer.ok, answer.error
    assert isinstance(answer.text, str) and answer.label_scores is None
    assert len(answer.text.split()) <= fp32.max_new_tokens  # new tokens only, the prompt is not echoed
    again = fp32.answer(image, "what color is this?")
    assert again.text == answer.text  # greedy: deterministic


def test_user_labels_scored(fp32: HFVisionBackend, image: Image.Image) -> None:
    answer = fp32.answer(image, "what is in the picture?", labels=LABELS)
    assert answer.ok, answer.error
    check_ranking(answer.label_scores, LABELS)
    assert answer.text == answer.label_scores[0][0]


def test_labels_parsed_from_question(fp32: HFVisionBackend, image: Image.Image) -> None:
    answer = fp32.answer(image, "Is this a cat or a dog?")
    assert answer.ok, answer.error
    check_ranking(answer.label_scores, ["cat", "dog"])


def test_label_score_is_the_summed_log_likelihood_with_the_end_token(fp32: HFVisionBackend, image: Image.Image) -> None:
    """The cached-prefix scorer agrees with a direct computation on ``prompt + label + </s>`` text."""
    question = "what is in the picture?"
    prompt = fp32.build_prompt(question, LABELS, image)
    inputs = fp32._inputs(image, prompt)
    batched = fp32.label_log_likelihoods(inputs, prompt, LABELS)
    model = fp32._model
    for label, score in zip(LABELS, batched, strict=True):
        ids = fp32.answer_token_ids(prompt, label)
        assert len(ids) == len(label.split()) + 1  # one word-level token per word, then </s>
        full = fp32._inputs(image, f"{prompt} {label}</s>")
        with torch.no_grad():
            logits = model(**full).logits[0]
        targets = full["input_ids"][0, -len(ids):]
        assert targets.tolist() == ids
        log_probs = torch.log_softmax(logits[-len(ids) - 1 : -1].float(), dim=-1)
        expected = log_probs[torch.arange(len(ids)), targets].sum().item()
        assert score == pytest.approx(expected, abs=1e-4)


def test_batch_size_does_not_change_scores(llava_dir: Path, fp32: HFVisionBackend, image: Image.Image) -> None:
    single = HFVisionBackend("llava-b1", model_id=str(llava_dir), quantize=False, score_batch_size=1, device="cpu")
    labels = LABELS + ["red", "green blue", "yes"]
    a = single.answer(image, "what is it?", labels=labels)
    b = fp32.answer(image, "what is it?", labels=labels)
    assert a.ok and b.ok
    assert dict(a.label_scores) == pytest.approx(dict(b.label_scores), abs=1e-5)


def test_nf4_load_replaces_linears_and_runs(nf4: HFVisionBackend, fp32: HFVisionBackend, image: Image.Image) -> None:
    model = nf4._model
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    quantized = [n for n, m in linears if isinstance(m, bnb.nn.Linear4bit)]
    # The language model goes 4-bit; LLaVA's vision tower and projector stay 16/32-bit, as its own loader does.
    assert any("language_model" in n for n in quantized)
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in quantized)
    assert all(isinstance(m, bnb.nn.Linear4bit) for n, m in linears if "language_model" in n)
    info = nf4.describe()
    assert info.quantization.startswith("nf4") and "compute float32" in info.quantization
    assert info.full_precision_layers == [
        "model.vision_tower (all 12 linear layers)", "model.multi_modal_projector (all 2 linear layers)", "lm_head",
    ]
    assert info.memory_bytes < fp32.describe().memory_bytes

    free = nf4.answer(image, "what color is this?")
    assert free.ok, free.error
    assert isinstance(free.text, str) and len(free.text.split()) <= nf4.max_new_tokens
    ranked = nf4.answer(image, "Is this a cat or a dog?")
    assert ranked.ok, ranked.error
    check_ranking(ranked.label_scores, ["cat", "dog"])


def test_skip_modules_keep_the_vision_tower_full_precision(llava_dir: Path, image: Image.Image) -> None:
    backend = HFVisionBackend("llava-skip", model_id=str(llava_dir), skip_modules=["model.vision_tower"], device="cpu")
    assert backend.load(), backend.info.error
    kept = backend.describe().full_precision_layers
    assert "lm_head" in kept and any("vision_tower" in name for name in kept)
    assert not any("language_model" in name for name in kept)
    assert backend.answer(image, "Is this a cat or a dog?").ok


def test_layers_the_cpu_kernels_reject_stay_full_precision(tmp_path: Path, image: Image.Image) -> None:
    """A 32-wide vision tower: bitsandbytes' CPU kernels need in_features % 64 == 0, so those layers
    are skipped (found on a meta-device skeleton before loading) instead of failing at answer time."""
    folder = build_tiny_llava_dir(tmp_path / "narrow", vision_hidden=32)
    backend = HFVisionBackend("llava-narrow", model_id=str(folder), max_new_tokens=3, device="cpu")
    assert backend.load(), backend.info.error
    kept = backend.describe().full_precision_layers
    assert any("vision_tower" in name for name in kept)
    assert backend.answer(image, "what color is this?").ok
    assert backend.answer(image, "Is this a cat or a dog?").ok


def test_plain_prompt_without_chat_template(llava_dir: Path, tmp_path: Path, image: Image.Image) -> None:
    folder = tmp_path / "no-template"
    shutil.copytree(llava_dir, folder)
    (folder / "chat_template.jinja").unlink()
    backend = HFVisionBackend("llava-plain", model_id=str(folder), quantize=False, max_new_tokens=3, device="cpu")
    assert backend.load(), backend.info.error
    text = vqa_prompt("what color is this?", None).messages[-1].text
    assert backend.build_prompt("what color is this?") == f"USER: <image>\n{text} ASSISTANT:"
    assert backend.answer(image, "what color is this?").ok
    custom = HFVisionBackend(
        "llava-custom", model_id=str(llava_dir), quantize=False, device="cpu",
        prompt_template="{image_token} {question} answer :",
    )
    assert custom.load()
    assert custom.build_prompt("what is it?") == f"<image> {vqa_prompt('what is it?', None).messages[-1].text} answer :"
    check_ranking(custom.answer(image, "what is it?", labels=["cat", "dog"]).label_scores, ["cat", "dog"])


def test_missing_model_is_a_clear_error(tmp_path: Path, image: Image.Image) -> None:
    backend = HFVisionBackend("ghost", model_id=str(tmp_path / "nothing-here"))
    answer = backend.answer(image, "what is it?")
    assert not answer.ok and "could not find model" in answer.error
    assert backend.describe().status == "failed"


def test_softmax_ranking_postprocess() -> None:
    ranked = softmax_ranking([-2.0, -0.5, -1.0], ["a", "b", "c"])
    assert [label for label, _ in ranked] == ["b", "c", "a"]
    assert sum(score for _, score in ranked) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scores for 2 labels"):
        softmax_ranking([0.0], ["a", "b"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nf4_on_cuda_computes_in_bf16(llava_dir: Path, image: Image.Image) -> None:
    backend = HFVisionBackend("llava-cuda", model_id=str(llava_dir), device="cuda", max_new_tokens=4)
    assert backend.load(), backend.info.error
    info = backend.describe()
    assert info.device == "cuda" and "compute bfloat16" in info.quantization
    assert info.full_precision_layers == [
        "model.vision_tower (all 12 linear layers)", "model.multi_modal_projector (all 2 linear layers)", "lm_head",
    ]
    assert backend.answer(image, "what color is this?").ok
    check_ranking(backend.answer(image, "Is this a cat or a dog?").label_scores, ["cat", "dog"])


# ------------------------------------------------------------------ other architectures of the table
OTHER_ARCHITECTURES = {
    # name: (builder, model_type, has chat template)
    "blip2": (build_tiny_blip2_dir, "blip-2", False),
    "qwen2_vl": (build_tiny_qwen2_vl_dir, "qwen2_vl", True),
}


@pytest.fixture(scope="module", params=sorted(OTHER_ARCHITECTURES))
def other_arch(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    builder = OTHER_ARCHITECTURES[request.param][0]
    return request.param, builder(tmp_path_factory.mktemp(request.param) / "tiny")


def test_other_architectures_fp32_and_nf4(other_arch: tuple[str, Path], image: Image.Image) -> None:
    """BLIP-2 (plain prompt, Q-Former kept fp32 by transformers) and Qwen2-VL (chat template, patch-list
    pixel values, M-RoPE): same code path, free text and label scoring, batching-invariant scores."""
    name, folder = other_arch
    _, model_type, has_template = OTHER_ARCHITECTURES[name]
    labels = ["cat", "dog", "hot air balloon"]
    scores = {}
    fp32_bytes = None
    for quantize, batch in ((False, 1), (False, 4), (True, 4)):
        backend = HFVisionBackend(
            f"{name}-{quantize}-{batch}", model_id=str(folder), quantize=quantize, score_batch_size=batch,
            max_new_tokens=4, device="cpu",
        )
        assert backend.load(), backend.info.error
        assert backend.arch is ARCHITECTURES[model_type]
        prompt = backend.build_prompt("what is it?")
        assert (prompt == "Question: what is it? Answer:") is not has_template
        free = backend.answer(image, "what color is this?")
        assert free.ok, free.error
        assert free.label_scores is None and len(free.text.split()) <= 4
        ranked = backend.answer(image, "what is it?", labels=labels)
        assert ranked.ok, ranked.error
        check_ranking(ranked.label_scores, labels)
        scores[(quantize, batch)] = dict(ranked.label_scores)
        if quantize:
            assert backend.describe().quantization.startswith("nf4")
            assert any(layer.endswith("lm_head") for layer in backend.describe().full_precision_layers)
            assert fp32_bytes is not None and backend.describe().memory_bytes < fp32_bytes
        else:
            fp32_bytes = backend.describe().memory_bytes
    assert scores[(False, 1)] == pytest.approx(scores[(False, 4)], abs=1e-5)
