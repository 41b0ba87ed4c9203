"""Issue 16: what the hub presets would get wrong with the real checkpoints, shown on tiny local models
(``tests.tiny_hub_models``, ``tests.tiny_models``) loaded through the product's own code paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from PIL import Image

from backends import devices
from backends.hf_vision import QWEN2_VL_MAX_PIXELS, HFVisionBackend, processor_options
from backends.offline_llm import OfflineLLMBackend
from backends.open_clip_zero_shot import OpenClipBackend, pretrained_uses_quick_gelu
from backends.presets import list_presets, load_preset
from backends.shared import SharedModels
from tests.checks import check_ranking
from tests.tiny_hub_models import (
    BIGRAM_LABEL_PROBS,
    QWEN_HUB_MAX_PIXELS,
    SIGLIP_INIT_LOGIT_BIAS,
    build_bigram_gemma_dir,
    build_bigram_llava_dir,
    build_hub_shaped_smolvlm_dir,
    build_tiny_siglip_dir,
    make_hub_shaped_qwen2_vl_dir,
)
from tests.tiny_models import (
    TINY_OPEN_CLIP_CFG,
    build_tiny_blip2_dir,
    build_tiny_llava_dir,
    build_tiny_open_clip_dir,
    build_tiny_qwen2_vl_dir,
)

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny random models of tests.tiny_models plus the hub-shaped ones, built once."""
    root = tmp_path_factory.mktemp("hub")
    qwen = build_tiny_qwen2_vl_dir(root / "qwen")
    return {
        "llava": build_tiny_llava_dir(root / "llava"),
        "qwen2_vl": qwen,
        "qwen2_vl_hub": make_hub_shaped_qwen2_vl_dir(qwen, root / "qwen-hub"),
        "blip2": build_tiny_blip2_dir(root / "blip2"),
        "smolvlm_hub": build_hub_shaped_smolvlm_dir(root / "smolvlm"),
    }


def _backend(folder: Path, **options) -> HFVisionBackend:
    backend = HFVisionBackend(folder.name, model_id=str(folder), device="cpu", **{"quantize": False, **options})
    assert backend.load(), backend.info.error
    return backend


def _preset_entries(family: str) -> list[tuple[str, dict]]:
    return [
        (name, spec.options)
        for name in list_presets()
        for spec in load_preset(name).backends
        if spec.family == family
    ]


def _uncached_token_logprobs(backend: HFVisionBackend, image: Image.Image, prompt: str, label: str) -> list[float]:
    """Log-probability of each of the label's answer tokens (end token included) from ONE forward pass over
    the whole text, no cache: the reference the cached scorer must match."""
    ids = backend.answer_token_ids(prompt, label)
    separator = "" if prompt[-1].isspace() else " "
    inputs = backend._inputs(image, prompt + separator + label + getattr(backend, "_answer_end", ""))
    assert inputs["input_ids"][0, -len(ids) :].tolist() == ids
    with torch.no_grad():
        logits = backend._model(**inputs).logits[0]
    log_probs = torch.log_softmax(logits[-len(ids) - 1 : -1].float(), dim=-1)
    return log_probs[torch.arange(len(ids)), torch.tensor(ids)].tolist()


# ----------------------------------------------------------------------------- 1. QuickGELU
def test_a_tag_trained_with_quick_gelu_builds_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A built-in-style architecture name whose pretrained tag open_clip marks ``quick_gelu`` (as
    ``ViT-L-14-336`` / ``openai`` is) gets QuickGELU; open_clip alone would build GELU and only warn."""
    import open_clip
    from open_clip.transformer import QuickGELU

    name = "RouteLensTiny-QuickGELU-test"
    (tmp_path / f"{name}.json").write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    checkpoint = build_tiny_open_clip_dir(tmp_path / "weights") / "open_clip_model.safetensors"
    tag = {"file": str(checkpoint), "quick_gelu": True, "mean": open_clip.OPENAI_DATASET_MEAN,
           "std": open_clip.OPENAI_DATASET_STD}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, {"tiny_openai": tag})

    backend = OpenClipBackend("clip-qg", model_name=name, pretrained="tiny_openai", quantize=False, device="cpu")
    assert backend.load(), backend.info.error
    blocks = [*backend._model.visual.transformer.resblocks, *backend._model.transformer.resblocks]
    assert all(isinstance(block.mlp.gelu, QuickGELU) for block in blocks)
    assert backend.quick_gelu

    plain = OpenClipBackend("clip-file", model_name=name, pretrained=str(checkpoint), quantize=False, device="cpu")
    assert plain.load(), plain.info.error  # a checkpoint file carries no tag: its config decides
    assert not plain.quick_gelu and isinstance(plain._model.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)


def test_quick_gelu_is_read_from_open_clips_registry() -> None:
    assert pretrained_uses_quick_gelu("ViT-L-14-336", "openai")
    assert pretrained_uses_quick_gelu("ViT-B-32", "openai")
    assert not pretrained_uses_quick_gelu("ViT-B-32", "laion2b_s34b_b79k")
    assert not pretrained_uses_quick_gelu("ViT-B-16-SigLIP", "webli")
    assert not pretrained_uses_quick_gelu("local-dir:/x", "openai")


def test_shipped_presets_name_the_quick_gelu_architecture() -> None:
    import open_clip

    entries = _preset_entries("open_clip")
    assert any(options["pretrained"] == "openai" for _, options in entries)
    for preset, options in entries:
        if pretrained_uses_quick_gelu(options["model_name"], options["pretrained"]):
            config = open_clip.get_model_config(options["model_name"])
            assert config and config.get("quick_gelu"), f"{preset}: {options['model_name']} builds plain GELU"


# ----------------------------------------------------------------------------- 2. P(label): sum with the end token
@pytest.fixture(scope="module")
def bigram_llava(tmp_path_factory: pytest.TempPathFactory) -> HFVisionBackend:
    return _backend(build_bigram_llava_dir(tmp_path_factory.mktemp("bigram") / "llava"))


def test_generative_label_scores_are_label_probabilities(bigram_llava: HFVisionBackend, image: Image.Image) -> None:
    """Answers follow BIGRAM_ANSWERS: "dog" 0.5, "hot air balloon" 0.3, "hot" alone ~0 (multi-token BPE:
    " balloon" is " ball" + "oon"). The old mean per token picked the long label and the prefix label."""
    labels = ["dog", "hot air balloon", "hot"]
    answer = bigram_llava.answer(image, "What is it?", labels)
    check_ranking(answer.label_scores, labels)
    assert answer.text == "dog"
    total = BIGRAM_LABEL_PROBS["dog"] + BIGRAM_LABEL_PROBS["hot air balloon"]
    scores = dict(answer.label_scores)
    assert scores["dog"] == pytest.approx(0.5 / total, abs=1e-4)
    assert scores["hot air balloon"] == pytest.approx(0.3 / total, abs=1e-4)
    assert scores["hot"] < 1e-6
    prefix = bigram_llava.answer(image, "What is it?", ["hot", "hot dog"])
    assert prefix.text == "hot dog" and dict(prefix.label_scores)["hot dog"] > 0.999

    # The quirk itself: several tokens per label, and the old rule (mean per token, no end token) wrong twice.
    prompt = bigram_llava.build_prompt("What is it?", labels, image)
    tokens = bigram_llava.tokenizer.convert_ids_to_tokens(bigram_llava.answer_token_ids(prompt, "hot air balloon"))
    assert tokens == ["Ġhot", "Ġair", "Ġball", "oon", "</s>"]
    old = {
        label: float(np.mean(_uncached_token_logprobs(bigram_llava, image, prompt, label)[:-1]))
        for label in ("dog", "hot air balloon", "hot", "hot dog")
    }
    assert old["hot air balloon"] > old["dog"]  # the long label won
    assert old["hot"] > old["hot dog"]  # the prefix label won


@pytest.fixture(scope="module")
def effnet_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    from backends.efficientnet_lite import EfficientNetLite

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("effnet") / "random-lite0.pth"
    torch.save(EfficientNetLite().state_dict(), path)
    return str(path)


def test_offline_gemma_label_scores_are_label_probabilities(tmp_path: Path, effnet_weights: str, image: Image.Image) -> None:
    """The offline family's base Gemma: each label scored with the blank line that ends every few-shot
    answer; the prompt runs once (its cache serves every label)."""
    backend = OfflineLLMBackend(
        "bigram-gemma", quantize=False, device="cpu", shared=SharedModels(),
        checkpoint_dir=str(build_bigram_gemma_dir(tmp_path / "gemma")), efficientnet_weights=effnet_weights,
    )
    assert backend.load(), backend.info.error
    lengths: list[int] = []
    backend._model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    labels = ["dog", "hot air balloon", "hot"]
    answer = backend.answer(image, "What is it?", labels)
    assert answer.ok, answer.error
    assert answer.text == "dog"
    scores = dict(answer.label_scores)
    assert scores["dog"] == pytest.approx(0.625, abs=1e-4) and scores["hot air balloon"] == pytest.approx(0.375, abs=1e-4)
    assert scores["hot"] < 1e-6
    assert len(lengths) == 2 and lengths[0] > 50 and lengths[1] <= 4  # prompt once, then the labels together
    assert backend.answer(image, "What is it?", ["hot", "hot dog"]).text == "hot dog"


# ----------------------------------------------------------------------------- 3. one cached prefix; SmolVLM on CPU
def _count_vision_calls(backend: HFVisionBackend, module_name: str) -> list[int]:
    """Batch sizes of every call of the vision module (for LLaVA: images per call)."""
    calls: list[int] = []
    backend._model.get_submodule(module_name).register_forward_hook(
        lambda module, args, output: calls.append(int(args[0].shape[0]) if args else -1)
    )
    return calls


def test_the_image_is_encoded_once_per_label_question(folders: dict[str, Path], image: Image.Image) -> None:
    backend = _backend(folders["llava"], score_batch_size=2)
    calls = _count_vision_calls(backend, "model.vision_tower")
    answer = backend.answer(image, "what is it?", ["cat", "dog", "hot air balloon", "red", "green blue"])
    assert answer.ok, answer.error
    assert calls == [1]  # one image, one pass: five labels continue the cached prompt


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "blip2", "smolvlm_hub"])
def test_cached_label_scores_equal_the_uncached_computation(folders: dict[str, Path], name: str, image: Image.Image) -> None:
    backend = _backend(folders[name], score_batch_size=2)
    labels = ["cat", "dog", "hot air balloon"]
    prompt = backend.build_prompt("what is it?", labels, image)
    cached = backend.label_log_likelihoods(backend._inputs(image, prompt), prompt, labels)
    expected = [sum(_uncached_token_logprobs(backend, image, prompt, label)) for label in labels]
    assert cached == pytest.approx(expected, abs=1e-4)


def test_smolvlm_on_cpu_encodes_one_tile(folders: dict[str, Path]) -> None:
    """The hub's SmolVLM processor tiles a photo (here 4x3 tiles + an overview); on CPU one tile."""
    from tests.tiny_hub_models import SMOLVLM_TILE

    photo = Image.new("RGB", (160, 120), (200, 30, 30))
    hub_default = _backend(folders["smolvlm_hub"], processor_kwargs={"do_image_splitting": True})
    prompt = hub_default.build_prompt("what is it?")
    assert hub_default._inputs(photo, prompt)["pixel_values"].shape[1] == 13

    on_cpu = _backend(folders["smolvlm_hub"])
    pixels = on_cpu._inputs(photo, prompt)["pixel_values"]
    assert tuple(pixels.shape[1:]) == (1, 3, SMOLVLM_TILE, SMOLVLM_TILE)
    assert on_cpu.processor_options == {"do_image_splitting": False}
    ((_, options),) = [(n, o) for n, o in _preset_entries("hf_vision") if "SmolVLM" in o["model_id"]]
    as_shipped = _backend(folders["smolvlm_hub"], processor_kwargs=options["processor_kwargs"])
    assert as_shipped._inputs(photo, prompt)["pixel_values"].shape[1] == 1
    assert on_cpu.answer(photo, "Is this a cat or a dog?").ok


def test_shipped_smolvlm_backends_bound_the_image() -> None:
    entries = [(n, o) for n, o in _preset_entries("hf_vision") if "smolvlm" in o["model_id"].lower()]
    assert entries
    for preset, options in entries:
        kwargs = options.get("processor_kwargs", {})
        bounded = kwargs.get("do_image_splitting") is False or kwargs.get("size", {}).get("longest_edge", 10**9) <= 512
        assert bounded, f"{preset}: SmolVLM without an image bound"


# ----------------------------------------------------------------------------- 4. Qwen2-VL's pixel cap
def test_qwen2_vl_pixel_cap_from_the_preset_is_used(folders: dict[str, Path]) -> None:
    """The hub's preprocessor_config.json carries max_pixels (12.8M), which overrides a ``size`` kwarg;
    the preset's max_pixels is what must reach the image processor."""
    import transformers

    folder = folders["qwen2_vl_hub"]
    trap = transformers.AutoProcessor.from_pretrained(str(folder), size={"shortest_edge": 3136, "longest_edge": 200704})
    assert trap.image_processor.size["longest_edge"] == QWEN_HUB_MAX_PIXELS  # what the old docs advised

    ((_, options),) = [(n, o) for n, o in _preset_entries("hf_vision") if "Qwen2-VL" in o["model_id"]]
    cap = options["processor_kwargs"]["max_pixels"]
    photo = Image.new("RGB", (2000, 1500), (30, 90, 200))
    for kwargs, expected in (
        (options["processor_kwargs"], cap),
        ({}, QWEN2_VL_MAX_PIXELS),  # the code's default when a preset sets none
        ({"size": {"shortest_edge": 3136, "longest_edge": 200704}}, 200704),  # old-style size, translated
    ):
        backend = _backend(folder, processor_kwargs=kwargs)
        assert backend._processor.image_processor.size["longest_edge"] == expected
        grid = backend._inputs(photo, backend.build_prompt("what is it?"))["image_grid_thw"]
        assert int(grid.prod()) * 14 * 14 <= expected
        if kwargs is options["processor_kwargs"]:
            assert backend._processor.image_processor.size["shortest_edge"] == kwargs["min_pixels"]


def test_processor_options_rule() -> None:
    from backends.hf_vision import ARCHITECTURES

    qwen = ARCHITECTURES["qwen2_vl"]
    assert processor_options(qwen, {}, on_cpu=False) == {"max_pixels": QWEN2_VL_MAX_PIXELS}
    assert processor_options(qwen, {"size": {"shortest_edge": 1, "longest_edge": 2}}, on_cpu=True) == {
        "max_pixels": 2, "min_pixels": 1,
    }
    smol = ARCHITECTURES["idefics3"]
    assert processor_options(smol, {}, on_cpu=False) == {}
    assert processor_options(smol, {}, on_cpu=True) == {"do_image_splitting": False}
    assert processor_options(smol, {"do_image_splitting": True}, on_cpu=True) == {"do_image_splitting": True}


def test_shipped_qwen2_vl_backends_set_max_pixels() -> None:
    entries = [(n, o) for n, o in _preset_entries("hf_vision") if "qwen2-vl" in o["model_id"].lower()]
    assert entries
    for preset, options in entries:
        assert "max_pixels" in options.get("processor_kwargs", {}), preset


# ----------------------------------------------------------------------------- 5. LLaVA / Qwen2-VL towers stay 16-bit in 4-bit
@pytest.mark.parametrize(
    ("name", "kept", "quantized"),
    [
        ("llava", ["model.vision_tower", "model.multi_modal_projector"], "model.language_model"),
        ("qwen2_vl", ["model.visual"], "model.language_model"),
    ],
)
def test_vision_tower_and_projector_stay_full_precision(
    folders: dict[str, Path], name: str, kept: list[str], quantized: str, image: Image.Image
) -> None:
    backend = _backend(folders[name], quantize=True)
    model = backend._model
    for root in kept:
        linears = [m for m in model.get_submodule(root).modules() if isinstance(m, torch.nn.Linear)]
        assert linears and not any(isinstance(m, bnb.nn.Linear4bit) for m in linears), root
        assert any(line.startswith(f"{root} (all ") for line in backend.describe().full_precision_layers)
    language = [m for m in model.get_submodule(quantized).modules() if isinstance(m, torch.nn.Linear)]
    assert language and all(isinstance(m, bnb.nn.Linear4bit) for m in language)
    assert "lm_head" in backend.describe().full_precision_layers
    assert backend.answer(image, "Is this a cat or a dog?").ok


# ----------------------------------------------------------------------------- 6. SigLIP: independent sigmoids
def test_siglip_scores_are_independent_sigmoids(tmp_path: Path, image: Image.Image) -> None:
    backend = OpenClipBackend("siglip", model_name=f"local-dir:{build_tiny_siglip_dir(tmp_path)}", quantize=False, device="cpu")
    assert backend.load(), backend.info.error
    assert float(backend._model.logit_bias) == SIGLIP_INIT_LOGIT_BIAS
    labels = ["cat", "dog", "hot air balloon"]
    answer = backend.answer(image, "What is it?", labels)
    assert answer.ok, answer.error
    cos = torch.from_numpy(backend.embed_image(image)) @ backend.label_embeddings(labels).T
    expected = torch.sigmoid(backend._model.logit_scale.exp() * cos + backend._model.logit_bias).tolist()
    assert dict(answer.label_scores) == pytest.approx(dict(zip(labels, expected, strict=True)), abs=1e-6)
    scores = [score for _, score in answer.label_scores]
    assert scores == sorted(scores, reverse=True) and sum(scores) < 0.5  # "none of these" is visible
    assert answer.text == answer.label_scores[0][0]


def test_clip_without_bias_stays_a_softmax(tmp_path: Path, image: Image.Image) -> None:
    backend = OpenClipBackend("clip", model_name=f"local-dir:{build_tiny_open_clip_dir(tmp_path)}", quantize=False, device="cpu")
    assert backend.load(), backend.info.error
    check_ranking(backend.answer(image, "What is it?", ["cat", "dog"]).label_scores, ["cat", "dog"])


# ----------------------------------------------------------------------------- 7. LLaVA-1.5: pad to square
def test_llava_pads_wide_photos_to_square(folders: dict[str, Path]) -> None:
    """A 96x32 photo, red left third and blue right third: centre-cropping kept only the grey middle."""
    backend = _backend(folders["llava"])
    photo = Image.new("RGB", (96, 32), (128, 128, 128))
    photo.paste((255, 0, 0), (0, 0, 32, 32))
    photo.paste((0, 0, 255), (64, 0, 96, 32))
    processor = backend._processor.image_processor
    pixels = backend._inputs(photo, backend.build_prompt("what is it?"))["pixel_values"][0]
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    rgb = pixels * torch.tensor(processor.image_std).view(3, 1, 1) + mean
    assert rgb.shape[-2:] == (32, 32)
    assert rgb[0, 16, 2] > 0.8 and rgb[2, 16, 2] < 0.2  # the red edge survives
    assert rgb[2, 16, 29] > 0.8 and rgb[0, 16, 29] < 0.2  # the blue edge survives
    assert torch.allclose(rgb[:, 2, 16], mean.view(3), atol=0.02)  # padding in the processor's mean colour


# ----------------------------------------------------------------------------- 8. dtype by GPU generation
@pytest.mark.parametrize(
    ("device", "capability", "dtype"),
    [
        ("cpu", None, "float32"),
        ("cuda", (7, 5), "float16"),  # T4
        ("cuda", (7, 0), "float16"),  # V100
        ("cuda:1", (8, 0), "bfloat16"),  # A100
        ("cuda", (8, 9), "bfloat16"),  # L4
        ("cuda", (9, 0), "bfloat16"),  # H100
        ("cuda", None, "float16"),
    ],
)
def test_compute_dtype_follows_native_bf16_support(device: str, capability, dtype: str) -> None:
    assert devices.compute_dtype_for(device, capability) == dtype


def test_resolve_placement_asks_the_gpu_its_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cuda_capability", lambda device="cuda": (7, 5))
    assert devices.resolve_placement("cuda").compute_dtype_name == "float16"
    monkeypatch.setattr(devices, "cuda_capability", lambda device="cuda": (9, 0))
    assert devices.resolve_placement("cuda:0").compute_dtype_name == "bfloat16"
    assert devices.resolve_placement("cpu").compute_dtype_name == "float32"


def test_cpu_preset_cache_check_matches_open_clip_repo_names() -> None:
    """open_clip tags use "_" where their hub repos use "-": the cpu preset's CLIP counts as cached."""
    from backends.presets import _is_cached

    assert _is_cached("ViT-B-32/laion2b_s34b_b79k", {"laion/CLIP-ViT-B-32-laion2B-s34B-b79K"})
    assert not _is_cached("ViT-B-32/laion2b_s34b_b79k", {"laion/CLIP-ViT-B-16-laion2B-s34B-b88K"})


# ----------------------------------------------------------------------------- make smoke-hub
def test_smoke_hub_exits_cleanly_when_the_hub_is_unreachable() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "smoke_hub.py")], capture_output=True, text=True, env=env, timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "hub unreachable" in result.stdout and "skipped" in result.stdout.lower()
