"""Presets are data files; auto explains its pick; the registry names valid families in errors."""

from __future__ import annotations

import time

import pytest

from backends.base import Backend
from backends.presets import PresetError, choose_auto, list_presets, load_preset, load_preset_file, parse_preset
from backends.registry import FAMILIES, RegistryError, UnavailableBackend, build_backends, resolve_family


def test_builtin_presets_parse_and_use_known_families() -> None:
    assert {"offline", "cpu", "gpu"} <= set(list_presets())
    for name in list_presets():
        preset = load_preset(name)
        assert preset.backends, name
        assert {spec.family for spec in preset.backends} <= set(FAMILIES)
        kinds = set()
        for spec in preset.backends:
            if spec.family != "remote":
                kinds.add(resolve_family(spec.family).kind)
        assert kinds == {"vlm", "vlm+llm"} or name == "mixed", f"{name} should pair a vlm with a vlm+llm"


@pytest.mark.parametrize(
    ("cuda", "cached", "hub", "expected", "words"),
    [
        (True, False, False, "gpu", "CUDA"),
        (False, True, False, "cpu", "cache"),
        (False, False, True, "cpu", "reachable"),
        (False, False, False, "offline", "unreachable"),
    ],
)
def test_auto_rule(cuda, cached, hub, expected, words) -> None:
    preset = choose_auto(cuda=lambda: cuda, hub=lambda: hub, cached=lambda p: cached)
    assert preset.name == expected
    assert words in preset.reason


def test_auto_decides_within_three_seconds() -> None:
    start = time.perf_counter()
    preset = load_preset("auto")
    assert time.perf_counter() - start < 3
    assert preset.reason.startswith("auto:")


def test_bad_presets_say_what_is_wrong(tmp_path) -> None:
    with pytest.raises(PresetError, match="unknown preset 'nope'.*offline"):
        load_preset("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[[backends]]\nname = 'a'\nfamily = 'nonesuch'\n")
    with pytest.raises(PresetError, match="unknown family 'nonesuch'; valid: "):
        load_preset_file(bad)
    bad.write_text("this is = not toml [")
    with pytest.raises(PresetError, match="not valid TOML"):
        load_preset_file(bad)
    with pytest.raises(PresetError, match="appears twice"):
        parse_preset({"backends": [{"name": "a", "family": "remote"}, {"name": "a", "family": "remote"}]}, "x")


def test_a_preset_file_adds_a_backend_without_code(tmp_path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\n[[backends]]\nname = "clip-local"\nfamily = "open_clip"\nmodel_name = "ViT-B-32"\n'
        'pretrained = "/models/clip.bin"\ncost = 0.2\n'
    )
    preset = load_preset(str(path))
    spec = preset.spec("clip-local")
    assert spec.options["pretrained"] == "/models/clip.bin" and spec.cost == 0.2


def test_every_family_resolves_to_a_backend_class() -> None:
    for family in FAMILIES:
        cls = resolve_family(family)
        assert issubclass(cls, Backend)


def test_unbuildable_backend_becomes_a_failed_panel() -> None:
    preset = parse_preset({"backends": [{"name": "x", "family": "open_clip", "no_such_option": 1}]}, "t")
    (backend,) = build_backends(preset.backends)
    assert isinstance(backend, UnavailableBackend)
    answer = backend.answer(None, "q")
    assert answer.error and "no_such_option" in answer.error
    with pytest.raises(RegistryError, match="valid families"):
        resolve_family("nonesuch")


def test_family_kind_table_matches_every_class() -> None:
    from backends.registry import FAMILY_KINDS

    assert set(FAMILY_KINDS) == set(FAMILIES)
    for family, kind in FAMILY_KINDS.items():
        assert resolve_family(family).kind == kind
