"""The Leaderboard & router tab without a browser: its handlers and figures on a small real Store, a Runtime
with test-double backends and a router service that trains with the hashing text encoder (seconds)."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from backends.presets import parse_preset
from components.figures import is_empty_figure
from components.leaderboard_tab import LeaderboardView, versions_figure, with_outcomes
from components.learning_curve import REJECTED_LABEL, versions_learning_figure
from components.runtime import AppConfig, Runtime
from router.base import choices_from_backends
from router.features import HashingTextEncoder
from router.lifecycle import RetrainProgress
from router.report import training_rows_line
from router.service import RouterService
from tests.doubles import EchoBackend
from tests.test_router_support import colour_histogram, make_pairs, write_jsonl

CAT = str(Path(__file__).resolve().parent.parent / "data" / "examples" / "chelsea.jpg")
#: The refresh outputs, by name (LeaderboardView.refresh's order).
OUTPUTS = ["counts", "accuracy", "ratings", "versions", "reliability", "version", "learning", "simulated", "cost_quality", "scope"]
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _runtime(tmp_path: Path, pairs: list[Path] = (), *, image_features: bool = False) -> Runtime:
    preset = parse_preset({"name": "doubles", "backends": [{"name": "clip", "family": "open_clip"}, {"name": "llava", "family": "hf_vision"}]}, "t")
    backends = [EchoBackend("clip", kind="vlm", cost=0.1), EchoBackend("llava", kind="vlm+llm", word="a circle", cost=1.0)]
    runtime = Runtime(AppConfig(db_path=tmp_path / "db.sqlite"), preset=preset, backends=backends)
    # The app's router service, but with the hashing encoder (no MiniLM) and benchmark pairs of its own.
    runtime.router = RouterService(
        backends=lambda: choices_from_backends(runtime.backends), text_encoder=HashingTextEncoder, store=runtime.store,
        versions_dir=tmp_path / "routers", pairs=list(pairs),
        image_features=(lambda: (colour_histogram, "colour-histogram")) if image_features else None,
    )
    return runtime


@pytest.fixture()
def runtime(tmp_path):
    rt = _runtime(tmp_path)
    rt.start_loading()
    assert rt.wait_until_loaded(60)
    yield rt
    rt.close()


def _refresh(view: LeaderboardView) -> dict:
    return dict(zip(OUTPUTS, view.refresh(), strict=True))


def _judge(rt: Runtime, n: int) -> None:
    """``n`` judged queries on distinct images: clip right on recognition questions, llava on the others."""
    for i in range(n):
        image = Image.new("RGB", (40, 40), (i * 7 % 256, i * 13 % 256, i * 29 % 256))
        recognition = i % 2 == 0
        question = f"What object is shown in photo {i}?" if recognition else f"Why would someone do this, case {i}?"
        result = rt.compare_all(image, question, "")
        rt.judge(result.query_id, {"clip": 1.0, "llava": 0.0} if recognition else {"clip": 0.0, "llava": 1.0}, client_key=f"k{i}")


# ---------------------------------------------------------------- 1. rejected retrain attempts
def _card(version: str, accuracy: float, *, promoted: bool | None, reason: str = "", judged: int = 0) -> dict:
    card = {"version": version, "kind": "embedding", "created_at": f"2026-12-0{version[-1]}T00:00:00Z",
            "metrics": {"routed_accuracy": accuracy, "best_single_accuracy": 0.5, "oracle_accuracy": 0.9,
                        "routed_accuracy_ci95": [accuracy - 0.05, accuracy + 0.05], "judged_queries": judged}}
    if promoted is not None:
        card["promotion"] = {"promoted": promoted, "reason": reason}
    return card


def test_rejected_attempts_are_grey_crosses_off_the_line_with_the_reason_on_hover(runtime, tmp_path) -> None:
    store = runtime.store
    reason = "routed accuracy on the same 40 held-out queries: candidate 0.5500 vs active v1 0.7000, difference -0.1500"
    store.record_router_version("v1", tmp_path / "v1", _card("v1", 0.70, promoted=True, reason="no active router yet", judged=0))
    store.record_router_version("v2", tmp_path / "v2", _card("v2", 0.55, promoted=False, reason=reason, judged=10))
    store.record_router_version("v3", tmp_path / "v3", _card("v3", 0.74, promoted=True, reason="better", judged=20), active=True)
    store.record_router_version("v4", tmp_path / "v4", _card("v4", 0.60, promoted=None, judged=25))  # no record: counts as promoted

    outputs = _refresh(LeaderboardView(runtime))
    versions, learning = outputs["versions"], outputs["learning"]
    lines = [t for t in versions.data if "lines" in (t.mode or "")]
    assert [t.name for t in lines] == ["routed", "best single", "oracle"]
    for line in lines:  # the rejected v2 is on no line: 70 -> 74 -> 60, never the dip to 55
        assert list(line.x) == ["v1", "v3", "v4"]
    assert list(lines[0].y) == pytest.approx([70.0, 74.0, 60.0])
    (rejected,) = [t for t in versions.data if t.name == REJECTED_LABEL]
    assert list(rejected.x) == ["v2"] and list(rejected.y) == pytest.approx([55.0])
    assert rejected.mode == "markers" and rejected.marker.symbol == "x-open" and rejected.marker.color == "#94a3b8"
    assert rejected.customdata[0][0] == "v2" and "candidate 0.5500 vs active v1" in rejected.customdata[0][1].replace("<br>", " ")
    assert list(versions.layout.xaxis.categoryarray) == ["v1", "v2", "v3", "v4"]  # made in this order, v2 in place
    assert "1 rejected" in versions.layout.title.text
    assert ("v2 (not promoted)", "v2") in outputs["version"]["choices"] and outputs["version"]["value"] == "v3"

    (served,) = [t for t in learning.data if (t.mode or "") == "markers+lines"]
    assert list(served.x) == [0, 20, 25] and list(served.y) == pytest.approx([70.0, 74.0, 60.0])
    (crosses,) = [t for t in learning.data if t.name == REJECTED_LABEL]
    assert list(crosses.x) == [10] and list(crosses.y) == pytest.approx([55.0])
    assert "held-out queries" in crosses.customdata[0][1]

    # a rejected attempt that was rolled back to is active: it serves, so it is on the line
    store.set_active_router("v2")
    rolled = _refresh(LeaderboardView(runtime))["versions"]
    assert list(rolled.data[0].x) == ["v1", "v2", "v3", "v4"]
    assert not [t for t in rolled.data if t.name == REJECTED_LABEL]


def test_outcomes_come_from_the_version_card_when_the_store_has_none(tmp_path) -> None:
    folder = tmp_path / "v9"
    folder.mkdir()
    card = {**_card("v9", 0.4, promoted=False, reason="worse"), "feature_config": {}}  # what read_card requires
    (folder / "card.json").write_text(json.dumps(card), encoding="utf-8")
    rows = with_outcomes([{"version": "v9", "path": str(folder), "routed_accuracy": 0.4, "active": False},
                          {"version": "v8", "path": str(tmp_path / "missing"), "routed_accuracy": 0.5, "active": False}], None)
    assert [(r["promoted"], r["promotion_reason"]) for r in rows] == [(False, "worse"), (None, None)]
    figure = versions_figure(rows)
    assert list(figure.data[0].x) == ["v8"] and [t.x[0] for t in figure.data if t.name == REJECTED_LABEL] == ["v9"]
    assert not [t for t in versions_learning_figure(rows[1:]).data if t.name == REJECTED_LABEL]


# ---------------------------------------------------------------- 2. retrain progress and the report
def test_retrain_progress_follows_the_real_steps_and_the_report_counts_both_sources(tmp_path) -> None:
    pairs = write_jsonl(make_pairs(40, seed=3, image_dir=tmp_path / "photos"), tmp_path / "pairs.jsonl")
    rt = _runtime(tmp_path, [pairs], image_features=True)
    try:
        rt.start_loading()
        assert rt.wait_until_loaded(120)
        first = rt.router.active.version  # built from the pairs at start
        assert first != "category-rule"
        _judge(rt, 12)
        calls: list[tuple[float, str]] = []
        report = LeaderboardView(rt).retrain(False, lambda fraction, desc="": calls.append((fraction, desc)))
        assert not report.startswith("⚠️"), report

        fractions = [f for f, _ in calls]
        assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
        descs = [d for _, d in calls]
        firsts = [next(i for i, d in enumerate(descs) if d.startswith(f"Step {k} of 5")) for k in range(1, 6)]
        assert firsts == sorted(firsts), descs  # reading, features, training, evaluation, promotion: in order
        assert "judgments" in descs[firsts[0]] and "52 images to embed and 86 questions to encode" in descs[firsts[1]]
        assert "training" in descs[firsts[2]] and "evaluating" in descs[firsts[3]] and f"active router {first}" in descs[firsts[4]]
        # the features step moves per image embedded (40 photos + 12 judged ones), then with the questions
        images = [f for f, d in calls if re.match(r"Step 2 of 5 · features: image \d+ of 52 embedded", d)]
        assert len(images) >= 10 and len(set(images)) == len(images)
        assert RetrainProgress.start_of("features") < images[0] < images[-1] < RetrainProgress.start_of("training")
        assert any("86 of 86 questions encoded" in d for d in descs)  # 86 distinct questions (templates repeat)
        # the promotion decision moves as the active router scores the held-out images
        scored = [f for f, d in calls if "the active router scores held-out image" in d]
        assert len(scored) >= 3 and RetrainProgress.start_of("promotion") < scored[0] < scored[-1] <= RetrainProgress.start_of("done")

        # 12 judged queries x 2 backends from people; 40 images x 3 questions x clip and llava from the pairs
        # ("slow" is not a backend of this app, so its rows are not read)
        assert "Trained on 264 rows (132 queries): 24 from people's judgments, 240 benchmark pairs." in report
        versions = _refresh(LeaderboardView(rt))["versions"]
        newest = rt.router.versions()[-1]["version"]
        rejected = [x for t in versions.data if t.name == REJECTED_LABEL for x in t.x]
        assert (newest in rejected) == ("Not promoted" in report)  # the chart says what the report said

        # the page's handler streams those steps into the report box, then the report (forced: promoted)
        view = LeaderboardView(rt)
        frames = list(view.retrain_stream(True, every_s=0.0))
        shown = [int(m.group(1)) for frame in frames[:-1] if (m := re.search(r"`[▰▱]+` (\d+)%", frame))]
        assert len(shown) == len(frames) - 1 >= 5 and shown == sorted(shown) and len(set(shown)) >= 4, frames
        assert any("Step 2 of 5" in f for f in frames) and any("Step 5 of 5" in f for f in frames)
        assert frames[-1].startswith("✓ **promoted**") and "Trained on 264 rows" in frames[-1]
        assert rt.router.active.version == rt.router.versions()[-1]["version"]
        assert view._retraining.acquire(blocking=False)  # released when done; while held, a second one is refused
        assert list(view.retrain_stream(False)) == ["⚠️ A retrain is already running; its report appears where it was started."]
    finally:
        rt.close()


def test_retrain_failure_is_a_message_and_a_broken_bar_never_stops_training(runtime) -> None:
    message = LeaderboardView(runtime).retrain(False, lambda *a, **k: None)
    assert message.startswith("⚠️ Retraining failed") and "at least 2 backends" in message
    seen: list[float] = []

    def broken(fraction, desc=""):
        seen.append(fraction)
        raise RuntimeError("the page went away")

    steps = RetrainProgress(broken)
    steps.report("reading", "Step 1")
    steps.expect_features(0, 10)
    steps.questions_encoded(10)
    assert steps.step == "training" and steps.fraction == pytest.approx(RetrainProgress.start_of("training")) and seen == [0.02]  # once, then quiet


def test_training_rows_line_names_both_sources() -> None:
    line = training_rows_line({"pair_rows": 1234, "queries": 600, "sources": {"judgment": 56, "benchmark": 1178}})
    assert line == "Trained on 1,234 rows (600 queries): 56 from people's judgments, 1,178 benchmark pairs."
    assert training_rows_line({"pair_rows": 10, "sources": {"benchmark": 10}}) == "Trained on 10 rows: 0 from people's judgments, 10 benchmark pairs."


# ---------------------------------------------------------------- 3. the export
def _read_csv(path: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(Path(path).read_text(encoding="utf-8"))))


def _no_paths(rows: list[dict[str, str]], *roots: Path) -> None:
    for row in rows:
        for column, value in row.items():
            assert not (value or "").startswith("/"), (column, value)
            assert not re.match(r"^[A-Za-z]:\\", value or ""), (column, value)
            assert all(str(root) not in (value or "") for root in roots), (column, value)


def test_the_csv_export_is_one_csv_without_server_paths(runtime, tmp_path) -> None:
    _judge(runtime, 2)
    photo = tmp_path / "photos" / "pic.png"
    photo.parent.mkdir()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(photo)
    imported = write_jsonl([{"query_id": "ext-1", "question": "what colour?", "image": str(photo), "backend": backend,
                             "correct": 1.0, "source": "benchmark"} for backend in ("clip", "llava")], tmp_path / "ext.jsonl")
    assert runtime.store.import_pairs(imported).imported == 2
    view = LeaderboardView(runtime)
    root = Path(__file__).resolve().parent.parent

    update, status = view.export("csv", "judgments")
    path = Path(update["value"])
    assert path.name == "routelens-judgments.csv" and update["label"].startswith("routelens-judgments.csv: 4 judged answers")
    rows = _read_csv(update["value"])
    assert len(rows) == 4 and all(SHA256.match(r["image_sha256"]) for r in rows)
    _no_paths(rows, tmp_path, root)
    assert "/" not in update["label"] and "/" not in status.replace("sha256", "")

    update, _ = view.export("csv", "performance pairs")
    assert Path(update["value"]).name == "routelens-pairs.csv"
    rows = _read_csv(update["value"])
    assert "image" not in rows[0] and len(rows) == 6  # 2 judged queries x 2 backends, and the imported 2
    assert all(SHA256.match(r["image_sha256"]) for r in rows)  # the imported rows' key computed from the photo
    _no_paths(rows, tmp_path, root)

    update, _ = view.export("csv", "both (a zip of two files)")
    archive = Path(update["value"])
    assert archive.name == "routelens-judgments-and-pairs-csv.zip"
    assert "a zip, because it holds two tables" in update["label"]
    with zipfile.ZipFile(archive) as bundle:
        assert sorted(bundle.namelist()) == ["judgments.csv", "pairs.csv"]
        for name in bundle.namelist():
            _no_paths(list(csv.DictReader(io.StringIO(bundle.read(name).decode("utf-8")))), tmp_path, root)

    update, _ = view.export("jsonl", "performance pairs")
    lines = [json.loads(line) for line in Path(update["value"]).read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 6 and all(line["image"] is None and SHA256.match(line["image_sha256"]) for line in lines)


# ---------------------------------------------------------------- 4. empty charts
def test_empty_charts_hide_their_axes_and_say_why(runtime) -> None:
    outputs = _refresh(LeaderboardView(runtime))  # nothing judged, no router version, no cost-quality data
    for name in ("accuracy", "ratings", "versions", "reliability", "learning", "cost_quality"):
        figure = outputs[name]
        assert is_empty_figure(figure), name
        for axis in (figure.layout.xaxis, figure.layout.yaxis):
            assert axis.visible is False and axis.showticklabels is False and axis.showgrid is False, name
        (note,) = figure.layout.annotations
        assert note.text and (note.xref, note.yref, note.x, note.y) == ("paper", "paper", 0.5, 0.5), name
    assert "No judgments yet" in outputs["accuracy"].layout.annotations[0].text
