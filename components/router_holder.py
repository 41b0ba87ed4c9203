"""The app's active router: loaded in the background, hot-swapped after retraining, never missing.

Until the learned router is ready (or when its file is missing or corrupt) decisions come from the
paper's category rule, which needs no model, and the status line says so.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from router.base import BackendChoice, Router

if TYPE_CHECKING:
    from components.runtime import Runtime

log = logging.getLogger("routelens")

#: The router trained on the offline preset's pairs, shipped with the code.
SHIPPED_ROUTER_DIR = Path(__file__).resolve().parent.parent / "router" / "default"


class RouterHolder:
    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        self._lock = threading.RLock()
        self._fallback = self._category_rule()
        self._router: Router | None = None
        self.notice: str | None = "the learned router is loading; the category rule decides meanwhile"
        self._loaded = threading.Event()

    # ---------------------------------------------------------------- building blocks
    def choices(self) -> list[BackendChoice]:
        return [
            BackendChoice(name=b.name, kind=b.describe().kind, cost=b.cost, description=b.describe().model_id)
            for b in self.runtime.backends
        ]

    def _category_rule(self) -> Router:
        from router.baselines import CategoryRuleRouter

        return CategoryRuleRouter(self.choices(), version="category-rule")

    @property
    def versions_dir(self) -> Path:
        return self.runtime.config.resolved_db_path.parent / "routers"

    def image_embedder(self) -> Callable[[Any], Any] | None:
        """``embed_image`` of the preset's ``[router] image_features`` backend, once it is loaded."""
        name = self.runtime.preset.router.get("image_features")
        if not name:
            return None
        try:
            backend = self.runtime.backend(name)
        except KeyError:
            return None
        if not hasattr(backend, "embed_image") or not backend.load():
            return None
        return backend.embed_image

    def text_encoder(self) -> Any:
        from router.features import MiniLMTextEncoder

        return self.runtime.shared.get("router:minilm", MiniLMTextEncoder)

    # ---------------------------------------------------------------- loading
    def ensure_loaded(self) -> None:
        """Load the active learned router; on any failure keep the category rule and say why."""
        try:
            router, notice = self._load_active()
        except Exception as exc:  # noqa: BLE001 - a broken router file must not stop the app
            log.exception("router failed to load")
            router, notice = None, f"the learned router could not load ({exc}); the category rule decides"
        with self._lock:
            self._router = router
            self.notice = notice
        self._loaded.set()

    def _load_active(self) -> tuple[Router | None, str | None]:
        from router.versions import load_active_router

        return load_active_router(
            self.versions_dir,
            backends=self.choices(),
            store=self.runtime.store,
            shipped_dir=SHIPPED_ROUTER_DIR,
            text_encoder=self.text_encoder(),
            image_embedder=self.image_embedder(),
        )

    @property
    def ready(self) -> bool:
        return self._loaded.is_set()

    @property
    def active(self) -> Router:
        with self._lock:
            return self._router or self._fallback

    # ---------------------------------------------------------------- use
    def decide(self, image: Any, question: str, *, lambda_cost: float | None = None, category: str | None = None) -> dict[str, Any]:
        router = self.active
        lam = self.runtime.config.default_lambda if lambda_cost is None else lambda_cost
        decision = router.decide(image, question, lambda_cost=lam).to_json()
        if self.notice and not decision.get("fallback"):
            decision["fallback"] = self.notice
        return decision

    def probabilities(self, image: Any, question: str) -> list[float]:
        decision = self.active.decide(image, question)
        return list(decision.probabilities.values())

    def status(self) -> str:
        router = self.active
        text = f"{router.kind} router, version {router.version}"
        return f"{text} — {self.notice}" if self.notice else text

    def describe(self) -> dict[str, Any]:
        router = self.active
        return {"kind": router.kind, "version": router.version, "notice": self.notice}

    def card(self) -> dict[str, Any] | None:
        return getattr(self.active, "card", None)

    def versions(self) -> list[dict[str, Any]]:
        if self.runtime.store is None:
            return []
        return self.runtime.store.router_versions()

    def activate(self, version: str) -> None:
        raise NotImplementedError

    def retrain(self, *, force: bool = False, progress: Any = None) -> str:
        raise NotImplementedError
