"""Blind judging: anonymous panel labels in a per-query shuffled order, and the check that flags an answer
naming its own model (as FastChat marks a vote non-anonymous when a model names itself).

Each backend's identity words come from its name, family and model id (``gemma3-270m+tags`` ->
"gemma", ``efficientnet-lite0`` -> "efficientnet", an open_clip family -> "clip", "openclip"): the
alphabetic part of every token, without version digits, left out when it is a generic word ("vision",
"model", "tags", ...). An answer that contains one of its own backend's words (case-insensitive, at a
word start) names itself, unless the answer is one of the query's candidate labels (a classifier
choosing the label "clip" does not name itself).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterable, Mapping, Sequence

from backends.base import BackendInfo

#: Tokens of names and model ids that say nothing about which model it is.
GENERIC_WORDS = frozenset(["offline", "vision", "llm", "vlm", "model", "models", "hf", "remote", "open", "tags", "tag", "base", "large", "small", "tiny", "mini", "micro", "nano", "lite", "instruct", "chat", "it", "pytorch", "gguf", "onnx", "int", "fp", "bf", "hub", "local", "server", "api", "imagenet", "coco", "laion", "and", "the", "with", "for", "plus", "zero", "shot", "gpu", "cpu", "vit", "patch", "quant", "quantized"])
#: Words a family adds beyond its model ids.
FAMILY_WORDS: dict[str, tuple[str, ...]] = {"open_clip": ("clip", "openclip")}
_MIN_WORD = 3


def panel_label(index: int) -> str:
    """"Model A", "Model B", ... "Model Z", "Model AA", ..."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = string.ascii_uppercase[rest] + letters
    return f"Model {letters}"


def shuffled(names: Sequence[str], rng: random.Random | None = None) -> list[str]:
    """The names in a new random order (one per query)."""
    order = list(names)
    (rng or random.SystemRandom()).shuffle(order)
    return order


def identity_words(name: str, family: str = "", model_id: str = "") -> list[str]:
    """The words by which a backend could name itself (see the module docstring), sorted."""
    words = set(FAMILY_WORDS.get(family, ()))
    for text in (name, model_id):
        for token in re.split(r"[^a-z0-9]+", (text or "").lower()):
            word = re.sub(r"\d.*$", "", token)  # gemma3 -> gemma, qwen2 -> qwen, b32 -> b
            if len(word) >= _MIN_WORD and word.isalpha() and word not in GENERIC_WORDS:
                words.add(word)
    return sorted(words)


def names_itself(answer: str | None, words: Iterable[str], labels: Sequence[str] = ()) -> str | None:
    """The first identity word the answer contains, or None (always None for an answer that is a label)."""
    text = (answer or "").strip()
    if not text or text.casefold() in {label.casefold() for label in labels}:
        return None
    for word in words:
        if re.search(rf"(?<![a-z0-9]){re.escape(word)}", text, flags=re.IGNORECASE):
            return word
    return None


def self_identification(answers: Mapping[str, str | None], infos: Mapping[str, BackendInfo],
                        labels: Sequence[str] = (), aliases: Mapping[str, str] | None = None) -> str | None:
    """Why a blind judgment of these answers is not anonymous, or None: "Model B's answer names its own
    model ('gemma')". ``aliases`` maps backend -> the panel label the judge saw."""
    reasons = []
    for backend, text in answers.items():
        info = infos.get(backend)
        if info is None:
            continue
        word = names_itself(text, identity_words(info.name, info.family, info.model_id), labels)
        if word:
            shown = (aliases or {}).get(backend, backend)
            reasons.append(f"{shown}'s answer names its own model ('{word}')")
    return "; ".join(reasons) or None
