"""Labels from a chat model's reply: which label the text names, and a ranking from ``logprobs``.

Used by the remote family (:mod:`backends.remote`), whose servers return free text and, where they
support it, the log-probabilities of the first generated token's alternatives.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s-]", " ", text.casefold()).replace("_", " ").split())


def match_label(reply: str, labels: Sequence[str]) -> str | None:
    """The label a free-text reply names, or None when it names none or is ambiguous.

    1. The whole reply is a label (case, punctuation and blanks ignored): that label.
    2. Else the labels the reply mentions as whole words (a plural "s"/"es" allowed; a label inside a
       longer mentioned one, "car" in "red car", does not count): exactly one -> that label; several ->
       the one the reply starts with, else None ("a cat or a dog?", an echo of the question, names no
       answer).
    3. Else a close spelling of the reply's first line (difflib ratio >= 0.8), else None.
    """
    if not labels:
        return None
    said = _normalise(reply)
    if not said:
        return None
    normalised = [(label, _normalise(label)) for label in labels]
    for label, norm in normalised:
        if norm and norm == said:
            return label
    spans: list[tuple[int, int, str]] = []
    for label, norm in normalised:
        if not norm:
            continue
        pattern = r"(?<![\w-])" + re.escape(norm) + r"(?:e?s)?(?![\w-])"
        spans.extend((found.start(), found.end(), label) for found in re.finditer(pattern, said))
    mentioned = {
        label
        for start, end, label in spans
        if not any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in spans)
    }
    if len(mentioned) == 1:
        return mentioned.pop()
    if mentioned:
        at_start = [(end, label) for start, end, label in spans if start == 0 and label in mentioned]
        return max(at_start)[1] if at_start else None
    first_line = _normalise(reply.strip().splitlines()[0]) if reply.strip() else ""
    by_norm = {norm: label for label, norm in reversed(normalised) if norm}
    close = difflib.get_close_matches(first_line, list(by_norm), n=1, cutoff=0.8)
    return by_norm[close[0]] if close else None


def label_scores_from_logprobs(
    logprobs: Any, labels: Sequence[str], chosen: str | None = None
) -> list[tuple[str, float]] | None:
    """Rank labels by the probability of their first token at the first non-blank generated position.

    ``logprobs`` is a chat-completions ``choices[0].logprobs`` object. Each alternative token's
    probability goes to the labels it begins (shared equally when several labels begin with it); the
    scores are then renormalised over the labels. None when the server sent no usable logprobs or no
    alternative begins any label. ``chosen`` (the label the text named) wins ties.
    """
    if not isinstance(logprobs, Mapping) or not labels:
        return None
    content = logprobs.get("content")
    if not isinstance(content, list):
        return None
    position = next(
        (entry for entry in content if isinstance(entry, Mapping) and str(entry.get("token", "")).strip()),
        None,
    )
    if position is None:
        return None
    alternatives = position.get("top_logprobs") or []
    if not isinstance(alternatives, list) or not alternatives:
        alternatives = [position]
    keys = [label.casefold().strip() for label in labels]
    mass = [0.0] * len(labels)
    seen: set[str] = set()
    for alternative in alternatives:
        if not isinstance(alternative, Mapping):
            continue
        token = str(alternative.get("token", "")).strip().casefold()
        logprob = alternative.get("logprob")
        if not token or token in seen or not isinstance(logprob, (int, float)) or math.isnan(logprob):
            continue
        seen.add(token)
        starts = [i for i, key in enumerate(keys) if key.startswith(token)]
        if not starts:
            continue
        share = math.exp(float(logprob)) / len(starts)
        for i in starts:
            mass[i] += share
    total = sum(mass)
    if total <= 0.0:
        return None
    scores = [(label, m / total) for label, m in zip(labels, mass, strict=True)]
    scores.sort(key=lambda item: (-item[1], item[0] != chosen))
    return scores
