"""Shared helpers for the router tests: synthetic pairs with a known routing, real small features.

Not a test module by itself (no tests here); named ``test_router_*`` so it sits with the router tests.
The routing is known by construction: recognition questions (shape, colour, object) are answered
correctly by ``clip`` (vlm) and mostly wrongly by ``llava`` (vlm+llm); counting and reasoning questions
the other way round; a ``slow`` backend is right half the time whatever the question.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from router.base import BackendChoice

BACKENDS = [
    BackendChoice("clip", "vlm", 0.05, "CLIP ViT-B/32 zero-shot: recognises objects, colours and shapes"),
    BackendChoice("llava", "vlm+llm", 1.0, "LLaVA: a vision encoder with a language model; counts and reasons"),
    BackendChoice("slow", "vlm+llm", 3.0, "A large slow model"),
]
OBJECTS = ["circle", "square", "triangle", "car", "dog", "cup", "ball", "tree", "cat", "bird", "chair", "boat"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 20)}
RECOGNITION_TEMPLATES = [
    ("attribute", "what color is the {o}?"),
    ("attribute", "what shape is the {o} in the picture?"),
    ("attribute", "what colour is this {o}?"),
    ("object", "what object is shown next to the {o}?"),
    ("object", "what is this {o}?"),
]
REASONING_TEMPLATES = [
    ("counting", "how many {o}s are there?"),
    ("counting", "count the {o}s in the image"),
    ("reasoning", "why is the {o} here?"),
    ("reasoning", "what would happen if the {o} fell over?"),
]


def make_pairs(
    n_images: int = 120,
    *,
    questions_per_image: int = 3,
    seed: int = 0,
    noise: float = 0.08,
    image_dir: Path | None = None,
    categories: bool = True,
) -> list[dict[str, Any]]:
    """Pair rows (dicts in the JSONL format). Images are written to ``image_dir`` when given."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n_images):
        colour = list(COLOURS)[i % len(COLOURS)]
        image_path = None
        sha = f"{i:064x}"
        if image_dir is not None:
            from PIL import Image

            image_dir.mkdir(parents=True, exist_ok=True)
            img = Image.new("RGB", (32, 32), tuple(int(c) for c in rng.integers(0, 60, 3)))
            img.paste(COLOURS[colour], (4 + i % 8, 4, 20 + i % 8, 20))
            image_path = image_dir / f"img{i}.png"
            img.save(image_path)
            sha = None
        for k in range(questions_per_image):
            recognition = rng.random() < 0.5
            templates = RECOGNITION_TEMPLATES if recognition else REASONING_TEMPLATES
            category, template = templates[int(rng.integers(len(templates)))]
            question = template.format(o=OBJECTS[int(rng.integers(len(OBJECTS)))])
            truth = {"clip": 1.0 if recognition else 0.0, "llava": 0.0 if recognition else 1.0, "slow": float(rng.random() < 0.5)}
            qid = f"q{i}-{k}"
            for backend, correct in truth.items():
                if backend != "slow" and rng.random() < noise:
                    correct = 1.0 - correct
                rows.append(
                    {
                        "query_id": qid,
                        "question": question,
                        "image": None if image_path is None else str(image_path),
                        "image_sha256": sha,
                        "category": category if categories else None,
                        "backend": backend,
                        "answer": "x",
                        "correct": correct,
                        "latency_s": {"clip": 0.05, "llava": 1.0, "slow": 3.0}[backend],
                        "source": "benchmark",
                    }
                )
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def colour_histogram(image: Any) -> np.ndarray:
    """A real (if simple) image feature: a 4x4x4 RGB histogram of a 16x16 thumbnail."""
    small = np.asarray(image.convert("RGB").resize((16, 16))).reshape(-1, 3) // 64
    codes = small[:, 0] * 16 + small[:, 1] * 4 + small[:, 2]
    return np.bincount(codes, minlength=64).astype(np.float32)


def tiny_lm(words: list[str] | None = None) -> tuple[Any, Any]:
    """A tiny randomly initialised causal LM (Gemma 3 architecture) with a word-level tokenizer.

    Built locally, nothing from the hub; for shapes and plumbing, not for meaningful scores.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_words = set(words or [])
    for template in [t for _, t in RECOGNITION_TEMPLATES + REASONING_TEMPLATES]:
        vocab_words.update(template.replace("{o}", " ").replace("?", " ? ").split())
    vocab_words.update(OBJECTS)
    vocab_words.update(o + "s" for o in OBJECTS)
    vocab_words.update(b.name for b in BACKENDS)
    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(vocab_words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    try:
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        config = Gemma3TextConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
            sliding_window=64, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = Gemma3ForCausalLM(config)
    except Exception:  # an older transformers without Gemma 3: Llama has the same interface
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
            pad_token_id=0, bos_token_id=2, eos_token_id=3,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = LlamaForCausalLM(config)
    model.eval()
    return model, tokenizer
