"""Lazy registry: a family name maps to a dotted path, imported only when a preset selects it.

Start-up stays fast and a broken optional dependency breaks one backend, not the app
(lmms-eval's registry habit). Adding a family is one line here plus a module; adding a backend of a
known family is a preset-file change only.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from backends.base import KINDS, Backend

FAMILIES: dict[str, str] = {
    "offline_vision": "backends.offline_vision:OfflineVisionBackend",
    "offline_llm": "backends.offline_llm:OfflineLLMBackend",
    "open_clip": "backends.open_clip_zero_shot:OpenClipBackend",
    "hf_vision": "backends.hf_vision:HFVisionBackend",
    "remote": "backends.remote:RemoteBackend",
}


#: The kind each family declares, readable without importing it (a failed import must still draw the
#: right panel, and the router reads presets without loading models). ``resolve_family`` checks that
#: every imported class agrees with this table.
FAMILY_KINDS: dict[str, str] = {
    "offline_vision": "vlm",
    "offline_llm": "vlm+llm",
    "open_clip": "vlm",
    "hf_vision": "vlm+llm",
    "remote": "vlm+llm",
}


class RegistryError(ValueError):
    """An unknown family or a family whose module cannot be imported."""


@dataclass(frozen=True)
class BackendSpec:
    """One ``[[backends]]`` entry of a preset file."""

    name: str
    family: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def cost(self) -> float:
        return float(self.options.get("cost", 0.0))


def resolve_family(family: str) -> type[Backend]:
    """Import the class behind ``family`` and check it honours the Backend contract."""
    if family not in FAMILIES:
        raise RegistryError(f"unknown backend family {family!r}; valid families: {', '.join(sorted(FAMILIES))}")
    module_name, class_name = FAMILIES[family].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"backend family {family!r} needs a package that is missing: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, Backend):
        raise RegistryError(f"{FAMILIES[family]} is not a Backend subclass")
    if cls.kind not in KINDS or cls.kind != FAMILY_KINDS[family]:
        raise RegistryError(f"{FAMILIES[family]} has kind {cls.kind!r}; FAMILY_KINDS says {FAMILY_KINDS[family]!r}")
    return cls


def build_backend(spec: BackendSpec, *, shared: Any = None, quantize: bool | None = None) -> Backend:
    """Instantiate (but do not load) the backend a spec describes."""
    cls = resolve_family(spec.family)
    options = dict(spec.options)
    if quantize is not None:
        options["quantize"] = quantize
    try:
        return cls(spec.name, shared=shared, **options)
    except TypeError as exc:
        raise RegistryError(f"backend {spec.name!r} ({spec.family}): bad option in the preset: {exc}") from exc


class UnavailableBackend(Backend):
    """Stands in for a backend whose family could not be built, so its panel shows why (null object)."""

    family = "unavailable"

    def __init__(self, name: str, reason: str, *, kind: str = "vlm", cost: float = 0.0) -> None:
        super().__init__(name, cost=cost)
        self.reason = reason
        self.kind = kind  # type: ignore[misc] - the kind its preset family declares
        self.info.kind = kind

    def _load(self) -> None:
        raise RegistryError(self.reason)

    def _answer(self, image, question, labels):  # pragma: no cover - never loaded
        raise RegistryError(self.reason)


def build_backends(specs: Iterable[BackendSpec], *, shared: Any = None, quantize: bool | None = None) -> list[Backend]:
    """Every backend of a preset; one that cannot be built becomes an :class:`UnavailableBackend`."""
    built: list[Backend] = []
    for spec in specs:
        try:
            built.append(build_backend(spec, shared=shared, quantize=quantize))
        except RegistryError as exc:
            kind = FAMILY_KINDS.get(spec.family, "vlm")
            built.append(UnavailableBackend(spec.name, str(exc), kind=kind, cost=spec.cost))
    return built

