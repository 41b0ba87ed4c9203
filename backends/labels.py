"""Candidate labels: parse them from a question ("Is this a cat or a dog?") or from a comma list, and turn a
language model's log-likelihoods of them into P(label) (shared by every generative family)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from backends.base import MAX_LABELS

_LEADS = re.compile(
    r"^(?:is|are|was|were|does|do|which(?: one)?|what)\b.*?\b(?:this|these|it|they|the \w+|shown|pictured)\s+"
    r"(?:(?:a|an|the|some)\s+)?",
    re.IGNORECASE,
)
_OPTION_SPLIT = re.compile(r"\s*(?:,|;|/|\bor\b)\s*", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:a|an|the|some)\s+", re.IGNORECASE)
_NOUN_THEN_ARTICLE = re.compile(r"^\w+\s+(?:a|an|some)\s+", re.IGNORECASE)
_MAX_LABEL_CHARS = 80


def clean_label(label: str) -> str:
    """Strip blanks, articles and trailing punctuation; collapse inner white space."""
    text = " ".join(str(label).split())
    text = _ARTICLE.sub("", text).strip(" .?!:;\"'")
    return text[:_MAX_LABEL_CHARS]


def dedupe(labels: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for label in labels:
        key = label.casefold()
        if label and key not in seen:
            seen.add(key)
            out.append(label)
    return out


def split_label_list(text: str | None, limit: int = MAX_LABELS) -> list[str]:
    """Labels typed by a person, comma (or newline / semicolon) separated; empty entries dropped."""
    if not text:
        return []
    parts = re.split(r"[,\n;]", text)
    return dedupe([clean_label(p) for p in parts])[:limit]


def labels_from_question(question: str) -> list[str]:
    """Options a question lists, or [] when it lists none.

    "Is this a cat or a dog?" -> ["cat", "dog"]; "Which is it: red, green or blue?" -> [red, green, blue].
    A yes/no question without " or " gives [].
    """
    text = " ".join(question.split()).strip()
    if not re.search(r"\bor\b", text, re.IGNORECASE):
        return []
    text = text.rstrip("?.! ")
    if ":" in text:
        text = text.rsplit(":", 1)[1]
    else:
        text = _LEADS.sub("", text, count=1)
    options = [clean_label(part) for part in _OPTION_SPLIT.split(text)]
    if options:
        # "Is this animal a cat or a dog?": the lead left "animal a cat"; the option is what follows the article.
        options[0] = _NOUN_THEN_ARTICLE.sub("", options[0], count=1)
    options = [o for o in options if o and len(o.split()) <= 6]
    options = dedupe(options)
    return options if len(options) >= 2 else []


# ----------------------------------------------------------------------------- scoring labels with a language model
def label_probabilities(labels: Sequence[str], log_likelihoods: Sequence[float]) -> list[tuple[str, float]]:
    """P(label) among the candidates, sorted best first.

    ``log_likelihoods`` are log P(label, then the end of the answer | prompt): the SUM over the label's
    tokens plus the model's end-of-answer token. Normalising them over the candidates (a softmax) gives
    each label's probability given that the answer is one of them. A mean per token would not: with a real
    BPE tokenizer the tokens after a word's first are near-certain, so long labels would win, and without
    the end token a label that is a prefix of the likely answer ("hot" for "hot dog") would. Non-finite
    scores get probability 0.
    """
    import numpy as np

    values = np.asarray(log_likelihoods, dtype=np.float64)
    if values.shape != (len(labels),):
        raise ValueError(f"{values.shape} scores for {len(labels)} labels")
    values = np.where(np.isfinite(values), values, -1e9)
    weights = np.exp(values - values.max())
    probs = weights / weights.sum()
    order = np.argsort(-probs, kind="stable")
    return [(labels[i], float(probs[i])) for i in order]


def continuation_log_likelihoods(
    step: Callable[[Any, Any], Any],
    prefix_cache: Any,
    first: Any,
    continuations: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 8,
) -> list[float]:
    """Sum of log-probabilities of each token-id continuation after a prefix that ran once.

    ``first`` holds the log-probabilities (vocab,) of the token after the prefix, ``prefix_cache`` its KV
    cache (a transformers ``Cache``); ``step(input_ids, cache)`` runs the model on ``input_ids`` (rows,
    width) after that cache and returns logits (rows, width, vocab). Continuations are right-padded, so
    every row's real tokens sit at the same positions right after the prefix and no attention mask is needed
    (a pad comes after all of its row's real tokens). Each batch continues a copy of the cache, so the image
    and prompt are encoded once per question, not once per label.
    """
    import copy

    import torch

    totals: list[float] = []
    for start in range(0, len(continuations), batch_size):
        chunk = [list(ids) for ids in continuations[start : start + batch_size]]
        width = max((len(ids) for ids in chunk), default=0)
        later = None
        if width > 1:
            inputs = torch.full((len(chunk), width - 1), pad_id, dtype=torch.long)
            for row, ids in enumerate(chunk):
                body = ids[:-1]  # the last token is only predicted, never fed
                inputs[row, : len(body)] = torch.tensor(body, dtype=torch.long)
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(chunk))
            later = torch.log_softmax(step(inputs, cache).float(), dim=-1).cpu()
        for row, ids in enumerate(chunk):
            if not ids:
                totals.append(float("-inf"))
                continue
            total = float(first[ids[0]])
            total += sum(float(later[row, j - 1, token]) for j, token in enumerate(ids) if j > 0)
            totals.append(total)
    return totals
