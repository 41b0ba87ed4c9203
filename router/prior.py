"""The per-category prior every learned router corrects, and what it leans back on for unfamiliar input.

The paper's finding, as numbers: how often each backend (and each backend *kind*, vlm or vlm+llm) is
right per task category and per answer form. The answer form is read off the question alone, so it is
as robust as the keyword category: a yes/no question, a question that lists its options (or comes with
candidate labels), or an open question. It matters as much as the category: a plain classifier cannot
say "yes", so it loses every yes/no question whatever the category.

Estimates are smoothed hierarchically with Beta pseudo-counts, each level shrunk toward the one above:
backend overall <- (backend, answer form) <- (backend, category, form): the form first, because it
separates the backends far more than the keyword category does (a classifier is never right on yes/no,
and about as good as a language model when the options are listed), so a sparse (category, form) cell
borrows from the same form in other categories, not from other forms of its category. (Priors saved
before this order was chosen, whose JSON has no ``order``, keep category first.) A backend with no rows at all takes
the pooled estimate of its kind, and a kind with no rows the paper's rule (recognition -> vlm). So the
prior exists for any preset, and with no pairs at all it says only what the category rule says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backends.labels import labels_from_question
from router.categories import is_recognition

ANSWER_FORMS: tuple[str, ...] = ("yesno", "choice", "open")
_YESNO_LEAD = re.compile(
    r"^(is|are|was|were|do|does|did|can|could|has|have|had|will|would|should|shall|may|might|must)\b",
    re.IGNORECASE,
)
#: Pseudo-count of each smoothing level (how many rows a cell needs before it outweighs its parent).
DEFAULT_STRENGTH = 4.0
#: Accuracies the paper's rule implies when nothing was measured: the rule's pick a little above 1/2.
RULE_PRIOR = (0.55, 0.45)


def answer_form(question: str, labels: Sequence[str] | None = None) -> str:
    """``choice`` (labels given or options listed), ``yesno`` (a polar question) or ``open``."""
    if labels or labels_from_question(question or ""):
        return "choice"
    return "yesno" if _YESNO_LEAD.match((question or "").strip()) else "open"


def _cell_key(*parts: str | None) -> str:
    return "|".join(p or "" for p in parts)


@dataclass
class CategoryPrior:
    """Smoothed P(correct) per (backend, category, answer form), from (hits, count) cells."""

    #: "backend|category|form" (category or form may be empty for a coarser level) -> [hits, count].
    cells: dict[str, list[float]] = field(default_factory=dict)
    #: backend name -> kind, for backends a prior must also serve by their kind.
    kinds: dict[str, str] = field(default_factory=dict)
    strength: float = DEFAULT_STRENGTH
    #: Smoothing chain: "form" (overall <- form <- category x form) or "category" (overall <- category <- ...).
    order: str = "form"

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        correct: np.ndarray,
        backends: Sequence[str],
        kinds: Sequence[str],
        categories: Sequence[str | None],
        forms: Sequence[str | None],
        *,
        weights: np.ndarray | None = None,
        strength: float = DEFAULT_STRENGTH,
    ) -> CategoryPrior:
        """From a (queries, backends) correctness matrix (NaN where a backend was not judged)."""
        correct = np.asarray(correct, dtype=np.float64)
        n_rows = correct.shape[0]
        w = np.ones(n_rows) if weights is None else np.asarray(weights, dtype=np.float64)
        cats = np.array([c or "" for c in categories], dtype=object)
        frms = np.array([f or "" for f in forms], dtype=object)
        # Vectorised over rows (a benchmark holds millions): integer codes per (category) and (category, form).
        cat_names, cat_codes = np.unique(cats.astype(str), return_inverse=True)
        form_names, form_codes = np.unique(frms.astype(str), return_inverse=True)
        pair_names, pair_codes = np.unique(np.char.add(np.char.add(cats.astype(str), "|"), frms.astype(str)), return_inverse=True)
        cells: dict[str, list[float]] = {}

        def add(key: str, hits: float, count: float) -> None:
            cell = cells.setdefault(key, [0.0, 0.0])
            cell[0] += float(hits)
            cell[1] += float(count)

        for j, (name, kind) in enumerate(zip(backends, kinds, strict=True)):
            y = correct[:, j]
            seen = np.isfinite(y)
            hit_w = np.where(seen, np.nan_to_num(y) * w, 0.0)
            count_w = np.where(seen, w, 0.0)
            cat_hits = np.bincount(cat_codes, hit_w, len(cat_names))
            cat_counts = np.bincount(cat_codes, count_w, len(cat_names))
            form_hits = np.bincount(form_codes, hit_w, len(form_names))
            form_counts = np.bincount(form_codes, count_w, len(form_names))
            pair_hits = np.bincount(pair_codes, hit_w, len(pair_names))
            pair_counts = np.bincount(pair_codes, count_w, len(pair_names))
            for owner in (name, "kind:" + kind):
                add(_cell_key(owner), hit_w.sum(), count_w.sum())
                for c, name_c in enumerate(cat_names):
                    if cat_counts[c] > 0:
                        add(_cell_key(owner, str(name_c)), cat_hits[c], cat_counts[c])
                for c, name_f in enumerate(form_names):
                    if form_counts[c] > 0:
                        add(_cell_key(owner, None, str(name_f)), form_hits[c], form_counts[c])
                for c, name_p in enumerate(pair_names):
                    if pair_counts[c] > 0:
                        add(_cell_key(owner, *str(name_p).split("|", 1)), pair_hits[c], pair_counts[c])
        return cls(cells=cells, kinds=dict(zip(backends, kinds, strict=True)), strength=strength)

    # ------------------------------------------------------------------ reading
    def _shrunk(self, owner: str, category: str | None, form: str | None, base: float) -> float:
        m = self.strength
        value = base
        middle = _cell_key(owner, None, form) if self.order == "form" else _cell_key(owner, category)
        for key in (_cell_key(owner), middle, _cell_key(owner, category, form)):
            hits, count = self.cells.get(key, (0.0, 0.0))
            value = (hits + m * value) / (count + m)
        return value

    def probability(self, backend: str, kind: str, category: str | None, form: str | None) -> float:
        """P(correct) of one backend: its own cells, shrunk toward its kind's, shrunk toward the rule."""
        rule = RULE_PRIOR[0] if (kind == "vlm") == is_recognition(category) else RULE_PRIOR[1]
        by_kind = self._shrunk("kind:" + kind, category, form, rule)
        return self._shrunk(backend, category, form, by_kind)

    def vector(self, backends: Sequence[Any], category: str | None, form: str | None) -> np.ndarray:
        """P(correct) for ``backends`` (objects with ``name`` and ``kind``) in their order."""
        return np.array([self.probability(b.name, b.kind, category, form) for b in backends], dtype=np.float64)

    def matrix(self, backends: Sequence[Any], categories: Sequence[str | None], forms: Sequence[str | None]) -> np.ndarray:
        """(queries, backends) prior probabilities; cells are cached per (category, form)."""
        cache: dict[tuple[str | None, str | None], np.ndarray] = {}
        rows = []
        for cat, form in zip(categories, forms, strict=True):
            key = (cat, form)
            if key not in cache:
                cache[key] = self.vector(backends, cat, form)
            rows.append(cache[key])
        return np.vstack(rows) if rows else np.zeros((0, len(backends)))

    def support(self, backend: str, category: str | None, form: str | None) -> float:
        """How many (weighted) rows stand behind the finest cell of this backend."""
        return float(self.cells.get(_cell_key(backend, category, form), (0.0, 0.0))[1])

    @property
    def measured(self) -> bool:
        """True when any pair row stands behind it (else it only restates the rule)."""
        return any(count > 0 for count in (c[1] for c in self.cells.values()))

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {
            "cells": {k: [float(v[0]), float(v[1])] for k, v in sorted(self.cells.items())},
            "kinds": dict(self.kinds),
            "strength": self.strength,
            "order": self.order,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> CategoryPrior:
        data = dict(data or {})
        cells = {str(k): [float(v[0]), float(v[1])] for k, v in dict(data.get("cells", {})).items()}
        return cls(cells=cells, kinds={str(k): str(v) for k, v in dict(data.get("kinds", {})).items()},
                   strength=float(data.get("strength", DEFAULT_STRENGTH)), order=str(data.get("order", "category")))


def logit(p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(q / (1 - q))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


__all__ = ["ANSWER_FORMS", "CategoryPrior", "answer_form", "logit", "sigmoid"]
