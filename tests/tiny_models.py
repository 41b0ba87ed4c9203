"""Tiny randomly initialised models, saved to disk in the formats the hub uses, so tests (and
scripts/bench_quantize.py) load them through the product's own code paths without any download.

- :func:`build_tiny_open_clip_dir`: an open_clip ``local-dir:`` folder (``open_clip_config.json`` with
  ``model_cfg`` + ``preprocess_cfg``, ``open_clip_model.safetensors``), tokenised by open_clip's bundled
  ``SimpleTokenizer``.
- :func:`build_tiny_llava_dir`: a LLaVA-1.5-shaped ``LlavaForConditionalGeneration`` (tiny CLIP vision tower
  + tiny Llama) with a ``LlavaProcessor`` (``CLIPImageProcessor`` + a word-level fast tokenizer built here,
  with an ``<image>`` token and a LLaVA-style chat template), written with ``save_pretrained``.
- :func:`build_tiny_blip2_dir`: BLIP-2 (ViT + Q-Former + OPT) with ``Blip2Processor``, no chat template.
- :func:`build_tiny_qwen2_vl_dir`: Qwen2-VL (patch ViT, 2x2 merger, M-RoPE) with ``Qwen2VLProcessor`` and a
  Qwen-style chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: A CLIP with a 2-block ViT (32 px, 8 px patches) and a 2-block text tower; about 3.4M parameters,
#: most of them the 49408-token embedding that open_clip's SimpleTokenizer needs.
TINY_OPEN_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

#: Words the tiny LLaVA tokenizer knows (besides special tokens): enough for test prompts and labels.
TINY_WORDS: tuple[str, ...] = (
    "USER", "ASSISTANT", ":", "?", ".", ",", "is", "this", "a", "an", "the", "cat", "dog", "or", "what",
    "color", "red", "green", "blue", "shape", "circle", "square", "triangle", "yes", "no", "photo", "of",
    "animal", "in", "picture", "it", "answer", "question", "using", "single", "word", "phrase", "hot",
    "air", "balloon", "two", "three",
)
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>{{ '\\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tiny_open_clip_dir(path: Path, *, seed: int = 0) -> Path:
    """Write a tiny random open_clip model in ``local-dir:`` format; returns the folder.

    Load it with ``model_name=f"local-dir:{path}"``, or register ``path / "open_clip_config.json"``-style
    configs with ``open_clip.add_model_config`` and pass the checkpoint as ``pretrained``.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPEN_CLIP_CFG)
    preprocess = {"size": 32, "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_OPEN_CLIP_CFG, "preprocess_cfg": preprocess}, indent=2)
    )
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(path / "open_clip_model.safetensors"))
    return path


def build_tiny_tokenizer(*, image_token_attribute: bool = True) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` with <s>, </s>, <pad>, <unk> and an ``<image>`` token
    (declared as the tokenizer's ``image_token`` unless ``image_token_attribute`` is False)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    vocab = {token: index for index, token in enumerate([*specials, *TINY_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        **({"extra_special_tokens": {"image_token": "<image>"}} if image_token_attribute else {}),
    )
    return tokenizer


#: Linear sizes default to multiples of 64: bitsandbytes' CPU kernels (AVX512-BF16 packing) need
#: in_features divisible by the 64-weight block and out_features by 32.
def build_tiny_llava_dir(
    path: Path, *, seed: int = 0, vision_hidden: int = 64, chat_template: bool = True
) -> Path:
    """Write a tiny random LLaVA model + processor with ``save_pretrained``; returns the folder.

    ``vision_hidden=32`` gives a vision tower whose layers bitsandbytes' CPU kernels cannot take;
    ``chat_template=False`` saves the processor without one (the plain-prompt path)."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=2,
        num_attention_heads=2, image_size=32, patch_size=8, projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id, image_seq_length=16,
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TINY_CHAT_TEMPLATE if chat_template else None,
    )
    processor.save_pretrained(path)
    return path


def build_tiny_blip2_dir(path: Path, *, seed: int = 0) -> Path:
    """Write a tiny random BLIP-2 (ViT + Q-Former + OPT) and its processor (no chat template)."""
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
    )

    path.mkdir(parents=True, exist_ok=True)
    # Blip2Processor adds its own "<image>" AddedToken when the tokenizer declares none.
    tokenizer = build_tiny_tokenizer(image_token_attribute=False)
    vision = Blip2VisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    qformer = Blip2QFormerConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, encoder_hidden_size=64,
        vocab_size=len(tokenizer),
    )
    text = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=2,
        word_embed_proj_dim=64, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
        num_query_tokens=4, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer, num_query_tokens=4
    )
    processor.save_pretrained(path)
    return path


QWEN_SPECIALS: tuple[str, ...] = (
    "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}{{ '\\n' }}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
)


def build_tiny_qwen2_vl_dir(path: Path, *, seed: int = 0) -> Path:
    """Write a tiny random Qwen2-VL (patch ViT with 2x2 merger, M-RoPE text model) and its processor."""
    import torch
    from tokenizers import AddedToken
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(image_token_attribute=False)  # Qwen2VLProcessor uses <|image_pad|>
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS]}
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIALS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={"depth": 1, "embed_dim": 64, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    return path
