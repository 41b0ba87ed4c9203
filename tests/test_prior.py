"""The per-category prior: answer forms, hierarchical smoothing, the rule when nothing was measured."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from router.prior import RULE_PRIOR, CategoryPrior, answer_form


@dataclass(frozen=True)
class B:
    name: str
    kind: str


BACKENDS = [B("clf", "vlm"), B("llm", "vlm+llm")]


@pytest.mark.parametrize(
    ("question", "labels", "form"),
    [
        ("Is this a cat or a dog?", None, "choice"),
        ("What animal is this?", ["cat", "dog"], "choice"),
        ("Is there a spoon?", None, "yesno"),
        ("Does this animal have whiskers?", None, "yesno"),
        ("Can you see a car?", None, "yesno"),
        ("What color is the cup?", None, "open"),
        ("How many coins are there?", None, "open"),
        ("", None, "open"),
    ],
)
def test_answer_form(question: str, labels: list[str] | None, form: str) -> None:
    assert answer_form(question, labels) == form


def test_no_pairs_restates_the_rule() -> None:
    prior = CategoryPrior()
    assert not prior.measured
    recognition = prior.vector(BACKENDS, "object", "open")
    reasoning = prior.vector(BACKENDS, "reasoning", "open")
    assert recognition == pytest.approx(RULE_PRIOR)
    assert reasoning == pytest.approx(RULE_PRIOR[::-1])


def test_cells_shrink_toward_their_parents() -> None:
    # clf: right on every 'object/choice' row, wrong on every 'object/yesno' row; llm the reverse.
    correct = np.array([[1, 0]] * 6 + [[0, 1]] * 6, dtype=float)
    cats = ["object"] * 12
    forms = ["choice"] * 6 + ["yesno"] * 6
    prior = CategoryPrior.fit(correct, ["clf", "llm"], ["vlm", "vlm+llm"], cats, forms, strength=4.0)
    choice = prior.vector(BACKENDS, "object", "choice")
    yesno = prior.vector(BACKENDS, "object", "yesno")
    assert choice[0] > choice[1] and yesno[1] > yesno[0]
    # Worked value: backend level (6 + 4*kind)/(12 + 4), category the same, form (6 + 4*cat)/(6 + 4).
    m = 4.0
    # The kind-level cells hold the same rows as the backend's here.
    k0 = (6 + m * RULE_PRIOR[0]) / (12 + m)
    k1 = (6 + m * k0) / (12 + m)
    k2 = (6 + m * k1) / (6 + m)
    b0 = (6 + m * k2) / (12 + m)
    b1 = (6 + m * b0) / (12 + m)
    b2 = (6 + m * b1) / (6 + m)
    assert choice[0] == pytest.approx(b2)
    # A cell with no rows is its parent's value: an unseen form for a seen category.
    unseen = prior.vector(BACKENDS, "object", "open")
    assert 0.3 < unseen[0] < 0.7


def test_unmeasured_backend_takes_its_kinds_estimate() -> None:
    correct = np.array([[1.0, 0.0]] * 20)
    prior = CategoryPrior.fit(correct, ["clf", "llm"], ["vlm", "vlm+llm"], ["object"] * 20, ["open"] * 20)
    newcomer = prior.probability("other-clf", "vlm", "object", "open")
    assert newcomer == pytest.approx(prior.probability("kind:vlm", "vlm", "object", "open"), abs=0.1)
    assert newcomer > 0.8


def test_nan_cells_are_ignored_and_json_round_trips() -> None:
    correct = np.array([[1.0, np.nan], [0.0, 1.0]])
    prior = CategoryPrior.fit(correct, ["clf", "llm"], ["vlm", "vlm+llm"], ["object", "object"], ["open", "open"])
    assert prior.support("llm", "object", "open") == 1.0
    again = CategoryPrior.from_json(prior.to_json())
    assert np.allclose(again.matrix(BACKENDS, ["object", "ocr"], ["open", "yesno"]),
                       prior.matrix(BACKENDS, ["object", "ocr"], ["open", "yesno"]))
