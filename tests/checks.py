"""Assertions several test files share."""

from __future__ import annotations

import pytest


def check_ranking(label_scores: list[tuple[str, float]] | None, labels: list[str]) -> None:
    """A label ranking: every label once, sorted best first, probabilities in [0, 1] summing to 1."""
    assert label_scores is not None
    assert sorted(label for label, _ in label_scores) == sorted(labels)
    scores = [score for _, score in label_scores]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-6)
    assert all(0.0 <= s <= 1.0 for s in scores)
