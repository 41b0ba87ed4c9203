"""The app's active router: loaded in the background, hot-swapped after retraining, never missing.

Until the learned router is ready (or when its file is missing or corrupt) decisions come from the
paper's category rule, which needs no model, and the status line says so. The first start of a preset
that ships benchmark pairs (``[router] pairs`` in its TOML) trains a first version from them.
"""

from __future__ import annotations

import html
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router.base import BackendChoice, Router, choices_from_backends

if TYPE_CHECKING:
    from components.runtime import Runtime

log = logging.getLogger("routelens")

ROOT = Path(__file__).resolve().parent.parent
#: Metrics shown side by side after a retrain.
REPORT_METRICS = (
    ("routed_accuracy", "routed accuracy"),
    ("best_single_accuracy", "best single backend"),
    ("oracle_accuracy", "oracle"),
    ("ece", "calibration error (ECE)"),
    ("selection_accuracy", "selection accuracy"),
)


class RouterHolder:
    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        self._lock = threading.RLock()
        self._fallback = self._category_rule()
        self._router: Router | None = None
        self.notice: str | None = "the learned router is loading; the category rule decides meanwhile"
        self._warning: str | None = self.notice
        self._loaded = threading.Event()

    # ---------------------------------------------------------------- building blocks
    def choices(self) -> list[BackendChoice]:
        return choices_from_backends(self.runtime.backends)

    def _category_rule(self) -> Router:
        from router.baselines import CategoryRuleRouter

        return CategoryRuleRouter(self.choices(), version="category-rule")

    @property
    def versions_dir(self) -> Path:
        return self.runtime.config.resolved_db_path.parent / "routers"

    def shipped_pairs(self) -> list[Path]:
        """Benchmark pairs the preset ships (paths relative to the repository), to build a first router."""
        return [ROOT / p for p in self.runtime.preset.router.get("pairs", [])]

    def _image_features_backend(self) -> Any | None:
        name = self.runtime.preset.router.get("image_features")
        if not name:
            return None
        try:
            backend = self.runtime.backend(name)
        except KeyError:
            return None
        return backend if hasattr(backend, "embed_image") and backend.load() else None

    def text_encoder(self) -> Any:
        """MiniLM from the shared pool, so the label mapper and the router load it once."""
        from backends.text_encoder import shared_text_encoder
        from router.features import MiniLMTextEncoder

        return self.runtime.shared.get(
            "router:minilm", lambda: MiniLMTextEncoder(model=shared_text_encoder(self.runtime.shared).model)
        )

    def _models(self) -> tuple[dict[str, Any], str | None]:
        """Keyword arguments for loading or training a router, and the image-feature backend's name.

        The image features are the ``embed_image`` of the preset's ``[router] image_features`` backend.
        """
        backend = self._image_features_backend()
        kwargs = {
            "backends": self.choices(),
            "text_encoder": self.text_encoder(),
            "image_embedder": backend.embed_image if backend is not None else None,
        }
        return kwargs, (backend.name if backend is not None else None)

    # ---------------------------------------------------------------- loading
    def ensure_loaded(self) -> None:
        """Load (or on a first start, build) the active router; on any failure keep the category rule."""
        from router.versions import ensure_router

        try:
            kwargs, features_name = self._models()
            router, notice = ensure_router(
                self.versions_dir, self.runtime.store, pairs=self.shipped_pairs(),
                image_embedder_name=features_name, **kwargs,
            )
        except Exception as exc:  # noqa: BLE001 - a broken router must not stop the app
            log.exception("router failed to load")
            router, notice = None, f"the learned router could not load ({exc}); the category rule decides"
        self._swap(router, notice)
        self._loaded.set()

    def _swap(self, router: Router | None, notice: str | None) -> None:
        with self._lock:
            self._router = router
            self.notice = notice
            # Shown on every decision only when routing is degraded (not for "built the first router").
            self._warning = notice if (router is None or router.kind == "category_rule" or "could not" in (notice or "")) else None

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
        router = self.active
        lam = self.runtime.config.default_lambda if lambda_cost is None else lambda_cost
        decision = router.decide(image, question, lambda_cost=lam).to_json()
        decision = self._avoid_failed(decision)
        if self._warning and not decision.get("fallback"):
            decision["fallback"] = self._warning
        return decision

    def _avoid_failed(self, decision: dict[str, Any]) -> dict[str, Any]:
        failed = {b.name for b in self.runtime.backends if b.describe().status == "failed"}
        if decision["choice"] not in failed:
            return decision
        candidates = {n: u for n, u in (decision.get("utilities") or decision["probabilities"]).items() if n not in failed}
        if not candidates:
            return decision
        choice = max(candidates, key=candidates.get)
        note = f"{decision['choice']} failed to load, so the next best backend was picked"
        return dict(decision, choice=choice, confidence=decision["probabilities"].get(choice, 0.0), fallback=note)

    def probability_matrix(self, images: list[Any], questions: list[str]) -> Any:
        """P(correct) per (question, backend) for many questions in one batched call (numpy array)."""
        probabilities, _ = self.active.score_batch(images, questions)
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
        from router.versions import VersionRegistry

        try:
            return [entry.to_json() for entry in VersionRegistry(self.versions_dir, self.runtime.store).versions()]
        except Exception as exc:  # noqa: BLE001 - an unreadable index shows as no versions
            log.warning("router versions unreadable: %s", exc)
            return []

    # ---------------------------------------------------------------- retrain / rollback
    def activate(self, version: str) -> None:
        """Roll back (or forward) to ``version`` and hot-swap it in."""
        from router.versions import VersionRegistry, load_active_router, rollback

        registry = VersionRegistry(self.versions_dir, self.runtime.store)
        message = rollback(registry, version)
        router, notice = load_active_router(self.versions_dir, self.runtime.store, **self._models()[0])
        self._swap(router, notice)
        log.info("%s", message)

    def retrain(self, *, force: bool = False, progress: Any = None) -> str:
        """Train on every judgment plus the preset's benchmark pairs; promote only if better (or forced)."""
        from router.training import train_version
        from router.versions import load_active_router

        if progress is not None:
            progress(0.05, desc="Reading judgments and pairs")
        kwargs, features_name = self._models()
        pairs = [p for p in self.shipped_pairs() if p.is_file()]
        if progress is not None:
            progress(0.2, desc="Training (features, heads, calibration)")
        outcome = train_version(
            out_dir=self.versions_dir, pairs=pairs, store=self.runtime.store, force=force, strict=False,
            image_embedder_name=features_name, **kwargs,
        )
        if outcome.promoted:
            router, notice = load_active_router(self.versions_dir, self.runtime.store, **kwargs)
            self._swap(router, notice)
        if progress is not None:
            progress(1.0, desc="Done")
        return render_report(outcome)


def render_report(outcome: Any) -> str:
    """Markdown: the new version's held-out metrics beside the active one's, and the verdict."""
    metrics = outcome.card.get("metrics", {}) or {}
    previous = outcome.active_metrics or {}
    rows = ["| metric | new " + html.escape(outcome.version) + " | active before |", "|---|---|---|"]
    for key, label in REPORT_METRICS:
        new = metrics.get(key)
        old = previous.get(key)
        rows.append(f"| {label} | {_fmt(new)} | {_fmt(old)} |")
    verdict = "✓ **promoted**: it is now active." if outcome.promoted else "**kept the active router**."
    data = outcome.card.get("data", {}) or {}
    counts = f"{data.get('pair_rows', '?')} pair rows, {data.get('queries', '?')} queries"
    warnings = "".join(f"\n- {html.escape(str(w))}" for w in (outcome.warnings or [])[:5])
    return f"{verdict} {html.escape(outcome.reason)} ({counts})\n\n" + "\n".join(rows) + (f"\n\nNotes:{warnings}" if warnings else "")


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"
