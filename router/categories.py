"""Task categories and a keyword classifier for questions whose category is unknown.

The paper's rule routes *recognition* tasks (object, scene, fine-grained, attribute) to a plain vision
model and everything else (counting, OCR, spatial, knowledge, reasoning, open-ended) to a vision model
with a language model. The learned routers predict the category with a head; this classifier is what
the category rule falls back on, and what labels rows that arrive without a category.
"""

from __future__ import annotations

import re

CATEGORIES: tuple[str, ...] = (
    "object",
    "scene",
    "fine_grained",
    "attribute",
    "counting",
    "ocr",
    "spatial",
    "knowledge",
    "reasoning",
    "open",
)
RECOGNITION: frozenset[str] = frozenset({"object", "scene", "fine_grained", "attribute"})

# Checked in this order: the first matching category wins, so the more specific patterns come first
# (e.g. "how many" before the generic "what is").
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("counting", (r"\bhow many\b", r"\bcount\b", r"\bnumber of\b", r"\bhow much\b")),
    (
        "ocr",
        (
            r"\bwhat does (the|this|that) .*\b(say|read)\b",
            r"\b(text|written|writing|word|words|letters?|sign say|label say|title|brand|read)\b",
        ),
    ),
    (
        "reasoning",
        (
            r"^why\b",
            r"\bwhy\b",
            r"\bwhat would happen\b",
            r"\bwhat will happen\b",
            r"\bexplain\b",
            r"\bpurpose\b",
            r"\bif\b.*\bwould\b",
            r"\bshould\b",
            r"\bis it safe\b",
            r"\bwhat is (he|she|the person|they) (doing|about to)\b",
        ),
    ),
    (
        "spatial",
        (
            r"\b(left|right) of\b",
            r"\bon the (left|right)\b",
            r"\b(above|below|behind|beneath|under|underneath|next to|in front of|on top of|between)\b",
            r"^where is\b",
            r"\bwhere are\b",
            r"\bcloser\b",
            r"\bfarther\b",
        ),
    ),
    (
        "knowledge",
        (
            r"\bwho (invented|made|painted|built|wrote|designed)\b",
            r"\bwhat year\b",
            r"\bwhen was\b",
            r"\bcapital\b",
            r"\bhistory\b",
            r"\bfamous\b",
            r"\bwhich country\b",
            r"\bwhat is .* used for\b",
            r"\bnamed after\b",
        ),
    ),
    (
        "attribute",
        (
            r"\bwhat colou?r\b",
            r"\bcolou?r\b",
            r"\bwhat shape\b",
            r"\bshape\b",
            r"\bmade of\b",
            r"\bmaterial\b",
            r"\bhow big\b",
            r"\bwhat size\b",
            r"\btexture\b",
            r"\bis (it|the \w+) (red|blue|green|yellow|black|white|gray|grey|brown|orange|purple|round|square)\b",
        ),
    ),
    (
        "fine_grained",
        (
            r"\bwhat (kind|type|breed|species|model|make|variety|genus|brand) of\b",
            r"\bwhich (kind|type|breed|species|model|make|variety)\b",
            r"\bbreed\b",
            r"\bspecies\b",
        ),
    ),
    (
        "scene",
        (
            r"\bwhere (was|is) this (taken|photo|picture)\b",
            r"\bwhat (place|room|location|scene|setting|environment)\b",
            r"\bindoors?\b",
            r"\boutdoors?\b",
            r"\bwhat (season|weather|time of day)\b",
        ),
    ),
    (
        "object",
        (
            r"\bwhat is (this|that|it|in the (image|picture|photo))\b",
            r"\bwhat (object|animal|thing|item)\b",
            r"\bis (this|that|it) an? \w+",
            r"\bis there an?\b",
            r"\bare there (any )?\w+",
            r"\bdoes (the|this) (image|picture|photo) (contain|show)\b",
            r"\bwhat is shown\b",
            r"\bidentify\b",
        ),
    ),
)
_COMPILED: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...] = tuple(
    (category, tuple(re.compile(p) for p in patterns)) for category, patterns in _RULES
)


_SYNONYMS: dict[str, str] = {
    "finegrained": "fine_grained",
    "fine_grain": "fine_grained",
    "color": "attribute",
    "colour": "attribute",
    "shape": "attribute",
    "count": "counting",
    "text": "ocr",
    "location": "spatial",
    "recognition": "object",
}


def classify_question(question: str) -> str:
    """The task category of a question from keywords; ``"open"`` when nothing matches."""
    text = " ".join(str(question or "").lower().split())
    for category, patterns in _COMPILED:
        if any(p.search(text) for p in patterns):
            return category
    return "open"


def is_recognition(category: str | None) -> bool:
    return category in RECOGNITION


def normalise_category(category: object) -> str | None:
    """A known category name, or None for empty/unknown values (so they can be predicted instead)."""
    if category is None:
        return None
    text = str(category).strip().lower().replace("-", "_").replace(" ", "_")
    text = _SYNONYMS.get(text, text)
    return text if text in CATEGORIES else None


__all__ = ["CATEGORIES", "RECOGNITION", "classify_question", "is_recognition", "normalise_category"]
