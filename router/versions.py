"""Router versions on disk: save / load one version, and the registry of versions and which one is active.

A version is a folder ``<root>/<version>/`` holding ``router.safetensors`` (head and calibration
arrays) and ``card.json`` (everything else, including the sha256 of the weights so a corrupt or
swapped file is caught on load). The root holds ``versions.json``: every version and which one is
active, with a history of activations. When the app runs with a SQLite store, the store's
``router_versions`` table is kept in step and is the source of truth for which version is active;
without one the JSON index is.

Deciding what to promote, rolling back and choosing what the app serves is :mod:`router.lifecycle`'s job.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.base import BackendChoice, Router, RouterError

WEIGHTS_FILE = "router.safetensors"
CARD_FILE = "card.json"
INDEX_FILE = "versions.json"

#: Router kinds that can be saved as versions: card "kind" -> "module:Class".
ROUTER_KINDS: dict[str, str] = {
    "embedding": "router.embedding_router:EmbeddingRouter",
    "llm": "router.llm_router:LLMRouter",
}


class RouterLoadError(RouterError):
    """A version folder that is missing, incomplete or corrupt; the message says which file and why."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_json_atomic(path: Path, data: Any) -> None:
    from data.atomic import atomic_writer

    with atomic_writer(path, "w") as handle:
        json.dump(data, handle, indent=2, default=_json_default, allow_nan=False)
        handle.write("\n")


def _clean_json(value: Any) -> Any:
    """NaN/inf -> None, so cards are strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_json(v) for v in value]
    return value


# ============================================================================ one version
def save_router(router: Router, directory: str | Path) -> Path:
    """Write a trained router to ``directory`` (created; must not exist). Atomic: all or nothing."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    if directory.exists():
        raise RouterError(f"{directory} already exists; a version folder is written once")
    state = getattr(router, "state_tensors", None)
    if state is None:
        raise RouterError(f"router kind {router.kind!r} has no trained state to save")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in state().items()}, str(tmp / WEIGHTS_FILE))
        card = dict(getattr(router, "card", {}) or {})
        card.update(version=router.version, kind=router.kind, weights=WEIGHTS_FILE, weights_sha256=_sha256(tmp / WEIGHTS_FILE))
        _write_json_atomic(tmp / CARD_FILE, _clean_json(card))
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_card(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise RouterLoadError(f"router card missing: {path}")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RouterLoadError(f"router card unreadable: {path} ({exc})") from None
    if not isinstance(card, dict) or "kind" not in card or "feature_config" not in card:
        raise RouterLoadError(f"router card incomplete: {path}")
    return card


def load_router(
    directory: str | Path,
    *,
    backends: Sequence[BackendChoice] | None = None,
    text_encoder: Any | None = None,
    image_embedder: Callable[[Any], np.ndarray] | None = None,
    llm_loader: Callable[[], tuple[Any, Any]] | None = None,
    llm_model_dir: str | Path | None = None,
    lambda_cost: float | None = None,
) -> Router:
    """Load one version folder; raises :class:`RouterLoadError` with a readable reason.

    ``backends`` (the app's list): costs, kinds and descriptions are taken from it, and the router is
    restricted to the backends it shares with it. ``text_encoder`` passes an already loaded encoder
    (it must match the card's name and size); otherwise it is rebuilt from the card (lazily loaded).
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from router.calibration import Calibrator
    from router.correction import PriorCorrection
    from router.embedding_router import HeadWeights
    from router.features import FeatureConfig, FeatureExtractor, ImageFeatures, text_encoder_from_config

    directory = Path(directory)
    card = read_card(directory)
    weights = directory / card.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise RouterLoadError(f"router weights missing: {weights}")
    expected = card.get("weights_sha256")
    if expected and _sha256(weights) != expected:
        raise RouterLoadError(f"router weights corrupt (sha256 differs from the card): {weights}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RouterLoadError(f"router weights unreadable: {weights} ({exc})") from None
    kind = str(card["kind"])
    if kind not in ROUTER_KINDS:
        raise RouterLoadError(f"unknown router kind {kind!r} in {directory}; valid: {', '.join(ROUTER_KINDS)}")
    try:
        saved_backends = [BackendChoice.from_json(b) for b in card["backends"]]
        config = FeatureConfig.from_json(card["feature_config"])
        heads = HeadWeights.from_tensors(tensors)
        calibrator = Calibrator.from_tensors(card.get("calibration", {}).get("method", "identity"), tensors, heads.n_backends)
        if text_encoder is not None and (
            getattr(text_encoder, "name", None) != config.text_encoder.get("name") or text_encoder.dim != config.text_dim
        ):
            text_encoder = None  # the app's encoder is not this router's: rebuild the card's own
        if text_encoder is None:
            overrides: dict[str, Any] = {}
            if config.text_encoder.get("name") == "llm":
                overrides = {"loader": llm_loader, "model_dir": llm_model_dir}
            text_encoder = text_encoder_from_config(config.text_encoder, **overrides)
        image_features = None
        if not config.text_only and image_embedder is not None:
            image_features = ImageFeatures(image_embedder, name=config.image_embedder or "custom")
        extractor = FeatureExtractor(config, text_encoder, image_features)
    except RouterLoadError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise RouterLoadError(f"router {directory} does not match its card: {exc}") from None
    module_name, class_name = ROUTER_KINDS[kind].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    names = [b.name for b in saved_backends]
    fallback = card.get("fallback_backend") if card.get("fallback_backend") in names else None
    router = cls(
        saved_backends,
        extractor=extractor,
        heads=heads,
        calibrator=calibrator,
        categories=card.get("categories") or None,
        card=card,
        correction=PriorCorrection.from_parts(tensors, card.get("correction")),
        version=str(card.get("version", directory.name)),
        lambda_cost=float(card.get("lambda_cost", 0.0)) if lambda_cost is None else float(lambda_cost),
        fallback_backend=fallback,
        switch_margin=float(card.get("switch_margin") or 0.0) if fallback else 0.0,
    )
    if backends is not None:
        shared = [b.name for b in backends if b.name in names]
        if not shared:
            raise RouterLoadError(
                f"router {router.version} knows none of the backends {[b.name for b in backends]} (it knows {names})"
            )
        router = router.with_costs(backends)
        if shared != names:
            router = router.restrict(shared)
    return router


# ============================================================================ the index of versions
@dataclass
class VersionEntry:
    version: str
    path: str
    kind: str
    created_at: str
    metrics: dict[str, Any]
    active: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": self.path,
            "kind": self.kind,
            "created_at": self.created_at,
            "active": self.active,
            "routed_accuracy": self.metrics.get("routed_accuracy"),
            "best_single_accuracy": self.metrics.get("best_single_accuracy"),
            "oracle_accuracy": self.metrics.get("oracle_accuracy"),
            "routed_accuracy_ci95": self.metrics.get("routed_accuracy_ci95"),
            "category_rule_accuracy": self.metrics.get("category_rule_accuracy"),
            "judged_queries": self.metrics.get("judged_queries"),
            "ece": self.metrics.get("ece"),
        }


class VersionRegistry:
    """The versions under ``root`` (JSON index) and, when given, the store's ``router_versions``.

    Store methods used: ``record_router_version(version, path, card, active=False)``,
    ``router_versions()``, ``set_active_router(version)``, ``active_router()``.
    """

    def __init__(self, root: str | Path | None = None, store: Any | None = None) -> None:
        if root is None and store is None:
            raise RouterError("a version registry needs a versions folder, a store, or both")
        self.root = None if root is None else Path(root)
        self.store = store

    # ---------------------------------------------------------------- the JSON index
    @property
    def index_path(self) -> Path | None:
        return None if self.root is None else self.root / INDEX_FILE

    def _read_index(self) -> dict[str, Any]:
        empty: dict[str, Any] = {"format": 1, "active": None, "versions": [], "history": []}
        path = self.index_path
        if path is None or not path.is_file():
            return empty
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            # A damaged index: rebuild it from the version folders (cards are the real record).
            return self._rebuild_index()
        return data if isinstance(data, dict) and "versions" in data else self._rebuild_index()

    def _rebuild_index(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": 1, "active": None, "versions": [], "history": [{"at": utc_now(), "event": "index rebuilt from folders"}]}
        if self.root is None or not self.root.is_dir():
            return data
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                card = read_card(folder)
            except RouterLoadError:
                continue
            data["versions"].append(_index_entry(card, folder.name))
        data["versions"].sort(key=lambda e: e.get("created_at", ""))
        return data

    def _write_index(self, data: dict[str, Any]) -> None:
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.index_path, _clean_json(data))  # type: ignore[arg-type]

    # ---------------------------------------------------------------- queries
    def versions(self) -> list[VersionEntry]:
        """Every known version, oldest first."""
        active = self.active_version()
        entries: dict[str, VersionEntry] = {}
        for e in self._read_index()["versions"]:
            path = e.get("path", e["version"])
            full = str(self.root / path) if self.root is not None and not os.path.isabs(path) else path
            entries[e["version"]] = VersionEntry(e["version"], full, e.get("kind", "?"), e.get("created_at", ""), e.get("metrics", {}))
        for row in self._store_rows():
            if row["version"] not in entries:
                card = row.get("card") or {}
                entries[row["version"]] = VersionEntry(
                    row["version"], str(row.get("path", "")), card.get("kind", "?"),
                    str(row.get("created_at") or card.get("created_at", "")), card.get("metrics", {}),
                )
        out = sorted(entries.values(), key=lambda e: e.created_at)
        for e in out:
            e.active = e.version == active
        return out

    def _store_rows(self) -> list[dict[str, Any]]:
        if self.store is None:
            return []
        rows = []
        for row in self.store.router_versions() or []:
            item = dict(row) if not isinstance(row, str) else {"version": row}
            card = item.get("card")
            if isinstance(card, str):
                try:
                    item["card"] = json.loads(card)
                except json.JSONDecodeError:
                    item["card"] = {}
            rows.append(item)
        return rows

    def active_version(self) -> str | None:
        if self.store is not None:
            active = self.store.active_router()
            if isinstance(active, Mapping):
                active = active.get("version")
            elif active is not None and not isinstance(active, str):
                active = getattr(active, "version", None)
            if active:
                return str(active)
            if self.root is None:
                return None
        return self._read_index().get("active")

    def path_of(self, version: str) -> Path:
        for entry in self.versions():
            if entry.version == version:
                return Path(entry.path)
        raise RouterError(f"unknown router version {version!r}; known: {', '.join(e.version for e in self.versions()) or 'none'}")

    # ---------------------------------------------------------------- changes
    def record(self, directory: str | Path, card: Mapping[str, Any], *, active: bool = False, reason: str = "") -> None:
        """Add a saved version folder to the index (and the store), optionally making it active."""
        directory = Path(directory)
        version = str(card["version"])
        if self.root is not None:
            data = self._read_index()
            rel = os.path.relpath(directory, self.root) if directory.is_relative_to(self.root) else str(directory)
            data["versions"] = [e for e in data["versions"] if e["version"] != version] + [_index_entry(card, rel)]
            if active:
                data["active"] = version
                data.setdefault("history", []).append({"at": utc_now(), "active": version, "reason": reason or "promoted"})
            self._write_index(data)
        if self.store is not None:
            self.store.record_router_version(version, str(directory.resolve()), _clean_json(dict(card)), active=active)
            if active:
                self.store.set_active_router(version)

    def set_active(self, version: str, reason: str = "") -> None:
        """Make ``version`` active (rollback or forced promotion); checks its files load first."""
        path = self.path_of(version)
        check_version_files(path)
        if self.root is not None:
            data = self._read_index()
            data["active"] = version
            data.setdefault("history", []).append({"at": utc_now(), "active": version, "reason": reason or "set active"})
            self._write_index(data)
        if self.store is not None:
            self.store.set_active_router(version)


def utc_now() -> str:
    """The current time, UTC, as the index and the cards write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _index_entry(card: Mapping[str, Any], path: str) -> dict[str, Any]:
    metrics = card.get("metrics", {}) or {}
    keep = ("routed_accuracy", "routed_accuracy_ci95", "best_single_accuracy", "category_rule_accuracy", "oracle_accuracy",
            "ece", "n_queries", "judged_queries", "decision_ms_p50")
    return {
        "version": card["version"],
        "path": path,
        "kind": card.get("kind", "?"),
        "created_at": card.get("created_at", utc_now()),
        "text_only": card.get("text_only"),
        "metrics": {k: metrics.get(k) for k in keep},
    }


def check_version_files(directory: str | Path) -> dict[str, Any]:
    """The card, after checking the weights exist and match its sha256 (no model is loaded)."""
    directory = Path(directory)
    card = read_card(directory)
    weights = directory / card.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise RouterLoadError(f"router weights missing: {weights}")
    if card.get("weights_sha256") and _sha256(weights) != card["weights_sha256"]:
        raise RouterLoadError(f"router weights corrupt (sha256 differs from the card): {weights}")
    return card


__all__ = [
    "CARD_FILE",
    "INDEX_FILE",
    "ROUTER_KINDS",
    "RouterLoadError",
    "VersionEntry",
    "VersionRegistry",
    "WEIGHTS_FILE",
    "check_version_files",
    "load_router",
    "read_card",
    "save_router",
    "utc_now",
]
