"""Label parsing from questions and answer scoring: examples plus properties (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.labels import labels_from_question, split_label_list
from backends.scoring import normalize_answer, score_answer


@pytest.mark.parametrize(
    ("question", "labels"),
    [
        ("Is this a cat or a dog?", ["cat", "dog"]),
        ("Is this animal a cat or a dog?", ["cat", "dog"]),  # the noun before the first article is no option
        ("Is this vehicle a motorcycle or a bicycle?", ["motorcycle", "bicycle"]),
        ("Is it red, green or blue?", ["red", "green", "blue"]),
        ("Which is it: a rocket, a plane, or a bird?", ["rocket", "plane", "bird"]),
        ("Is the shape a circle or a triangle?", ["circle", "triangle"]),
        ("Is there a cat?", []),
        ("What is this?", []),
        ("", []),
    ],
)
def test_labels_from_question(question: str, labels: list[str]) -> None:
    assert labels_from_question(question) == labels


def test_split_label_list_cleans_and_dedupes() -> None:
    assert split_label_list(" a Cat, dog,, cat ; the rocket\ncoffee ") == ["Cat", "dog", "rocket", "coffee"]
    assert split_label_list("") == []
    assert len(split_label_list(",".join(f"l{i}" for i in range(10_000)))) == 200


@pytest.mark.parametrize(
    ("prediction", "accepted", "score"),
    [
        ("Circle", "circle", 1.0),
        ("It is a circle.", "circle", 1.0),
        ("a circle", ["circle", "round"], 1.0),
        ("Yes, there is.", "yes", 1.0),
        ("No", "yes", 0.0),
        ("three", "3", 1.0),
        ("grey", "gray", 1.0),
        ("triangle", "circle", 0.0),
        ("", "circle", 0.0),
        ("The picture shows many things and also somewhere a circle near the edge", "circle", 0.0),
    ],
)
def test_score_answer(prediction: str, accepted, score: float) -> None:
    assert score_answer(prediction, accepted) == score


def test_label_synonyms_can_be_added() -> None:
    assert score_answer("feline", "cat", synonyms={"feline": "cat"}) == 1.0


@given(st.text(max_size=200))
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize_answer(text)
    assert normalize_answer(once) == once


@given(st.text(max_size=100), st.lists(st.text(max_size=30), max_size=5))
def test_score_is_binary(prediction: str, accepted: list[str]) -> None:
    assert score_answer(prediction, accepted) in (0.0, 1.0)


@given(st.text(min_size=1, max_size=40).filter(lambda s: normalize_answer(s)))
def test_an_answer_matches_itself(text: str) -> None:
    assert score_answer(text, text) == 1.0


@given(st.text(max_size=300))
def test_labels_from_question_never_fails(question: str) -> None:
    labels = labels_from_question(question)
    assert labels == [] or len(labels) >= 2
    assert all(label and len(label) <= 80 for label in labels)
