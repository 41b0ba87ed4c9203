"""Tiny models that show what the real hub checkpoints do and random tiny models cannot (issue 16).

Each is saved in the hub's format and loaded through the product's own code paths:

- :func:`build_bigram_llava_dir` and :func:`build_bigram_gemma_dir`: a LLaVA and a Gemma 3 whose language
  model is a hand-set *bigram* model (every layer's output projections are zero, so the next-token
  distribution depends only on the current token) over a multi-token byte-level BPE tokenizer. The
  answer distribution is :data:`BIGRAM_ANSWERS`: "dog" 0.5, "hot air balloon" 0.3, "hot dog" 0.2, and
  "hot" alone almost never (the answer goes on after it). A mean per token prefers the long label and
  the prefix label there; log P(label + end of answer) does not.
- :func:`build_hub_shaped_smolvlm_dir`: an Idefics3 (the model type SmolVLM-256M ships as) whose image
  processor is shaped like the hub's (``size.longest_edge`` four times ``max_image_size``, splitting on).
- :func:`make_hub_shaped_qwen2_vl_dir`: a copy of the tiny Qwen2-VL with its image processor in a hub-style
  ``preprocessor_config.json`` that carries ``min_pixels`` / ``max_pixels``.
- :func:`build_tiny_siglip_dir`: a tiny open_clip CLIP with a ``logit_bias`` (``init_logit_bias``), as
  SigLIP models have.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.tiny_models import TINY_CHAT_TEMPLATE, TINY_OPEN_CLIP_CFG, build_tiny_tokenizer

#: Next-word probabilities of the bigram models: after the prompt (any token that is not part of a
#: label), after "hot", after "air", ...; "END" is the model's end-of-answer token.
BIGRAM_ANSWERS: dict[str, dict[str, float]] = {
    "PROMPT": {"dog": 0.5, "hot": 0.5},
    "hot": {"air": 0.6, "dog": 0.4},
    "air": {"balloon": 1.0},
    "balloon": {"END": 1.0},
    "dog": {"END": 1.0},
}
#: P(label as the whole answer) under :data:`BIGRAM_ANSWERS` ("hot" alone: only the e^-30 floor).
BIGRAM_LABEL_PROBS: dict[str, float] = {"dog": 0.5, "hot air balloon": 0.3, "hot dog": 0.2, "hot": 0.0}
#: Log-probability of every next token the table does not name.
_FLOOR = -30.0
#: BPE merges (on top of the 256 byte symbols) that make " dog", " hot", " air" single tokens and split
#: " balloon" into " ball" + "oon", so a label can be several tokens per word, as with a real tokenizer.
_MERGES: tuple[tuple[str, str], ...] = (
    ("Ġ", "d"), ("Ġd", "o"), ("Ġdo", "g"),
    ("Ġ", "h"), ("Ġh", "o"), ("Ġho", "t"),
    ("Ġ", "a"), ("Ġa", "i"), ("Ġai", "r"),
    ("Ġ", "b"), ("Ġb", "a"), ("Ġba", "l"), ("Ġbal", "l"),
    ("o", "o"), ("oo", "n"),
    ("Ċ", "Ċ"),  # "\n\n" one token, as in Gemma's tokenizer
)
_WORD_TOKENS: dict[str, tuple[str, ...]] = {
    "dog": ("Ġdog",), "hot": ("Ġhot",), "air": ("Ġair",), "balloon": ("Ġball", "oon"),
}


def build_bpe_tokenizer(*, specials: tuple[str, ...], image_token: str | None = None) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` (GPT-2 style) with :data:`_MERGES`; ``specials`` are
    ``(unk, bos, eos, pad)`` plus any extra special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*specials, *alphabet, *(a + b for a, b in _MERGES)]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(_MERGES), unk_token=specials[0]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    unk, bos, eos, pad = specials[:4]
    extra = {"extra_special_tokens": {"image_token": image_token}} if image_token else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=unk, bos_token=bos, eos_token=eos, pad_token=pad, **extra
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(specials[4:])})
    return tokenizer


def bigram_logits(tokenizer: Any, end_token_id: int, vocab_size: int) -> Any:
    """The (vocab, vocab) table of next-token logits: row ``t`` is log P(next | current token ``t``)."""
    import torch

    ids = {word: [tokenizer.convert_tokens_to_ids(t) for t in tokens] for word, tokens in _WORD_TOKENS.items()}
    used = [i for word_ids in ids.values() for i in word_ids]
    if len(set(used)) != len(used) or tokenizer.unk_token_id in used:
        raise ValueError(f"label tokens must be distinct vocabulary entries: {ids}")

    def row(nexts: dict[str, float]) -> torch.Tensor:
        values = torch.full((vocab_size,), _FLOOR)
        for word, prob in nexts.items():
            values[end_token_id if word == "END" else ids[word][0]] = float(torch.tensor(prob).log())
        return values

    table = row(BIGRAM_ANSWERS["PROMPT"]).repeat(vocab_size, 1)
    for word, word_ids in ids.items():
        for current, following in zip(word_ids, word_ids[1:], strict=False):  # inside a word: certain
            table[current] = _FLOOR
            table[current, following] = 0.0
        table[word_ids[-1]] = row(BIGRAM_ANSWERS[word])
    return table


def set_bigram_weights(embed: Any, lm_head: Any, table: Any) -> None:
    """Embeddings with orthonormal rows and an ``lm_head`` that maps RMSNorm(embedding of t) to ``table[t]``.

    RMSNorm of a unit vector e is sqrt(H) e (any scale before it cancels, e.g. Gemma's embedding scale),
    so ``lm_head = table^T E / sqrt(H)`` gives ``lm_head(sqrt(H) E[t]) = table[t]``."""
    import torch

    vocab, hidden = embed.weight.shape
    if hidden < vocab:
        raise ValueError(f"hidden size {hidden} must be at least the vocabulary size {vocab}")
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=generator))
    rows = q[:vocab]  # orthonormal rows
    with torch.no_grad():
        embed.weight.copy_(rows)
        lm_head.weight.copy_(table.T @ rows / hidden**0.5)


def _silence_layers(layers: Any) -> None:
    """Zero every layer's attention output and MLP down projection: each layer adds nothing."""
    import torch

    with torch.no_grad():
        for layer in layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()


def build_bigram_llava_dir(path: Path) -> Path:
    """A LLaVA (tiny CLIP tower) whose Llama is the :data:`BIGRAM_ANSWERS` bigram over a BPE tokenizer;
    its end-of-answer token is ``</s>``. Saved with ``save_pretrained`` with a LLaVA-style processor."""
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
    tokenizer = build_bpe_tokenizer(specials=("<unk>", "<s>", "</s>", "<pad>", "<image>"), image_token="<image>")
    vocab, hidden = len(tokenizer), 320
    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16, vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    _silence_layers(model.model.language_model.layers)
    set_bigram_weights(
        model.model.language_model.embed_tokens, model.lm_head, bigram_logits(tokenizer, tokenizer.eos_token_id, vocab)
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=TINY_CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    return path


def build_bigram_gemma_dir(path: Path) -> Path:
    """A Gemma 3 text model (untied head) that is the :data:`BIGRAM_ANSWERS` bigram, ending an answer
    with a blank line as the offline few-shot prompt does; loaded by ``OfflineLLMBackend(checkpoint_dir=...)``."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_bpe_tokenizer(specials=("<unk>", "<bos>", "<eos>", "<pad>"))
    vocab, hidden = len(tokenizer), 320
    config = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, max_position_embeddings=4096,
        sliding_window=128, layer_types=["full_attention"], tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    _silence_layers(model.model.layers)
    with torch.no_grad():
        model.model.norm.weight.zero_()  # Gemma's RMSNorm scales by (1 + weight)
    blank_line = tokenizer.convert_tokens_to_ids("ĊĊ")  # byte-level "\n\n"
    set_bigram_weights(model.model.embed_tokens, model.lm_head, bigram_logits(tokenizer, blank_line, vocab))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


SMOLVLM_SPECIALS: tuple[str, ...] = (
    "<|im_start|>", "<global-img>", *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
)
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
#: The tiny SmolVLM's tile side; the hub's is 512 with a 2048 long side, the same 1:4 ratio.
SMOLVLM_TILE = 32


def build_hub_shaped_smolvlm_dir(path: Path, *, seed: int = 0) -> Path:
    """A tiny Idefics3 (SigLIP-style tower, pixel-shuffle connector, Llama) with the hub's processor shape:
    ``size = {longest_edge: 4 x tile}``, ``max_image_size = {longest_edge: tile}``, splitting on."""
    import torch
    from tokenizers import AddedToken
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(image_token_attribute=False)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SMOLVLM_SPECIALS]}
    )
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 4 * SMOLVLM_TILE}, max_image_size={"longest_edge": SMOLVLM_TILE}, do_image_splitting=True
    )
    image_seq_len = (SMOLVLM_TILE // 8) ** 2 // 4  # patch 8, scale factor 2
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )  # adds <image>, <fake_token_around_image> and <end_of_utterance>
    config = Idefics3Config(
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": SMOLVLM_TILE, "patch_size": 8},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "max_position_embeddings": 2048, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


#: The pixel bounds in Qwen/Qwen2-VL-2B-Instruct's preprocessor_config.json.
QWEN_HUB_MIN_PIXELS = 56 * 56
QWEN_HUB_MAX_PIXELS = 28 * 28 * 16384


def make_hub_shaped_qwen2_vl_dir(source: Path, target: Path) -> Path:
    """Copy a tiny Qwen2-VL folder with its image processor moved into a hub-style
    ``preprocessor_config.json``: ``min_pixels`` / ``max_pixels`` keys and no ``size``."""
    shutil.copytree(source, target)
    combined = json.loads((target / "processor_config.json").read_text())
    image = combined.pop("image_processor")
    (target / "processor_config.json").write_text(json.dumps(combined, indent=2))
    image.pop("size", None)
    image.update(min_pixels=QWEN_HUB_MIN_PIXELS, max_pixels=QWEN_HUB_MAX_PIXELS, processor_class="Qwen2VLProcessor")
    (target / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    return target


#: SigLIP's initial bias (open_clip's ViT-B-16-SigLIP config has ``"init_logit_bias": -10``).
SIGLIP_INIT_LOGIT_BIAS = -10.0


def build_tiny_siglip_dir(path: Path, *, seed: int = 0) -> Path:
    """The tiny open_clip CLIP of ``tests.tiny_models`` with a ``logit_bias`` parameter, in ``local-dir:`` format."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    cfg = {**TINY_OPEN_CLIP_CFG, "init_logit_bias": SIGLIP_INIT_LOGIT_BIAS}
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    preprocess = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path
