"""The router contract: subclasses score backends, the base class turns scores into a decision.

Every router kind (learned, LLM, baselines, oracle) implements one method, ``_score``, returning the
probability that each backend answers the question correctly (plus, optionally, a predicted task
category). ``Router.decide`` owns what every kind must get right in the same way (RouteLLM's
``route()`` habit): the expected-utility choice ``p - lambda * normalised cost``, the confidence, the
timing, and the fallback when scoring fails or the confidence is below a floor. ``decide`` never raises
for a bad image or question; it returns a :class:`Decision` whose ``fallback`` says what happened.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from backends.base import KINDS

#: What ``decide`` accepts as an image: a PIL image, a path to an image file, or nothing.
ImageInput = Union["PIL.Image.Image", str, Path, None]  # noqa: F821 - PIL is imported lazily


class RouterError(ValueError):
    """A problem with a message fit to show a person as is (the CLI prints it without a traceback)."""


@dataclass(frozen=True)
class BackendChoice:
    """What the router needs to know about one backend: the app builds these from the preset."""

    name: str
    kind: str
    cost: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RouterError(f"backend {self.name!r} has kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not math.isfinite(float(self.cost)) or float(self.cost) < 0:
            raise RouterError(f"backend {self.name!r} has cost {self.cost!r}; expected a number >= 0")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackendChoice:
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            cost=float(data.get("cost", 0.0)),
            description=str(data.get("description", "")),
        )


@dataclass(frozen=True)
class Decision:
    """The router's answer for one question; ``to_json`` is what ``/route`` returns."""

    choice: str
    confidence: float
    probabilities: dict[str, float]
    category: str | None
    version: str
    latency_ms: float
    utilities: dict[str, float] = field(default_factory=dict)
    lambda_cost: float = 0.0
    router_kind: str = ""
    #: None when the learned choice stands; otherwise why another backend was chosen.
    fallback: str | None = None
    #: How the scores were reached when the card should say so ("unfamiliar question: ...").
    note: str | None = None
    #: False when no measured router or prior stands behind the probabilities (the bare category rule):
    #: then ``to_json`` gives ``confidence`` and ``probabilities`` as null instead of invented numbers.
    measured: bool = True
    #: The backend that keeps a question unless another's utility beats it by ``switch_margin``
    #: (:func:`choose_with_margin`); the card's re-rank applies the same rule.
    default_backend: str | None = None
    switch_margin: float = 0.0

    def to_json(self) -> dict[str, Any]:
        measured = self.measured
        margin = {"default_backend": self.default_backend, "switch_margin": self.switch_margin} if self.switch_margin > 0 else {}
        return margin | {
            "choice": self.choice,
            "confidence": round(float(self.confidence), 6) if measured else None,
            "probabilities": {k: round(float(v), 6) for k, v in self.probabilities.items()} if measured else None,
            "utilities": {k: round(float(v), 6) for k, v in self.utilities.items()} if measured else None,
            "category": self.category,
            "version": self.version,
            "router_kind": self.router_kind,
            "lambda_cost": self.lambda_cost,
            "latency_ms": round(float(self.latency_ms), 3),
            "fallback": self.fallback,
            "note": self.note,
        }


@dataclass(frozen=True)
class Scores:
    """What a subclass returns: P(correct) per backend (in ``Router.backends`` order) and a category."""

    probabilities: np.ndarray
    category: str | None = None
    #: A line for the card about how these scores were reached (e.g. leaning on the prior).
    note: str | None = None


def normalised_costs(costs: Sequence[float] | np.ndarray) -> np.ndarray:
    """Costs divided by the largest, so lambda is on the same 0..1 scale as a probability.

    All-zero costs stay zero (lambda then has no effect), which keeps presets without costs usable.
    """
    arr = np.asarray(costs, dtype=np.float64)
    top = float(arr.max()) if arr.size else 0.0
    return arr / top if top > 0 else np.zeros_like(arr)


def utility_matrix(probabilities: np.ndarray, costs: Sequence[float] | np.ndarray, lambda_cost: float) -> np.ndarray:
    """Expected utility ``p - lambda * normalised_cost`` for one row or a (queries, backends) matrix."""
    return np.asarray(probabilities, dtype=np.float64) - float(lambda_cost) * normalised_costs(costs)


def choose_by_utility(utilities: np.ndarray, costs: Sequence[float] | np.ndarray) -> np.ndarray | int:
    """Index of the highest utility; ties go to the cheaper backend, then to the earlier one.

    Works on one row (returns an int) or on a matrix (returns one index per row), so evaluation
    uses exactly the rule ``decide`` uses.
    """
    util = np.asarray(utilities, dtype=np.float64)
    cost = np.asarray(costs, dtype=np.float64)
    # A tiny cost-proportional tie-breaker: far below any real probability difference.
    adjusted = util - 1e-9 * normalised_costs(cost)
    if util.ndim == 1:
        return int(np.argmax(adjusted))
    return np.argmax(adjusted, axis=1)


def choose_with_margin(
    utilities: np.ndarray, costs: Sequence[float] | np.ndarray, default_index: int | None, margin: float
) -> np.ndarray | int:
    """:func:`choose_by_utility`, except that the ``default_index`` backend (the best single backend on
    the training rows) keeps the question unless another's utility beats its own by more than
    ``margin``. A small predicted edge is mostly noise on data unlike the training rows; paying for it
    with a switch is how a router ends up below the backend it was meant to improve on."""
    index = choose_by_utility(utilities, costs)
    if default_index is None or margin <= 0:
        return index
    util = np.asarray(utilities, dtype=np.float64)
    if util.ndim == 1:
        return int(default_index) if util[index] - util[default_index] <= margin else int(index)
    rows = np.arange(util.shape[0])
    keep = util[rows, index] - util[:, default_index] <= margin
    return np.where(keep, int(default_index), index)


class Router(ABC):
    """Base class of every router kind.

    ``backends`` is the list the router may choose from, in a fixed order. ``lambda_cost`` is the
    default trade-off between accuracy and cost (overridable per call). ``min_confidence``: when the
    chosen backend's calibrated probability is below it, ``fallback_backend`` is chosen instead (off
    by default). ``fallback_backend`` (default: the first backend) is also used when scoring fails.
    """

    kind: str = "base"
    #: True for routers that need the true answers (the oracle): never served by the app.
    evaluation_only: bool = False

    def __init__(
        self,
        backends: Sequence[BackendChoice],
        *,
        version: str = "unversioned",
        lambda_cost: float = 0.0,
        min_confidence: float | None = None,
        fallback_backend: str | None = None,
        switch_margin: float = 0.0,
    ) -> None:
        backends = list(backends)
        if not backends:
            raise RouterError("a router needs at least one backend to choose from")
        names = [b.name for b in backends]
        if len(set(names)) != len(names):
            raise RouterError(f"backend names must be unique; got {names}")
        if fallback_backend is not None and fallback_backend not in names:
            raise RouterError(f"fallback backend {fallback_backend!r} is not one of {names}")
        self.backends: list[BackendChoice] = backends
        self.version = version
        self.lambda_cost = float(lambda_cost)
        self.min_confidence = min_confidence
        self.fallback_backend = fallback_backend or names[0]
        #: Leave the fallback (best single) backend only for a utility edge above this (choose_with_margin).
        self.switch_margin = max(0.0, float(switch_margin))

    # ------------------------------------------------------------------ for subclasses
    @property
    def measured(self) -> bool:
        """True when measured data stands behind this router's probabilities (baselines may say no)."""
        return True

    @property
    def backend_names(self) -> list[str]:
        return [b.name for b in self.backends]

    @property
    def costs(self) -> np.ndarray:
        return np.array([b.cost for b in self.backends], dtype=np.float64)

    @abstractmethod
    def _score(self, image: ImageInput, question: str, **context: Any) -> Scores:
        """P(correct) for every backend, in ``self.backends`` order."""

    def score_batch(self, images: Sequence[ImageInput], questions: Sequence[str], **context: Any) -> tuple[np.ndarray, list[str | None]]:
        """P(correct) for many questions at once: (n, backends) and categories. Subclasses batch it."""
        rows, cats = [], []
        per_item = {k: v for k, v in context.items() if isinstance(v, (list, tuple))}
        shared = {k: v for k, v in context.items() if k not in per_item}
        for i, (image, question) in enumerate(zip(images, questions, strict=True)):
            extra = dict(shared, **{k: v[i] for k, v in per_item.items()})
            scores = self._score(image, question, **extra)
            rows.append(np.asarray(scores.probabilities, dtype=np.float64))
            cats.append(scores.category)
        return np.vstack(rows) if rows else np.zeros((0, len(self.backends))), cats

    def _choose(self, utilities: np.ndarray, scores: Scores) -> int:
        """Which backend to pick given the utilities; rule-based baselines override this."""
        return int(choose_with_margin(utilities, self.costs, self._default_index(), self.switch_margin))

    def _default_index(self) -> int | None:
        names = self.backend_names
        return names.index(self.fallback_backend) if self.fallback_backend in names else None

    def choose_batch(
        self,
        probabilities: np.ndarray,
        lambda_cost: float | None = None,
        categories: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """The index ``decide`` would pick for each row of a probability matrix (for evaluation).

        ``categories`` are the ones ``score_batch`` returned; rule-based kinds choose from them.
        """
        lam = self.lambda_cost if lambda_cost is None else float(lambda_cost)
        utilities = utility_matrix(probabilities, self.costs, lam)
        return np.asarray(choose_with_margin(utilities, self.costs, self._default_index(), self.switch_margin))

    def warm(self, image: ImageInput) -> None:  # noqa: B027 - an optional hook, not an abstract one
        """Compute and cache what a decision about ``image`` needs before the question comes (kinds with
        image features override it); never raises."""

    def clear_caches(self) -> None:  # noqa: B027 - an optional hook, not an abstract one
        """Forget cached features (kinds with caches override it; used for cold-latency timing)."""

    # ------------------------------------------------------------------ the shared decision
    def decide(
        self,
        image: ImageInput,
        question: str,
        *,
        lambda_cost: float | None = None,
        **context: Any,
    ) -> Decision:
        """Pick a backend for one question. Never raises for bad input; see ``Decision.fallback``.

        ``context`` carries optional hints some kinds use (``category`` for the category rule when the
        task category is known, ``query_id`` for the oracle); learned routers ignore them.
        """
        start = time.perf_counter()
        lam = self.lambda_cost if lambda_cost is None else float(lambda_cost)
        names = self.backend_names
        fallback: str | None = None
        try:
            scores = self._score(image, "" if question is None else str(question), **context)
            probs = np.asarray(scores.probabilities, dtype=np.float64).reshape(-1)
            if probs.shape != (len(names),) or not np.all(np.isfinite(probs)):
                raise RouterError(f"router returned {probs.shape} scores for {len(names)} backends or non-finite values")
            probs = np.clip(probs, 0.0, 1.0)
            utilities = utility_matrix(probs, self.costs, lam)
            index = self._choose(utilities, scores)
            category = scores.category
            note = scores.note
        except Exception as exc:  # a decision must come back whatever failed
            probs = np.full(len(names), np.nan)
            utilities = np.full(len(names), np.nan)
            index = names.index(self.fallback_backend)
            category = None
            note = None
            fallback = f"router {self.version} failed ({exc.__class__.__name__}: {str(exc)[:200]}); using {self.fallback_backend}"
        confidence = float(probs[index]) if np.isfinite(probs[index]) else 0.0
        if fallback is None and self.min_confidence is not None and confidence < self.min_confidence:
            fb_index = names.index(self.fallback_backend)
            if fb_index != index:
                fallback = (
                    f"confidence {confidence:.2f} in {names[index]} is below {self.min_confidence:.2f}; "
                    f"using {self.fallback_backend}"
                )
                index = fb_index
                confidence = float(probs[index])
        latency_ms = (time.perf_counter() - start) * 1000.0
        return Decision(
            choice=names[index],
            confidence=confidence,
            probabilities={n: float(p) for n, p in zip(names, probs, strict=True) if np.isfinite(p)},
            category=category,
            version=self.version,
            latency_ms=latency_ms,
            utilities={n: float(u) for n, u in zip(names, utilities, strict=True) if np.isfinite(u)},
            lambda_cost=lam,
            router_kind=self.kind,
            fallback=fallback,
            note=note,
            measured=self.measured,
            default_backend=self.fallback_backend if self.switch_margin > 0 else None,
            switch_margin=self.switch_margin,
        )

    def describe(self) -> dict[str, Any]:
        """A short card for the UI: kind, version and backends."""
        return {
            "kind": self.kind,
            "version": self.version,
            "backends": [b.to_json() for b in self.backends],
            "lambda_cost": self.lambda_cost,
        }




def choices_from_backends(backends: Sequence[Any]) -> list[BackendChoice]:
    """BackendChoice for each loaded backend object (anything with ``name``, ``kind``, ``cost``)."""
    out = []
    for b in backends:
        info = b.describe() if callable(getattr(b, "describe", None)) else None
        description = getattr(info, "model_id", "") or ""
        out.append(BackendChoice(str(b.name), str(b.kind), float(getattr(b, "cost", 0.0) or 0.0), str(description)))
    return out


def choices_from_preset(preset: Any) -> list[BackendChoice]:
    """BackendChoice for each ``[[backends]]`` entry of a preset (``backends.presets.Preset``).

    The kind comes from the entry's ``kind`` option, else from the registry's family table (no import).
    """
    from backends.registry import FAMILY_KINDS

    out = []
    for spec in preset.backends:
        options = dict(getattr(spec, "options", {}) or {})
        kind = options.get("kind") or FAMILY_KINDS[spec.family]
        description = str(options.get("description") or options.get("model_id") or options.get("model_name") or "")
        out.append(BackendChoice(spec.name, str(kind), float(options.get("cost", 0.0) or 0.0), description))
    return out


__all__ = [
    "BackendChoice",
    "Decision",
    "ImageInput",
    "KINDS",
    "Router",
    "RouterError",
    "Scores",
    "choices_from_backends",
    "choices_from_preset",
    "choose_by_utility",
    "normalised_costs",
    "utility_matrix",
]
