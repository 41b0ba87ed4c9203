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
    # Worked value (form first): backend level (6 + 4*kind)/(12 + 4), form (6 + 4*overall)/(6 + 4),
    # category x form (6 + 4*form)/(6 + 4).
    m = 4.0
    # The kind-level cells hold the same rows as the backend's here.
    k0 = (6 + m * RULE_PRIOR[0]) / (12 + m)
    k1 = (6 + m * k0) / (6 + m)
    k2 = (6 + m * k1) / (6 + m)
    b0 = (6 + m * k2) / (12 + m)
    b1 = (6 + m * b0) / (6 + m)
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


def test_a_sparse_cell_borrows_from_its_form_in_other_categories() -> None:
    # The classifier never answers a yes/no question (80 'object' rows) and is always right when the
    # options are listed; one 'scene/yesno' row alone must not pull scene's yes/no cell toward the
    # classifier's good choice-question record in 'scene'.
    rows = [[0, 1]] * 40 + [[1, 1]] * 40 + [[1, 0]] * 40 + [[0, 1]]
    cats = ["object"] * 80 + ["scene"] * 40 + ["scene"]
    forms = ["yesno"] * 40 + ["choice"] * 40 + ["choice"] * 40 + ["yesno"]
    prior = CategoryPrior.fit(np.array(rows, dtype=float), ["clf", "llm"], ["vlm", "vlm+llm"], cats, forms)
    assert prior.order == "form"
    assert prior.probability("clf", "vlm", "scene", "yesno") < 0.15
    category_first = CategoryPrior(cells=prior.cells, kinds=prior.kinds, order="category")
    assert category_first.probability("clf", "vlm", "scene", "yesno") > 0.5


def test_a_prior_saved_before_the_form_order_keeps_its_category_order() -> None:
    prior = CategoryPrior.fit(np.array([[1.0, 0.0]] * 8), ["clf", "llm"], ["vlm", "vlm+llm"], ["object"] * 8, ["open"] * 8)
    old = prior.to_json()
    old.pop("order")
    assert CategoryPrior.from_json(old).order == "category"
    assert CategoryPrior.from_json(prior.to_json()).order == "form"


def test_weights_count_rows_as_evidence() -> None:
    # Two sets: 30 rows where clf is right on open questions, 10 where it is wrong. Balanced weights
    # (each set the same total) put clf near 1/2, unweighted near 3/4.
    correct = np.array([[1.0, 0.0]] * 30 + [[0.0, 1.0]] * 10)
    args = (["clf", "llm"], ["vlm", "vlm+llm"], ["object"] * 40, ["open"] * 40)
    weights = np.array([40 / (2 * 30)] * 30 + [40 / (2 * 10)] * 10)
    plain = CategoryPrior.fit(correct, *args, strength=0.5).probability("clf", "vlm", "object", "open")
    balanced = CategoryPrior.fit(correct, *args, weights=weights, strength=0.5).probability("clf", "vlm", "object", "open")
    assert plain == pytest.approx(0.75, abs=0.03)
    assert balanced == pytest.approx(0.5, abs=0.03)
