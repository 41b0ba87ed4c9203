"""Correctness of a free-text answer against one or several accepted answers, in [0, 1].

Normalisation follows the VQA evaluation habit: case, punctuation, articles, number words and
yes/no synonyms are folded; an answer that contains the accepted answer as whole words within a
short reply ("It is a circle.") counts, a long reply that merely mentions it does not.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping

_NUMBER_WORDS = {
    "zero": "0", "none": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
}
_YES = {"yes", "yeah", "yep", "true", "correct", "affirmative", "y"}
_NO = {"no", "nope", "false", "incorrect", "negative", "n"}
_ARTICLES = {"a", "an", "the"}
#: Spelling variants folded to one form; a caller can add label synonyms of its own.
_BUILTIN_SYNONYMS = {"grey": "gray", "colour": "color", "kitty": "cat", "puppy": "dog", "automobile": "car"}
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
#: Extra words a reply may hold around the accepted answer and still count as that answer.
_CONTAINMENT_SLACK = 5


def normalize_answer(text: str, synonyms: Mapping[str, str] | None = None) -> str:
    """Fold case, punctuation, articles, number words and synonyms; collapse white space."""
    table = dict(_BUILTIN_SYNONYMS)
    if synonyms:
        table.update({k.casefold(): v.casefold() for k, v in synonyms.items()})
    words = _PUNCT.sub(" ", str(text).casefold()).split()
    out = []
    for word in words:
        if word in _ARTICLES:
            continue
        word = _NUMBER_WORDS.get(word, word)
        word = table.get(word, word)
        if word in _YES:
            word = "yes"
        elif word in _NO:
            word = "no"
        out.append(word)
    return " ".join(out)


def _contains_words(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def score_answer(
    prediction: str,
    accepted: str | Iterable[str],
    synonyms: Mapping[str, str] | None = None,
) -> float:
    """1.0 when the prediction matches any accepted answer after normalisation, else 0.0.

    Yes/no questions are judged by the first yes/no word of the reply; a reply holding both the
    accepted answer and a conflicting yes/no is wrong.
    """
    targets = [accepted] if isinstance(accepted, str) else list(accepted)
    predicted = normalize_answer(prediction, synonyms).split()
    if not predicted:
        return 0.0
    for target in targets:
        wanted = normalize_answer(target, synonyms).split()
        if not wanted:
            continue
        if predicted == wanted:
            return 1.0
        if wanted in (["yes"], ["no"]):
            polar = next((w for w in predicted if w in ("yes", "no")), None)
            if polar == wanted[0]:
                return 1.0
            continue
        if len(predicted) <= len(wanted) + _CONTAINMENT_SLACK and _contains_words(predicted, wanted):
            return 1.0
    return 0.0
