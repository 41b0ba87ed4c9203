"""backends.quantize: the BitsAndBytesConfig factory and hand quantization of non-transformers models."""

from __future__ import annotations

import bitsandbytes as bnb
import open_clip
import pytest
import torch
from torch import nn

from backends.devices import Placement, module_memory_bytes
from backends.quantize import (
    ORIGINAL_DTYPE_ATTR,
    QuantReport,
    bnb_config,
    count_4bit_layers,
    cpu_incompatible_linear_names,
    full_precision_linear_names,
    memory_footprint_bytes,
    name_matches,
    quantize_linear_layers,
    summarize_names,
)
from tests.tiny_models import TINY_OPEN_CLIP_CFG

CPU = Placement(device="cpu", compute_dtype_name="float32")
CUDA = Placement(device="cuda", compute_dtype_name="bfloat16")


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


class _Block(nn.Module):
    """An attention block the way open_clip writes it: nn.MultiheadAttention plus an MLP."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(x)


def test_bnb_config_cpu_is_nf4_float32_double_quant() -> None:
    config = bnb_config(CPU)
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.float32
    assert config.bnb_4bit_use_double_quant is True
    assert config.llm_int8_skip_modules is None  # transformers' defaults (lm_head) apply


def test_bnb_config_cuda_uses_bf16_and_skip_list_keeps_lm_head() -> None:
    config = bnb_config(CUDA, skip_modules=["vision_tower"])
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.llm_int8_skip_modules == ["vision_tower", "lm_head"]


def test_name_matches_follows_module_boundaries() -> None:
    assert name_matches("layers.1.attn", ["layers.1"])
    assert not name_matches("layers.11.attn", ["layers.1"])
    assert name_matches("model.decoder.layers.3.fc1", ["fc1"])
    assert name_matches("visual.transformer.resblocks.7.mlp.c_fc", [r"visual\..*"])
    assert not name_matches("transformer.resblocks.0.mlp.c_fc", ["visual"])


def test_quantize_sequential_replaces_every_linear_and_stays_close() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64)).eval()
    x = torch.randn(8, 64)
    with torch.no_grad():
        reference = model(x)
    fp32_bytes = module_memory_bytes(model)

    report = quantize_linear_layers(model, torch.float32)

    assert isinstance(report, QuantReport)
    assert report.replaced == ["0", "2"]
    assert report.kept_full_precision == []
    assert report.quantization.startswith("nf4")
    for index in (0, 2):
        layer = model[index]
        assert isinstance(layer, bnb.nn.Linear4bit)
        assert isinstance(layer.weight, bnb.nn.Params4bit)
        assert layer.weight.dtype == torch.uint8
        assert getattr(layer, ORIGINAL_DTYPE_ATTR) == torch.float32
    with torch.no_grad():
        output = model(x)
    assert output.shape == reference.shape and output.dtype == torch.float32
    assert _cosine(output, reference) > 0.95
    assert memory_footprint_bytes(model) < fp32_bytes
    assert memory_footprint_bytes(model) > module_memory_bytes(model)  # 4-bit statistics are counted


def test_multihead_attention_projections_stay_full_precision_and_forward_runs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_Block(), _Block()).eval()
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        reference = model(x)

    report = quantize_linear_layers(model, torch.float32)

    assert report.replaced == ["0.mlp.0", "0.mlp.2", "1.mlp.0", "1.mlp.2"]
    assert set(report.kept_full_precision) == {
        "0.attn.in_proj_weight", "0.attn.out_proj", "1.attn.in_proj_weight", "1.attn.out_proj",
    }
    assert type(model[0].attn.out_proj) is not bnb.nn.Linear4bit
    assert summarize_names(report.kept_full_precision) == ["*.attn.in_proj_weight (x2)", "*.attn.out_proj (x2)"]
    with torch.no_grad():
        assert _cosine(model(x), reference) > 0.95


def test_skip_patterns_and_second_pass_are_respected() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64))
    report = quantize_linear_layers(model, torch.float32, skip=["1"])
    assert report.replaced == ["0", "2"]
    assert report.kept_full_precision == ["1"]
    again = quantize_linear_layers(model, torch.float32, skip=["1"])
    assert again.replaced == [] and again.quantization == "none"
    assert count_4bit_layers(model) == 2


def test_shapes_the_cpu_kernels_reject_are_kept_full_precision() -> None:
    model = nn.Sequential(nn.Linear(32, 48), nn.Linear(48, 64), nn.Linear(64, 64)).eval()
    assert cpu_incompatible_linear_names(model) == ["0", "1"]
    report = quantize_linear_layers(model, torch.float32)
    assert report.replaced == ["2"]
    assert report.kept_full_precision == ["0", "1"]
    with torch.no_grad():
        assert model(torch.randn(3, 32)).shape == (3, 64)


def test_summarize_names_collapses_indices() -> None:
    names = ["a.0.out", "a.1.out", "a.1.inner.2.out", "lm_head"]
    assert summarize_names(names) == ["a.*.out (x2)", "a.*.inner.*.out", "lm_head"]
    assert summarize_names([]) == []


def test_open_clip_dtype_lookup_needs_the_recorded_original_dtype() -> None:
    """open_clip reads its working dtype from resblocks[0].mlp.c_fc; after quantization that weight is
    uint8, so the recorded ``int8_original_dtype`` is what keeps encode_text working (docs/models.md)."""
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_OPEN_CLIP_CFG).eval()
    tokens = open_clip.get_tokenizer("ViT-B-32", context_length=16)(["a photo of a cat", "a dog"])
    with torch.no_grad():
        reference = model.encode_text(tokens, normalize=True)

    quantize_linear_layers(model, torch.float32)

    c_fc = model.transformer.resblocks[0].mlp.c_fc
    assert c_fc.weight.dtype == torch.uint8
    assert model.transformer.get_cast_dtype() == torch.float32
    with torch.no_grad():
        text = model.encode_text(tokens, normalize=True)
    assert text.shape == reference.shape
    assert _cosine(text, reference) > 0.9

    delattr(c_fc, ORIGINAL_DTYPE_ATTR)  # what a plain Linear4bit swap leaves behind
    assert model.transformer.get_cast_dtype() == torch.uint8
    # the text tower then casts its embeddings to uint8 and the float layers refuse them
    with pytest.raises(RuntimeError, match="dtype|scalar type"), torch.no_grad():
        model.encode_text(tokens)


def test_full_precision_linear_names_on_an_unquantized_model_lists_everything() -> None:
    model = nn.Sequential(_Block(), nn.Linear(64, 10))
    names = full_precision_linear_names(model)
    assert names == ["0.attn.in_proj_weight", "0.attn.out_proj", "0.mlp.0", "0.mlp.2", "1"]


@pytest.mark.slow
def test_full_size_siglip_with_a_timm_tower_quantizes_and_encodes() -> None:
    """The gpu preset's ViT-B-16-SigLIP (timm vision tower, open_clip text tower), random weights: every
    timm Linear converts, the text MLPs convert, attention projections of the text tower stay; about 25 s."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-SigLIP", pretrained=None).eval()
    image, tokens = torch.randn(1, 3, 224, 224), torch.randint(1, 1000, (2, 64))
    with torch.no_grad():
        reference = model.encode_image(image), model.encode_text(tokens)
    before = memory_footprint_bytes(model)
    report = quantize_linear_layers(model, torch.float32)
    assert len(report.replaced) == 78
    assert summarize_names(report.kept_full_precision) == [
        "text.transformer.resblocks.*.attn.in_proj_weight (x12)",
        "text.transformer.resblocks.*.attn.out_proj (x12)",
    ]
    assert memory_footprint_bytes(model) < 0.45 * before
    with torch.no_grad():
        assert _cosine(model.encode_image(image), reference[0]) > 0.9
        assert _cosine(model.encode_text(tokens), reference[1]) > 0.9
