"""Hard inputs through the Runtime, the API handlers and the Compare tab (test-double backends, fast).

Every bad input gets a clear message and records nothing; every odd but valid input is answered; the
next good request always succeeds. Pillow-level decoding is covered in tests/test_images.py, the
backend-level caps (2,000-character question, 200 labels) in tests/test_run_all.py; here the same
inputs go through the whole flow: gradio's input component, Runtime.compare, the store and the HTML
the page shows. The last test sends the worst files through gradio_client to a launched app (slow).
"""

from __future__ import annotations

import io
import json
import sqlite3
import struct
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from backends.base import MAX_LABELS, MAX_QUESTION_CHARS
from backends.labels import labels_from_question, split_label_list
from backends.presets import parse_preset
from components.api import Api
from components.compare_tab import CompareView, QueryState
from components.runtime import (
    MAX_QUESTION_INPUT_CHARS,
    AppConfig,
    InputError,
    Runtime,
    clean_question,
    resolve_labels,
)
from tests.doubles import EchoBackend

ROOT = Path(__file__).resolve().parent.parent
CAT = str(ROOT / "data" / "examples" / "chelsea.jpg")
NAMES = ["clip", "llava"]


# ------------------------------------------------------------------------------------------ files
def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A 70-byte PNG whose header declares width x height pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _sixteen_bit(width: int = 64, height: int = 48) -> Image.Image:
    """Left half 1000, right half 4000 (a 12-bit sensor's range): clipping to 8 bits turns it all white."""
    array = np.full((height, width), 1000, dtype=np.uint16)
    array[:, width // 2:] = 4000
    return Image.frombytes("I;16", (width, height), array.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _truncated_jpeg() -> bytes:
    data = _encode(Image.effect_noise((200, 200), 50).convert("RGB"), "JPEG")
    return data[: len(data) // 3]


BAD_FILES = {
    # name on disk: (bytes, what the message must say)
    "text-named.png": (b"hello, I am a text file named cat.png\n", "not an image"),
    "truncated.jpg": (None, "truncated"),
    "bomb-30000x30000.png": (None, "too large"),
    "empty.png": (b"", "empty"),
}
GOOD_FILES = ("animated.gif", "one-pixel.png", "cmyk.jpg", "sixteen-bit.png")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("hard-files")
    contents = {
        "text-named.png": BAD_FILES["text-named.png"][0],
        "truncated.jpg": _truncated_jpeg(),
        "bomb-30000x30000.png": _bomb_png(30000, 30000),
        "empty.png": b"",
        "animated.gif": _animated_gif(),
        "one-pixel.png": _encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        "cmyk.jpg": _encode(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG"),
        "sixteen-bit.png": _encode(_sixteen_bit(), "PNG"),
    }
    out = {}
    for name, data in contents.items():
        path = folder / name
        path.write_bytes(data)
        out[name] = str(path)
    return out


# ------------------------------------------------------------------------------------------ runtime
@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hard-db")
    preset = parse_preset(
        {"name": "doubles", "backends": [{"name": "clip", "family": "open_clip"}, {"name": "llava", "family": "hf_vision"}]},
        "test",
    )
    backends = [EchoBackend("clip", kind="vlm", cost=0.1), EchoBackend("llava", kind="vlm+llm", word="a circle", cost=1.0)]
    rt = Runtime(AppConfig(db_path=folder / "db.sqlite"), preset=preset, backends=backends)
    rt.start_loading()
    assert rt.wait_until_loaded(120)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def api(runtime) -> Api:
    return Api(runtime)


@pytest.fixture(scope="module")
def demo(runtime):
    import app

    blocks = app.build_app(runtime)
    blocks.routelens_runtime = runtime
    return blocks


def _component(demo, *, api_name: str | None = None, elem_id: str | None = None):
    """The /compare endpoint's image input, or the component with ``elem_id``."""
    if api_name is not None:
        for dep in demo.config["dependencies"]:
            if dep.get("api_name") == api_name:
                return demo.blocks[dep["inputs"][0]]
        raise AssertionError(f"no endpoint {api_name}")
    for block in demo.blocks.values():
        if getattr(block, "elem_id", None) == elem_id:
            return block
    raise AssertionError(f"no component #{elem_id}")


def demo_runtime(demo):
    return demo.routelens_runtime


def _payload(path: str):
    from gradio.data_classes import ImageData

    return ImageData(path=path, orig_name=Path(path).name)


def _counts(runtime) -> dict[str, int]:
    return runtime.store.counts()


def _good_request_succeeds(api: Api) -> dict:
    """The server still answers normally, and the judgment of that answer is saved."""
    result = api.compare(CAT, "Is this a cat or a dog?", "")
    assert result["query_id"] and set(result["answers"]) == set(NAMES)
    assert all(a["error"] is None for a in result["answers"].values())
    assert result["answers"]["clip"]["text"] == "cat"
    assert api.judge(result["query_id"], json.dumps({"clip": 1}), "checker") == {"saved": 1}
    return result


# ------------------------------------------------------------------------------------------ bad images
@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_image_file_is_refused_with_a_clear_message_then_next_request_works(runtime, api, files, name) -> None:
    message = BAD_FILES[name][1]
    before = _counts(runtime)
    with pytest.raises(gr.Error, match=message):
        api.compare(files[name], "What is this?", "")
    with pytest.raises(gr.Error, match=message):
        api.route(files[name], "What is this?")
    frames = list(CompareView(runtime).ask(files[name], "What is this?", "", 0.0, None))
    assert len(frames) == 1 and frames[0][0].startswith("⚠️") and message in frames[0][0]
    assert frames[0][-1].query_id is None
    assert _counts(runtime) == before  # nothing recorded
    _good_request_succeeds(api)


@pytest.mark.parametrize("name", [n for n in BAD_FILES if n != "empty.png"])
def test_api_image_input_turns_decoding_failures_into_clear_errors(demo, files, name) -> None:
    """gradio opens the upload with Pillow before Api.compare runs; that failure must be a gr.Error
    (shown to the client) rather than a bare PIL exception (shown as "Error" with show_error=False)."""
    image_input = _component(demo, api_name="compare")
    with pytest.raises(gr.Error, match=BAD_FILES[name][1]):
        Api(demo_runtime(demo)).compare(image_input.preprocess(_payload(files[name])), "What is this?", "")


def _through_compare_tab(demo, runtime, path: str) -> str:
    """What the person sees after uploading ``path`` in the Compare tab and asking: gradio's input
    component first (a gr.Error is shown as its message), then CompareView.ask's notice."""
    try:
        value = _component(demo, elem_id="image").preprocess(_payload(path))
    except gr.Error as exc:
        return str(exc)
    frames = list(CompareView(runtime).ask(value, "What is this?", "", 0.0, None))
    return frames[-1][0]


@pytest.mark.parametrize("name", [n for n in BAD_FILES if n != "empty.png"])
def test_compare_tab_upload_gives_clear_messages_for_bad_files(demo, runtime, files, name) -> None:
    """The Compare tab's upload box (components/input_panel.py): a bare Pillow exception inside
    gradio's preprocessing reaches the person as "Error" only (show_error=False)."""
    before = _counts(runtime)
    assert BAD_FILES[name][1] in _through_compare_tab(demo, runtime, files[name])
    assert _counts(runtime) == before


def test_compare_tab_upload_keeps_sixteen_bit_contrast(demo, runtime, files) -> None:
    """A 16-bit image (1000 and 4000 of 65535) must reach the models with its contrast stretched, as
    backends.images.to_rgb does, not clipped to 8 bits by gradio's convert("RGB") (a white square)."""
    value = _component(demo, elem_id="image").preprocess(_payload(files["sixteen-bit.png"]))
    picture, _, _ = runtime.prepare(value, "What is this?", None)
    left, right = picture.getpixel((2, 2)), picture.getpixel((picture.width - 3, 2))
    assert left[0] < 20 and right[0] > 200, f"contrast lost: left {left}, right {right}"


# ------------------------------------------------------------------------------------------ odd images
@pytest.mark.parametrize("name", GOOD_FILES)
def test_odd_but_valid_images_are_answered_and_stored(runtime, api, demo, files, name) -> None:
    image_input = _component(demo, api_name="compare")
    path = image_input.preprocess(_payload(files[name]))
    result = api.compare(path, "Is this a cat or a dog?", "")
    assert set(result["answers"]) == set(NAMES)
    assert all(a["error"] is None for a in result["answers"].values()), result["answers"]
    stored = runtime.store.query(result["query_id"])
    with Image.open(runtime.store.image_path(stored["image_sha256"])) as saved:
        assert saved.mode == "RGB" and min(saved.size) >= 32
    if name == "sixteen-bit.png":
        with Image.open(runtime.store.image_path(stored["image_sha256"])) as saved:
            assert saved.getpixel((1, 1))[0] < 20 and saved.getpixel((saved.width - 2, 1))[0] > 200
    # and through the Compare tab's own upload box
    tab_value = _component(demo, elem_id="image").preprocess(_payload(files[name]))
    frames = list(CompareView(runtime).ask(tab_value, "Is this a cat or a dog?", "", 0.0, None))
    assert frames[-1][0] == "" and len(frames[-1][-1].answers) == 2


# ------------------------------------------------------------------------------------------ questions
@pytest.mark.parametrize(
    "question, message",
    [
        ("", "type a question"),
        ("   \n\t  ", "type a question"),
        ("\x00\x01\x07\x1b\x7f\u202e", "type a question"),
        ("x" * 100_000, "under 10,000"),
        ("why? " * 2_500, "under 10,000"),
    ],
    ids=["empty", "blank", "only-control-chars", "100k-chars", "12.5k-chars-of-words"],
)
def test_bad_question_is_refused_and_nothing_is_recorded(runtime, api, question, message) -> None:
    before = _counts(runtime)
    with pytest.raises(gr.Error, match=message):
        api.compare(CAT, question, "")
    with pytest.raises(gr.Error, match=message):
        api.route(CAT, question)
    frames = list(CompareView(runtime).ask(CAT, question, "", 0.0, None))
    assert message in frames[-1][0]
    assert _counts(runtime) == before
    _good_request_succeeds(api)


def test_long_question_is_shortened_with_a_notice(runtime, api) -> None:
    question = "Is this a cat or a dog? " + "please look closely " * 300  # ~6,000 characters
    result = api.compare(CAT, question, "")
    assert any("shortened to 2000" in n for n in result["notices"])
    assert len(runtime.store.query(result["query_id"])["question"]) == MAX_QUESTION_CHARS


def test_control_characters_are_stripped_without_a_false_notice(runtime, api) -> None:
    question = "What\x00 animal\x1b[31m is\x07 this\u202e?\r"
    result = api.compare(CAT, question, "cat,\x00dog, \u202egerbil, \x1b[1mbird")
    stored = runtime.store.query(result["query_id"])
    assert stored["question"] == "What animal[31m is this?"
    assert result["notices"] == []  # nothing was shortened
    assert result["labels"] == ["cat", "dog", "gerbil", "[1mbird"]
    assert all(ch.isprintable() for label in result["labels"] for ch in label)


def test_emoji_and_right_to_left_text_round_trip(runtime, api) -> None:
    result = api.compare(CAT, "Is this a 🐱 or a 🐶?", "")
    assert result["labels"] == ["🐱", "🐶"] and result["answers"]["clip"]["text"] == "🐱"
    hebrew, arabic = "חתול", "ما هذا الحيوان؟"
    result = api.compare(CAT, arabic, f"{hebrew}, כלב, 👩‍🚀")
    assert result["labels"] == [hebrew, "כלב", "👩‍🚀"]
    assert runtime.store.query(result["query_id"])["question"] == arabic
    saved = api.judge(result["query_id"], json.dumps({"verdicts": {"clip": 1}, "reason": "נכון ✓ 🐱"}), "ユーザー")
    assert saved == {"saved": 1}
    rows = [r for r in runtime.store.judgment_rows() if r.get("query_id") == result["query_id"]]
    assert rows and rows[0]["reason"] == "נכון ✓ 🐱" and rows[0]["annotator"] == "ユーザー"
    frames = list(CompareView(runtime).ask(CAT, arabic, f"{hebrew}, כלב", 0.0, None))
    assert hebrew in frames[-1][4]


def test_ten_thousand_labels_are_capped(runtime, api) -> None:
    import time

    labels = ", ".join(f"label number {i}" for i in range(10_000))
    start = time.perf_counter()
    result = api.compare(CAT, "Which one is it?", labels)
    assert time.perf_counter() - start < 10
    assert len(result["labels"]) == MAX_LABELS and result["labels"][0] == "label number 0"
    assert result["answers"]["clip"]["text"] == "label number 0"
    assert len(runtime.store.query(result["query_id"])["labels"]) == MAX_LABELS
    frames = list(CompareView(runtime).ask(CAT, "Which one is it?", labels, 0.0, None))
    assert f"+{MAX_LABELS - 6} more labels" in frames[-1][4]
    _good_request_succeeds(api)


# ------------------------------------------------------------------------------------------ markup
SCRIPT = "<script>alert('q')</script>"
IMG = '<img src=x onerror="alert(1)">'
ATTR = "\" onmouseover=\"alert(2)"


def test_html_and_script_are_escaped_in_every_panel_and_stored_verbatim(runtime) -> None:
    view = CompareView(runtime)
    question = f"{SCRIPT} what is {IMG}?"
    labels = f"{SCRIPT}, {IMG}, {ATTR}, <b>bold</b>"
    frames = list(view.ask(CAT, question, labels, 0.0, None))
    final = frames[-1]
    state: QueryState = final[-1]
    # outputs: notice, labels, router card, chart, one panel per backend, save button, state
    html_out = " ".join([final[0], final[2], *final[4:4 + len(NAMES)]])
    lowered = html_out.lower()
    assert "<script" not in lowered and "<img" not in lowered and "<b>bold" not in lowered
    assert 'onmouseover="' not in lowered
    assert "&lt;script&gt;" in html_out and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html_out
    stored = runtime.store.query(state.query_id)
    assert stored["question"] == question
    assert stored["labels"][:2] == [SCRIPT, IMG]
    # the annotator, reason and true answer are stored as typed too
    status = view.save(state, "✓ correct", None, None, SCRIPT, IMG, SCRIPT)[0]
    assert status.startswith("✓ Saved")
    row = [r for r in runtime.store.judgment_rows() if r.get("query_id") == state.query_id][0]
    assert (row["true_answer"], row["reason"], row["annotator"]) == (SCRIPT, IMG, SCRIPT)


def test_markup_in_a_model_answer_is_escaped(runtime) -> None:
    from backends.base import Answer
    from components import answer_grid

    info = runtime.backend("clip").describe()
    answer = Answer(backend="clip", text=f"{IMG}{SCRIPT}", label_scores=[(SCRIPT, 0.9), (IMG, 0.1)], latency_s=0.1)
    html_out = answer_grid.render_panel(info, answer, picked=True).lower()
    assert "<script" not in html_out and "<img" not in html_out
    error = Answer(backend="clip", error=f"RuntimeError: {IMG}", latency_s=0.1)
    assert "<img" not in answer_grid.render_panel(info, error).lower()


# ------------------------------------------------------------------------------------------ SQL-looking strings
SQLISH = [
    "Robert'); DROP TABLE queries;--",
    "1' OR '1'='1",
    "x\"; DELETE FROM judgments; --",
    "0; UPDATE verdicts SET correct = 1 WHERE 1=1",
]


def test_sql_looking_strings_are_stored_verbatim_and_harmless(runtime, api) -> None:
    path = runtime.store.path
    result = api.compare(CAT, SQLISH[0], ", ".join(SQLISH[1:]))
    qid = result["query_id"]
    before = _counts(runtime)
    payload = {"verdicts": {"clip": 1, "llava": 0}, "best": "clip", "true_answer": SQLISH[1], "reason": SQLISH[3]}
    assert api.judge(qid, json.dumps(payload), SQLISH[2]) == {"saved": 2}
    with pytest.raises(gr.Error, match="unknown query id"):
        api.judge(SQLISH[1], json.dumps({"clip": 1}), SQLISH[0])
    after = _counts(runtime)
    assert after["judgments"] == before["judgments"] + 1 and after["verdicts"] == before["verdicts"] + 2
    stored = runtime.store.query(qid)
    assert stored["question"] == SQLISH[0]
    assert stored["labels"] == result["labels"] and result["labels"][0] == SQLISH[1]
    assert "DELETE FROM judgments" in result["labels"]
    row = [r for r in runtime.store.judgment_rows() if r.get("query_id") == qid][0]
    assert (row["true_answer"], row["reason"], row["annotator"]) == (SQLISH[1], SQLISH[3], SQLISH[2])
    raw = sqlite3.connect(path)
    try:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"queries", "answers", "judgments", "verdicts"} <= tables
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert raw.execute("SELECT COUNT(*) FROM verdicts WHERE correct = 0").fetchone()[0] >= 1
    finally:
        raw.close()
    _good_request_succeeds(api)


# ------------------------------------------------------------------------------------------ judgments
@pytest.mark.parametrize(
    "query_id, verdicts, message",
    [
        ("no-such-query", json.dumps({"clip": 1}), "unknown query id"),
        ("", json.dumps({"clip": 1}), "not saved"),
        ("q" * 500, json.dumps({"clip": 1}), "not saved"),
        (None, json.dumps({"clip": 1}), "not saved"),
        ("<known>", json.dumps({"nobody": 1}), "no answer from nobody"),
        ("<known>", json.dumps({"clip": 5}), "not saved"),
        ("<known>", json.dumps({"clip": "yes please"}), "not saved"),
        ("<known>", "{nope", "valid JSON"),
        ("<known>", "[1, 2]", "JSON object"),
        ("<known>", json.dumps({f"b{i}": 1 for i in range(3000)}), "20,000"),
        ("<known>", json.dumps({"verdicts": {"clip": 1}, "reason": "r" * 5000}), "not saved"),
        ("<known>", json.dumps({"verdicts": {"clip": 1}, "best": "all_wrong"}), "not saved"),
        ("<known>", json.dumps({}), "nothing to save"),
    ],
    ids=[
        "unknown-id", "empty-id", "500-char-id", "none-id", "unknown-backend", "verdict-5", "verdict-text",
        "bad-json", "json-list", "huge-json", "5000-char-reason", "contradiction", "empty",
    ],
)
def test_bad_judgment_is_refused_and_nothing_is_stored(runtime, api, query_id, verdicts, message) -> None:
    known = api.compare(CAT, "What animal is this?", "cat, dog")["query_id"]
    before = _counts(runtime)
    with pytest.raises(gr.Error, match=message):
        api.judge(known if query_id == "<known>" else query_id, verdicts, "tester")
    assert _counts(runtime) == before
    _good_request_succeeds(api)


def test_compare_tab_save_for_a_query_that_does_not_exist(runtime) -> None:
    view = CompareView(runtime)
    forged = QueryState(query_id="00000000000000000000000000000000")
    status = view.save(forged, "✓ correct", "✗ wrong", None, "", "", "tester")[0]
    assert status.startswith("⚠️ Not saved") and "unknown query id" in status
    empty = view.save(QueryState(), "✓ correct", None, None, "", "", "tester")[0]
    assert (empty["value"] if isinstance(empty, dict) else empty).startswith("⚠️ Ask a question first")


def test_stats_reply_holds_nothing_gradio_client_would_fetch_as_a_file(runtime, api) -> None:
    """gradio_client downloads every {"path": str} dict of a reply; a router version's folder was one,
    so /stats failed with 403 for every client once a router had been trained."""
    runtime.store.record_router_version("v-hard-inputs", "/nowhere/routers/v-hard-inputs", {"kind": "embedding"})
    stats = api.stats()
    assert any(v.get("version") == "v-hard-inputs" for v in stats["router_versions"])
    assert "/nowhere/routers" not in json.dumps(stats)

    def file_like(value) -> bool:
        if isinstance(value, dict):
            return isinstance(value.get("path"), str) or any(file_like(v) for v in value.values())
        if isinstance(value, list):
            return any(file_like(v) for v in value)
        return False

    assert not file_like(stats)
    result = api.compare(CAT, "Is this a cat or a dog?", "")
    assert not file_like(result) and not file_like(api.route(CAT, "What is this?"))


# ------------------------------------------------------------------------------------------ properties
#: Kept on purpose: they join emoji sequences (👩‍🚀) and Persian/Indic letters.
ZERO_WIDTH_JOINERS = "\u200c\u200d"
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=400)


@given(_TEXT)
def test_property_clean_question_returns_printable_capped_text_or_a_clear_error(question: str) -> None:
    try:
        clean = clean_question(question)
    except InputError as exc:
        visible = " ".join("".join(ch for ch in question if ch.isprintable() or ch in "\n\t").split())
        assert not visible or len(visible) > MAX_QUESTION_INPUT_CHARS, exc
        return
    assert clean and len(clean) <= MAX_QUESTION_CHARS
    flag_tags = all(ch.isprintable() or prev == "\U0001f3f4" or "\U000e0020" <= prev <= "\U000e007f"
                    for prev, ch in zip(" " + clean, clean, strict=False))
    assert all(ch.isprintable() or ch in ZERO_WIDTH_JOINERS or "\U000e0020" <= ch <= "\U000e007f" for ch in clean)
    assert flag_tags, "a tag character that is not part of a flag emoji"
    assert clean == clean.strip() and "  " not in clean


def test_a_lone_tag_character_is_not_a_question_but_a_flag_emoji_stays() -> None:
    with pytest.raises(InputError):
        clean_question("\U000e0020")
    scotland = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
    assert clean_question(f"Whose flag is {scotland}?") == f"Whose flag is {scotland}?"


@given(_TEXT)
def test_property_split_label_list_gives_clean_distinct_labels(text: str) -> None:
    labels = split_label_list(text)
    assert len(labels) <= MAX_LABELS
    assert all(label and len(label) <= 80 for label in labels)
    assert not any(sep in label for label in labels for sep in (",", "\n", ";"))
    assert len({label.casefold() for label in labels}) == len(labels)


@given(st.lists(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30), max_size=30))
def test_property_labels_shown_then_sent_again_stay_the_same(parts: list[str]) -> None:
    """The Compare tab writes ", ".join(labels) back into the labels box; asking again must not change them."""
    labels = resolve_labels("What is it?", ", ".join(parts))
    assert resolve_labels("What is it?", ", ".join(labels)) == labels


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT)
def test_property_labels_from_question_are_options_taken_from_the_question(question: str) -> None:
    options = labels_from_question(question)
    assert options == [] or len(options) >= 2
    flat = " ".join(question.split())
    for option in options:
        assert option and len(option.split()) <= 6 and option in flat
    assert len({o.casefold() for o in options}) == len(options)


@given(_TEXT, _TEXT)
def test_property_resolve_labels_never_fails_and_drops_control_characters(question: str, labels_text: str) -> None:
    cleaned = " ".join("".join(ch for ch in question if ch.isprintable()).split())  # as Runtime.prepare passes it
    labels = resolve_labels(cleaned, labels_text)
    assert len(labels) <= MAX_LABELS
    assert all(ch.isprintable() or ch in ZERO_WIDTH_JOINERS for label in labels for ch in label)


# ------------------------------------------------------------------------------------------ through gradio_client


@pytest.mark.slow
def test_hard_inputs_through_gradio_client_against_the_launched_app(tmp_path, files) -> None:
    """The worst files and strings over HTTP: each gets its message, the server answers the next one."""
    from gradio_client import Client, handle_file

    from tests.live_app import VISION_ONLY_PRESET, launched_app

    preset = tmp_path / "vision-only.toml"
    preset.write_text(VISION_ONLY_PRESET)
    with launched_app(tmp_path / "routelens.sqlite", preset=str(preset)) as url:
        client = Client(url, verbose=False)

        def good() -> None:
            result = client.predict(handle_file(CAT), "Is this a cat or a dog?", "", api_name="/compare")
            assert result["answers"]["efficientnet-lite0"]["text"] == "cat", result

        bad = [
            ((handle_file(files["text-named.png"]), "What is this?", ""), "not an image"),
            ((handle_file(files["truncated.jpg"]), "What is this?", ""), "damaged or truncated"),
            ((handle_file(files["bomb-30000x30000.png"]), "What is this?", ""), "too large"),
            ((handle_file(CAT), "", ""), "type a question"),
            ((handle_file(CAT), "x" * 100_000, ""), "under 10,000"),
        ]
        for args, message in bad:
            with pytest.raises(Exception, match=message):
                client.predict(*args, api_name="/compare")
            good()
        for name in GOOD_FILES:
            result = client.predict(handle_file(files[name]), "What is this?", "", api_name="/compare")
            assert result["answers"]["efficientnet-lite0"]["error"] is None, (name, result)
        result = client.predict(handle_file(CAT), f"{SCRIPT} 🐱 {SQLISH[0]}", f"{IMG}, חתול", api_name="/compare")
        assert result["labels"] == [IMG, "חתול"]
        with pytest.raises(Exception, match="unknown query id"):
            client.predict("no-such-query", json.dumps({"efficientnet-lite0": 1}), "x", api_name="/judge")
        good()
