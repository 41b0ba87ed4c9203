"""Candidate labels: parse them from a question ("Is this a cat or a dog?") or from a comma list."""

from __future__ import annotations

import re

from backends.base import MAX_LABELS

_LEADS = re.compile(
    r"^(?:is|are|was|were|does|do|which(?: one)?|what)\b.*?\b(?:this|these|it|they|the \w+|shown|pictured)\s+"
    r"(?:(?:a|an|the|some)\s+)?",
    re.IGNORECASE,
)
_OPTION_SPLIT = re.compile(r"\s*(?:,|;|/|\bor\b)\s*", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:a|an|the|some)\s+", re.IGNORECASE)
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
    options = [o for o in options if o and len(o.split()) <= 6]
    options = dedupe(options)
    return options if len(options) >= 2 else []
