"""The active router the app serves: loaded in the background, hot-swapped after retraining, never missing.

Until the learned router is ready (or when its file is missing or corrupt) decisions come from the
paper's category rule, which needs no model, and the notice says so. The first start of a preset
that ships benchmark pairs (``[router] pairs`` in its TOML) trains a first version from them.

The service is given the few things it needs, not the app: the backends to choose from (and which
of them failed to load), factories for the text encoder and the image features, the store, the
versions folder, the shipped pairs and the default cost weight. So it is built and tested on its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.base import BackendChoice, Router
from router.baselines import CategoryRuleRouter
from router.features import ImageEmbedder, TextEncoder
from router.lifecycle import ensure_router, load_active_router, rollback, train_version
from router.report import render_report
from router.versions import VersionRegistry

log = logging.getLogger("routelens")

#: Returns the image embedder the router uses and its name, or None when there is none (or it failed to load).
ImageFeaturesProvider = Callable[[], "tuple[ImageEmbedder, str] | None"]
#: A retrain progress callback, ``progress(fraction, desc=...)`` (Gradio's ``gr.Progress`` fits).
Progress = Callable[..., Any]

LOADING_NOTICE = "the learned router is loading; the category rule decides meanwhile"


def _no_failures() -> Collection[str]:
    return ()


class RouterService:
    """The app's one active router; safe to share between threads and web users."""

    def __init__(
        self,
        *,
        backends: Sequence[BackendChoice] | Callable[[], Sequence[BackendChoice]],
        versions_dir: str | Path,
        store: Any | None = None,
        failed_backends: Callable[[], Collection[str]] = _no_failures,
        text_encoder: Callable[[], TextEncoder | None] | None = None,
        image_features: ImageFeaturesProvider | None = None,
        pairs: Sequence[str | Path] = (),
        default_lambda: float = 0.0,
    ) -> None:
        """``backends``: the choices (or a callable giving them, read on each use); ``failed_backends``: names
        of backends that failed to load, never picked; ``text_encoder``: builds (or fetches) the encoder the
        router embeds questions with (None: the card's own); ``image_features``: see
        :data:`ImageFeaturesProvider`; ``pairs``: the preset's shipped benchmark pairs files."""
        self._backends = backends
        self.versions_dir = Path(versions_dir)
        self.store = store
        self._failed_backends = failed_backends
        self._text_encoder = text_encoder
        self._image_features = image_features
        self.shipped_pairs = [Path(p) for p in pairs]
        self.default_lambda = float(default_lambda)
        self._lock = threading.RLock()
        self._fallback: Router = CategoryRuleRouter(self.choices(), version="category-rule")
        self._router: Router | None = None
        self.notice: str | None = LOADING_NOTICE
        self._warning: str | None = self.notice
        self._loaded = threading.Event()

    # ---------------------------------------------------------------- building blocks
    def choices(self) -> list[BackendChoice]:
        return list(self._backends() if callable(self._backends) else self._backends)

    def _models(self) -> tuple[dict[str, Any], str | None]:
        """Keyword arguments for loading or training a router, and the image embedder's name."""
        features = self._image_features() if self._image_features is not None else None
        embedder, name = features if features is not None else (None, None)
        kwargs = {
            "backends": self.choices(),
            "text_encoder": self._text_encoder() if self._text_encoder is not None else None,
            "image_embedder": embedder,
        }
        return kwargs, name

    # ---------------------------------------------------------------- loading
    def ensure_loaded(self) -> None:
        """Load (or on a first start, build) the active router; on any failure keep the category rule.

        Blocking: the app calls it from its background loader, and decisions meanwhile use the category rule.
        """
        try:
            kwargs, features_name = self._models()
            router, notice = ensure_router(
                self.versions_dir, self.store, pairs=self.shipped_pairs, image_embedder_name=features_name, **kwargs
            )
        except Exception as exc:  # a broken router must not stop the app
            log.exception("router failed to load")
            router, notice = None, f"the learned router could not load ({exc}); the category rule decides"
        self._swap(router, notice)
        self._loaded.set()

    def _swap(self, router: Router | None, notice: str | None) -> None:
        with self._lock:
            self._router = router
            self.notice = notice
            # Shown on every decision only when routing is degraded (not for "built the first router").
            degraded = router is None or router.kind == "category_rule" or "could not" in (notice or "")
            self._warning = notice if degraded else None

    @property
    def ready(self) -> bool:
        return self._loaded.is_set()

    @property
    def active(self) -> Router:
        with self._lock:
            return self._router or self._fallback

    # ---------------------------------------------------------------- use
    def decide(self, image: Any, question: str, *, lambda_cost: float | None = None) -> dict[str, Any]:
        """The active router's decision as JSON; a backend that failed to load is never the pick."""
        with self._lock:
            router, warning = self._router or self._fallback, self._warning
        lam = self.default_lambda if lambda_cost is None else lambda_cost
        decision = self._avoid_failed(router.decide(image, question, lambda_cost=lam).to_json())
        if warning and not decision.get("fallback"):
            decision["fallback"] = warning
        return decision

    def warm(self, image: Any) -> None:
        """Let the active router embed an image before its question comes (see :meth:`Router.warm`)."""
        with self._lock:
            router = self._router
        if router is not None:
            router.warm(image)

    def _avoid_failed(self, decision: dict[str, Any]) -> dict[str, Any]:
        failed = set(self._failed_backends())
        if decision["choice"] not in failed:
            return decision
        scores = decision.get("utilities") or decision.get("probabilities")
        if scores is None:  # the bare category rule: no numbers, so any working backend, same kind first
            kinds = {c.name: c.kind for c in self.choices()}
            wanted = kinds.get(decision["choice"])
            scores = {c.name: float(kinds[c.name] == wanted) for c in self.choices()}
        candidates = {name: value for name, value in scores.items() if name not in failed}
        if not candidates:
            return decision
        choice = max(candidates, key=candidates.__getitem__)
        note = f"{decision['choice']} failed to load, so the next best backend was picked"
        probabilities = decision.get("probabilities")
        confidence = probabilities.get(choice, 0.0) if probabilities is not None else None
        return dict(decision, choice=choice, confidence=confidence, fallback=note)

    def probability_matrix(self, images: Sequence[Any], questions: Sequence[str]) -> np.ndarray:
        """P(correct) per (question, backend) for many questions in one batched call."""
        probabilities, _ = self.active.score_batch(list(images), list(questions))
        return probabilities

    def status(self) -> str:
        router = self.active
        text = f"{router.kind} router, version {router.version}"
        return f"{text} — {self.notice}" if self.notice else text

    def describe(self) -> dict[str, Any]:
        router = self.active
        return {"kind": router.kind, "version": router.version, "notice": self.notice}

    def card(self) -> dict[str, Any] | None:
        card = getattr(self.active, "card", None)
        return card if isinstance(card, dict) else None

    def versions(self) -> list[dict[str, Any]]:
        try:
            return [entry.to_json() for entry in VersionRegistry(self.versions_dir, self.store).versions()]
        except Exception as exc:  # an unreadable index shows as no versions
            log.warning("router versions unreadable: %s", exc)
            return []

    # ---------------------------------------------------------------- retrain / rollback
    def activate(self, version: str) -> None:
        """Roll back (or forward) to ``version`` and hot-swap it in. Raises RouterError for an unknown or broken one."""
        message = rollback(VersionRegistry(self.versions_dir, self.store), version)
        router, notice = load_active_router(self.versions_dir, self.store, **self._models()[0])
        self._swap(router, notice)
        log.info("%s", message)

    def retrain(self, *, force: bool = False, progress: Progress | None = None) -> str:
        """Train on every judgment plus the shipped benchmark pairs; promote only if better (or forced).

        Returns the Markdown report; raises RouterError when there is too little to train on.
        """
        kwargs, features_name = self._models()
        pairs = [p for p in self.shipped_pairs if p.is_file()]
        # train_version reports each real step (reading, features per image, training, evaluation, promotion)
        outcome = train_version(
            out_dir=self.versions_dir, pairs=pairs, store=self.store, force=force, strict=False,
            image_embedder_name=features_name, progress=progress, **kwargs,
        )
        if outcome.promoted:
            router, notice = load_active_router(self.versions_dir, self.store, **kwargs)
            self._swap(router, notice)
        if progress is not None:
            progress(1.0, desc="Done")
        return render_report(outcome)


__all__ = ["LOADING_NOTICE", "ImageFeaturesProvider", "RouterService"]
