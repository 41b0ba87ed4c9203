"""Baselines under the same interface as the learned routers.

* :class:`RandomRouter`: a uniformly random backend (probabilities are the training priors).
* :class:`BestSingleRouter`: always the backend with the best training accuracy (after the cost term).
* :class:`CategoryRuleRouter`: the paper's rule: recognition categories (object, scene, fine_grained,
  attribute) -> the best ``vlm`` backend, everything else -> the best ``vlm+llm`` backend. The category
  is the one the caller knows (``category=`` hint) or the keyword classifier's guess. It is also the
  app's last-resort router when no trained version loads, so it needs nothing but the backend list.
* :class:`HuggingGPTRouter`: prompts a small causal LM with the backends' descriptions and the question
  and picks the backend whose name gets the highest likelihood (HuggingGPT's model selection, scored
  rather than generated so the answer is always a valid name). Its probabilities are a softmax over
  those likelihoods: a preference, not a calibrated P(correct).
* :class:`OracleRouter`: knows the true correctness of every backend; evaluation only.

"Priors" (per-backend and per-category accuracy on the training rows) come from a trained router's
card, so the baselines are fitted on the same rows as the learned router.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from router.base import BackendChoice, ImageInput, Router, Scores
from router.categories import classify_question, is_recognition, normalise_category


@dataclass
class Priors:
    """Accuracy per backend and per (category, backend) on training rows; empty when unknown."""

    accuracy: dict[str, float] = field(default_factory=dict)
    accuracy_by_category: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "accuracy_by_category": self.accuracy_by_category}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Priors:
        data = data or {}
        return cls(
            {k: float(v) for k, v in dict(data.get("accuracy", {})).items()},
            {c: {k: float(v) for k, v in d.items()} for c, d in dict(data.get("accuracy_by_category", {})).items()},
        )

    def vector(self, names: Sequence[str], category: str | None = None, default: float = 0.5) -> np.ndarray:
        by_cat = self.accuracy_by_category.get(category or "", {})
        return np.array([by_cat.get(n, self.accuracy.get(n, default)) for n in names], dtype=np.float64)


class RandomRouter(Router):
    """A uniformly random choice; its own RNG (seeded per instance), so runs are reproducible."""

    kind = "random"

    def __init__(self, backends: Sequence[BackendChoice], *, priors: Priors | None = None, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(backends, **kwargs)
        self.priors = priors or Priors()
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def _score(self, image: ImageInput, question: str, **context: Any) -> Scores:
        return Scores(self.priors.vector(self.backend_names), None)

    def _choose(self, utilities: np.ndarray, scores: Scores) -> int:
        with self._lock:
            return int(self._rng.integers(len(self.backends)))

    def choose_batch(self, probabilities: np.ndarray, lambda_cost: float | None = None, categories: Sequence[str | None] | None = None) -> np.ndarray:
        with self._lock:
            return self._rng.integers(len(self.backends), size=np.asarray(probabilities).shape[0])


class BestSingleRouter(Router):
    """The backend with the best prior accuracy (minus lambda * cost), whatever the question."""

    kind = "best_single"

    def __init__(self, backends: Sequence[BackendChoice], *, priors: Priors, **kwargs: Any) -> None:
        super().__init__(backends, **kwargs)
        self.priors = priors

    def _score(self, image: ImageInput, question: str, **context: Any) -> Scores:
        return Scores(self.priors.vector(self.backend_names), None)


class CategoryRuleRouter(Router):
    """Recognition -> best vlm, otherwise -> best vlm+llm (the paper's rule)."""

    kind = "category_rule"

    def __init__(self, backends: Sequence[BackendChoice], *, priors: Priors | None = None, **kwargs: Any) -> None:
        super().__init__(backends, **kwargs)
        self.priors = priors or Priors()
        overall = self.priors.vector(self.backend_names)
        self._best: dict[str, int] = {}
        for kind in ("vlm", "vlm+llm"):
            members = [i for i, b in enumerate(self.backends) if b.kind == kind]
            if members:
                # Best prior accuracy; without priors, the first backend of that kind in the preset.
                self._best[kind] = max(members, key=lambda i: (overall[i], -i))
        self._overall_best = int(np.argmax(overall))

    @property
    def measured(self) -> bool:
        """Only priors from pairs make its probabilities numbers; without them it is the bare rule."""
        return bool(self.priors.accuracy)

    def _category(self, question: str, hint: Any) -> str:
        return normalise_category(hint) or classify_question(question)

    def _index_for(self, category: str | None) -> int:
        kind = "vlm" if is_recognition(category) else "vlm+llm"
        return self._best.get(kind, self._overall_best)

    def _score(self, image: ImageInput, question: str, **context: Any) -> Scores:
        category = self._category(question, context.get("category"))
        kind = "vlm" if is_recognition(category) else "vlm+llm"
        task = "recognition" if kind == "vlm" else "reasoning or knowledge"
        note = f"category rule: '{category}' is a {task} task, so the {kind} backend answers"
        return Scores(self.priors.vector(self.backend_names, category), category, note)

    def _choose(self, utilities: np.ndarray, scores: Scores) -> int:
        return self._index_for(scores.category)

    def choose_batch(self, probabilities: np.ndarray, lambda_cost: float | None = None, categories: Sequence[str | None] | None = None) -> np.ndarray:
        n = np.asarray(probabilities).shape[0]
        cats = list(categories) if categories is not None else [None] * n
        return np.array([self._index_for(c) for c in cats], dtype=np.int64)


class OracleRouter(Router):
    """Chooses with the true correctness of every backend (``truth[query_id][backend]``)."""

    kind = "oracle"
    evaluation_only = True

    def __init__(self, backends: Sequence[BackendChoice], *, truth: Mapping[str, Mapping[str, float]], **kwargs: Any) -> None:
        super().__init__(backends, **kwargs)
        self.truth = truth

    def _score(self, image: ImageInput, question: str, **context: Any) -> Scores:
        query_id = context.get("query_id")
        if query_id is None or query_id not in self.truth:
            raise KeyError(f"the oracle has no answers for query {query_id!r}")
        row = self.truth[query_id]
        return Scores(np.array([float(row.get(n, 0.0)) for n in self.backend_names]), None)


HUGGINGGPT_PREFIX = (
    "You choose which AI model should answer a question about an image.\n"
    "Available models:\n{models}\n"
)
HUGGINGGPT_QUESTION = "Question: {question}\nThe best model for this question is:"
_KIND_WORDS = {"vlm": "vision model", "vlm+llm": "vision model with a large language model"}


class HuggingGPTRouter(Router):
    """Picks the backend whose name the LM finds most likely after a prompt listing the backends.

    ``lm`` is ``(model, tokenizer)`` or a callable returning it (loaded on first use); see
    ``router.llm_router.resolve_lm`` for the Gemma 3 270M default.
    """

    kind = "hugginggpt"

    def __init__(
        self,
        backends: Sequence[BackendChoice],
        *,
        lm: tuple[Any, Any] | Callable[[], tuple[Any, Any]],
        prefix: str = HUGGINGGPT_PREFIX,
        question_template: str = HUGGINGGPT_QUESTION,
        **kwargs: Any,
    ) -> None:
        super().__init__(backends, **kwargs)
        self._lm = lm
        self._scorer: Any | None = None
        self._lock = threading.Lock()
        self.prefix = prefix
        self.question_template = question_template

    def _get_scorer(self) -> Any:
        from router.llm_router import PromptScorer

        if self._scorer is None:
            with self._lock:
                if self._scorer is None:
                    model, tokenizer = self._lm() if callable(self._lm) else self._lm
                    self._scorer = PromptScorer(model, tokenizer, self.build_prefix())
        return self._scorer

    def build_prefix(self) -> str:
        models = "\n".join(
            f"- {b.name} ({_KIND_WORDS.get(b.kind, b.kind)})" + (f": {b.description.strip()}" if b.description.strip() else "")
            for b in self.backends
        )
        return self.prefix.format(models=models)

    def build_prompt(self, question: str) -> str:
        return self.build_prefix() + self.question_template.format(question=" ".join(question.split()))

    def _score(self, image: ImageInput, question: str, **context: Any) -> Scores:
        text = self.question_template.format(question=" ".join(question.split()))
        logps = np.array(self._get_scorer().score(text, [" " + n for n in self.backend_names]))
        shifted = np.exp(logps - logps.max())
        return Scores(shifted / shifted.sum(), None)


def baselines_for(
    backends: Sequence[BackendChoice],
    priors: Priors,
    *,
    truth: Mapping[str, Mapping[str, float]] | None = None,
    lm: tuple[Any, Any] | Callable[[], tuple[Any, Any]] | None = None,
    seed: int = 0,
) -> dict[str, Router]:
    """Every baseline that can be built from what is given (HuggingGPT needs ``lm``, the oracle ``truth``)."""
    out: dict[str, Router] = {
        "random": RandomRouter(backends, priors=priors, seed=seed, version="baseline"),
        "best_single": BestSingleRouter(backends, priors=priors, version="baseline"),
        "category_rule": CategoryRuleRouter(backends, priors=priors, version="baseline"),
    }
    if lm is not None:
        out["hugginggpt"] = HuggingGPTRouter(backends, lm=lm, version="baseline")
    if truth is not None:
        out["oracle"] = OracleRouter(backends, truth=truth, version="baseline")
    return out


def expected_random_accuracy(correct: np.ndarray) -> float:
    """The exact expectation of a uniformly random choice (no sampling noise)."""
    return float(np.nanmean(np.nanmean(correct, axis=1))) if correct.size else math.nan


__all__ = [
    "BestSingleRouter",
    "CategoryRuleRouter",
    "HUGGINGGPT_PREFIX",
    "HUGGINGGPT_QUESTION",
    "HuggingGPTRouter",
    "OracleRouter",
    "Priors",
    "RandomRouter",
    "baselines_for",
    "expected_random_accuracy",
]
