"""``python -m router bootstrap`` and the app's background bootstrap: resume, failures, limits, a version at the end.

Fast tests answer a small set of generated photos with test-double backends (``build=`` injects them) and
train with the hashing encoder; the slow one runs the real offline preset over 80 items.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from backends.base import Backend, ModelReply
from backends.presets import parse_preset
from components.runtime import AppConfig, Runtime
from data.store import Store
from router import bootstrap
from router.__main__ import build_parser
from router.__main__ import main as router_main
from router.bootstrap import (
    QUERY_PREFIX,
    BootstrapError,
    BootstrapItem,
    BootstrapRun,
    held_out_keys,
    load_items,
    query_id_for,
    take,
)
from router.bootstrap_background import IdleGate, needs_first_router
from router.features import HashingTextEncoder
from tests.doubles import EchoBackend

N_IMAGES = 12
QUESTIONS = [
    ("What shape is this?", "circle", "object"),
    ("How many shapes are there?", "2", "counting"),
    ("Is this a circle or a square?", "circle", "object"),
    ("What would happen if the shape moved?", "2", "reasoning"),
]


class FlakyBackend(Backend):
    """Answers "2", except on its ``fail_on``-th call, where it raises ``exc`` (once per instance)."""

    kind = "vlm+llm"
    family = "test_flaky"

    def __init__(self, name: str, *, fail_on: int = 0, exc: BaseException | None = None, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(name, **kw)
        self.fail_on = fail_on
        self.exc = exc or RuntimeError("model crashed")
        self.calls = 0

    def _load(self) -> None:
        pass

    def _answer(self, image, question, labels):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == self.fail_on:
            raise self.exc
        return ModelReply(text="2")


@pytest.fixture()
def eval_set(tmp_path: Path) -> Path:
    """48 items: 12 distinct generated photos x 4 questions, in the eval-set JSONL format."""
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(N_IMAGES):
        image = Image.new("RGB", (48, 48), (20 * i % 255, 40 + 13 * i % 200, 90))
        image.paste((250, 250 - 15 * i, 10 * i), (4 + i, 6, 30 + i, 30))
        image.save(folder / "images" / f"img{i}.png")
        for k, (question, answer, category) in enumerate(QUESTIONS):
            lines.append({"id": f"img{i}-{k}", "image": f"images/img{i}.png", "question": question,
                          "answer": answer, "category": category})
    path = folder / "set.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def _items(eval_set: Path, limit: int | None = None) -> list[BootstrapItem]:
    return load_items([(str(eval_set), str(eval_set))], limit)


def _pairs(db: Path) -> list[tuple[str, str, float, str | None]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT query_id, backend, correct, extra FROM imported_pairs ORDER BY id").fetchall()
    return [(q, b, c, json.loads(extra or "{}").get("error")) for q, b, c, extra in rows]


def _echo() -> EchoBackend:
    return EchoBackend("clip", kind="vlm", cost=0.1)


def test_a_backend_that_fails_on_an_item_is_recorded_as_failed_and_the_rest_go_on(tmp_path: Path, eval_set: Path) -> None:
    flaky = FlakyBackend("llava", fail_on=3, cost=1.0)
    with Store.open(tmp_path / "db.sqlite") as store:
        stats = BootstrapRun([_echo(), flaky], _items(eval_set), store).run()
    assert (stats.answered, stats.pairs_stored, stats.failed_pairs) == (48, 96, 1)
    rows = _pairs(tmp_path / "db.sqlite")
    failed = [r for r in rows if r[3] is not None]
    assert len(failed) == 1 and failed[0][1] == "llava" and failed[0][2] == 0.0
    assert failed[0][3] == "RuntimeError: model crashed"
    # the same query's other backend, and every later item, were answered
    assert any(q == failed[0][0] and b == "clip" and e is None for q, b, _, e in rows)
    assert sum(1 for r in rows if r[1] == "llava" and r[3] is None) == 47


def test_an_interrupted_run_resumes_where_it_stopped_without_duplicates(tmp_path: Path, eval_set: Path) -> None:
    db = tmp_path / "db.sqlite"
    items = _items(eval_set)
    with Store.open(db) as store, pytest.raises(KeyboardInterrupt):
        BootstrapRun([_echo(), FlakyBackend("llava", fail_on=3, exc=KeyboardInterrupt())], items, store).run()
    kept = _pairs(db)
    assert 4 <= len(kept) <= 5  # items 1-2 whole, and item 3's clip answer if it came first
    assert all(e is None for *_, e in kept)  # an interruption is no failure of the backend

    clip, llava = _echo(), FlakyBackend("llava")
    with Store.open(db) as store:
        stats = BootstrapRun([clip, llava], items, store).run()
    rows = _pairs(db)
    assert len(rows) == 96 and len({(q, b) for q, b, *_ in rows}) == 96
    assert stats.already_stored == 2 and stats.answered == 46
    assert clip.calls + llava.calls == 96 - len(kept)  # only what was missing was asked
    assert all(q.startswith(QUERY_PREFIX) for q, *_ in rows)


def test_the_limit_is_respected_and_spread_over_the_sets(tmp_path: Path, eval_set: Path) -> None:
    assert len(_items(eval_set, 7)) == 7
    assert take([list(range(10)), list(range(100, 103))], 8) == [0, 2, 4, 6, 8, 100, 101, 102]
    assert take([list(range(10)), list(range(100, 110))], 4) == [0, 5, 100, 105]
    assert take([list(range(3))], 10) == [0, 1, 2]
    with pytest.raises(BootstrapError, match="at least 1"):
        take([[1]], 0)
    with Store.open(tmp_path / "db.sqlite") as store:
        stats = BootstrapRun([_echo(), FlakyBackend("llava")], _items(eval_set, 5), store).run()
    assert stats.total == stats.answered == 5 and len(_pairs(tmp_path / "db.sqlite")) == 10


def test_the_held_out_part_is_refused_and_its_photos_are_left_out(tmp_path: Path, eval_set: Path) -> None:
    with pytest.raises(BootstrapError, match="no router trains on"):
        bootstrap.bootstrap_specs(None, [str(bootstrap.ROOT / bootstrap.HELD_OUT_SET)])
    keys = held_out_keys()
    assert keys, "the suite's evaluation part has photos"
    items = _items(eval_set)
    every_photo = held_out_keys(eval_set)
    with Store.open(tmp_path / "db.sqlite") as store:
        stats = BootstrapRun([_echo(), FlakyBackend("llava")], items, store, held_out=every_photo).run()
    assert stats.held_out == 48 and stats.pairs_stored == 0


def test_too_few_backends_that_load_is_a_clear_error(tmp_path: Path, eval_set: Path) -> None:
    from tests.doubles import FailingLoadBackend

    with Store.open(tmp_path / "db.sqlite") as store, pytest.raises(BootstrapError, match="at least 2 backends that load; 1 did"):
        BootstrapRun([_echo(), FailingLoadBackend("llava")], _items(eval_set), store).run()


def _preset_file(tmp_path: Path, eval_set: Path) -> Path:
    path = tmp_path / "doubles.toml"
    path.write_text(
        f'name = "doubles"\n[router]\nbootstrap = ["{eval_set}"]\n'
        '[[backends]]\nname = "clip"\nfamily = "open_clip"\ncost = 0.1\n'
        '[[backends]]\nname = "llava"\nfamily = "hf_vision"\ncost = 1.0\n',
        encoding="utf-8",
    )
    return path


def test_the_command_stores_trains_activates_and_router_versions_shows_it(
    tmp_path: Path, eval_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "var" / "db.sqlite"
    argv = ["bootstrap", "--preset", str(_preset_file(tmp_path, eval_set)), "--db", str(db), "--encoder", "hashing"]
    build = lambda preset, quantize: [_echo(), FlakyBackend("llava", fail_on=5, cost=1.0)]  # noqa: E731
    assert bootstrap.main(build_parser().parse_args(argv), build=build) == 0
    out = capsys.readouterr().out
    assert "48 of 48 items: 48 answered" in out and "96 pairs stored, 1 of them failed" in out
    assert "wall time per answered item:" in out and "routed_accuracy" in out
    version = out.split("router ", 1)[1].split(":", 1)[0]
    assert "promoted (now active)" in out

    assert router_main(["versions", "--db", str(db)]) == 0
    listing = capsys.readouterr().out
    assert f"* {version}" in listing

    # a rerun finds everything stored and asks nobody
    again = [_echo(), FlakyBackend("llava", cost=1.0)]
    assert bootstrap.main(build_parser().parse_args([*argv, "--json"]), build=lambda p, q: again) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bootstrap"]["already_stored"] == 48 and report["bootstrap"]["answered"] == 0
    assert again[0].calls == again[1].calls == 0 and len(_pairs(db)) == 96
    assert "routed_accuracy" in report["evaluate"]


def test_the_command_says_when_there_is_too_little_to_train(tmp_path: Path, eval_set: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bootstrap", "--preset", str(_preset_file(tmp_path, eval_set)), "--db", str(tmp_path / "db.sqlite"),
            "--encoder", "hashing", "--limit", "6"]
    with pytest.raises(BootstrapError, match="12 new pairs stored, but no router was trained: too few"):
        bootstrap.main(build_parser().parse_args(argv), build=lambda p, q: [_echo(), FlakyBackend("llava")])
    assert len(_pairs(tmp_path / "db.sqlite")) == 12


def test_the_idle_gate_holds_the_bootstrap_while_a_question_is_answered() -> None:
    gate, passed = IdleGate(), threading.Event()
    waiter = threading.Thread(target=lambda: (gate.wait_idle(poll_s=0.05), passed.set()))
    with gate.busy():
        waiter.start()
        deadline = time.monotonic() + 10
        while gate.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.waiting == 1 and gate.is_busy
        assert not passed.wait(0.2)
    assert passed.wait(5) and not gate.is_busy
    waiter.join(5)


def test_query_ids_depend_on_the_photo_and_question_only() -> None:
    assert query_id_for("a" * 64, "what?") == query_id_for("a" * 64, "what?") != query_id_for("a" * 64, "why?")


class _FastRuntime(Runtime):
    """The hashing encoder instead of MiniLM, so the test trains in seconds."""

    def _router_text_encoder(self):  # type: ignore[no-untyped-def]
        return HashingTextEncoder()


def _runtime(tmp_path: Path, eval_set: Path, *, bootstrap_on: bool = True, pairs: bool = False) -> tuple[Runtime, list[Backend]]:
    router_cfg: dict = {"bootstrap": [str(eval_set)]}
    if pairs:
        router_cfg["pairs"] = ["data/benchmarks/offline_pairs_photos.jsonl"]
    preset = parse_preset(
        {"name": "doubles", "router": router_cfg,
         "backends": [{"name": "clip", "family": "open_clip"}, {"name": "llava", "family": "hf_vision"}]},
        "test",
    )
    backends: list[Backend] = [_echo(), FlakyBackend("llava", cost=1.0)]
    config = AppConfig(db_path=tmp_path / "app" / "db.sqlite", bootstrap=bootstrap_on)
    return _FastRuntime(config, preset=preset, backends=backends), backends


def test_the_app_builds_a_first_router_in_the_background_after_yielding_to_questions(tmp_path: Path, eval_set: Path) -> None:
    runtime, backends = _runtime(tmp_path, eval_set)
    try:
        with runtime.activity.busy():  # a question being answered: no bootstrap item may start
            assert runtime.wait_until_loaded(60)
            assert runtime.bootstrap is not None and runtime.bootstrapping
            deadline = time.monotonic() + 30
            while runtime.activity.waiting == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert runtime.activity.waiting == 1, "the bootstrap waits before its first item"
            assert backends[0].calls == 0 and backends[1].calls == 0
            assert "paused while questions are answered" in runtime.status_lines()[-1]
            assert runtime.route(Image.new("RGB", (8, 8)), "what shape is this?")["version"] == "category-rule"
        assert runtime.bootstrap.join(120)
        assert runtime.bootstrap.state == "done", runtime.bootstrap.result
        assert runtime.router.active.kind == "embedding"
        assert any(line.startswith("First router: version") and line.endswith("is active") for line in runtime.status_lines())
        assert not needs_first_router(runtime.router.active, ["clip", "llava"])
    finally:
        runtime.close()
    # the next start finds the run finished: it asks nobody and says nothing
    again, doubles = _runtime(tmp_path, eval_set)
    try:
        assert again.wait_until_loaded(60) and again.bootstrap is not None and again.bootstrap.join(60)
        assert again.bootstrap.state == "done" and doubles[0].calls == doubles[1].calls == 0
        assert not any(line.startswith("First router") for line in again.status_lines())
    finally:
        again.close()


def test_the_next_start_resumes_a_bootstrap_the_app_was_closed_in(tmp_path: Path, eval_set: Path) -> None:
    """Closed mid-run, then the first start's router training took the partial pairs: the run still resumes."""
    from router.bootstrap import train_first_router

    db = tmp_path / "app" / "db.sqlite"
    db.parent.mkdir()
    with Store.open(db) as store:
        partial = [_echo(), FlakyBackend("llava", cost=1.0)]
        BootstrapRun(partial, _items(eval_set)[:44], store).run()
        assert train_first_router(store, db.parent / "routers", partial, text_encoder=HashingTextEncoder(), image_features=None).promoted
    runtime, backends = _runtime(tmp_path, eval_set)
    try:
        assert runtime.wait_until_loaded(60) and runtime.router.active.kind == "embedding"
        assert runtime.bootstrap is not None and runtime.bootstrap.join(120), runtime.bootstrap.status_line()
        assert backends[0].calls == backends[1].calls == 4
        assert len(_pairs(db)) == 96
        assert runtime.bootstrap.state == "done" and runtime.bootstrap.result is not None
    finally:
        runtime.close()


@pytest.mark.parametrize("why", ["flag off", "preset ships pairs"])
def test_the_app_does_not_bootstrap_when_turned_off_or_when_the_preset_ships_pairs(tmp_path: Path, eval_set: Path, why: str) -> None:
    runtime, backends = _runtime(tmp_path, eval_set, bootstrap_on=why != "flag off", pairs=why == "preset ships pairs")
    try:
        assert runtime.wait_until_loaded(60)
        assert runtime.bootstrap is None and not runtime.bootstrapping
        assert backends[0].calls == 0
    finally:
        runtime.close()


def test_app_flag_turns_the_bootstrap_off() -> None:
    import app

    assert app.parse_args(["--no-bootstrap"]).no_bootstrap and not app.parse_args([]).no_bootstrap


@pytest.mark.slow
def test_the_offline_preset_bootstraps_80_items_to_an_active_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "db.sqlite"
    assert router_main(["bootstrap", "--preset", "offline", "--limit", "80", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "80 of 80 items: 80 answered" in out and "wall time per answered item:" in out
    version = out.split("router ", 1)[1].split(":", 1)[0]
    assert router_main(["versions", "--db", str(db)]) == 0
    assert f"* {version}" in capsys.readouterr().out


def test_store_add_pairs_skips_stored_keys_and_refuses_a_bad_row_whole(tmp_path: Path) -> None:
    row = {"query_id": "bootstrap:x", "question": "what?", "backend": "clip", "correct": 1, "error": None, "dataset": "d"}
    with Store.open(tmp_path / "db.sqlite") as store:
        assert store.add_pairs([row]).imported == 1
        report = store.add_pairs([dict(row, correct=0), dict(row, backend="llava")])
        assert (report.imported, report.skipped) == (1, 1)
        with pytest.raises(ValueError, match="pair 1: 'question' must not be empty"):
            store.add_pairs([dict(row, backend="other"), dict(row, backend="bad", question=" ")])
        stored = list(store.performance_pairs(source="benchmark"))
    assert [(r["backend"], r["correct"], r["dataset"]) for r in stored] == [("clip", 1.0, "d"), ("llava", 1.0, "d")]


def test_closing_the_app_while_the_bootstrap_waits_leaves_the_item_for_the_next_start(tmp_path: Path, eval_set: Path) -> None:
    runtime, backends = _runtime(tmp_path, eval_set)
    with runtime.activity.busy():
        assert runtime.wait_until_loaded(60) and runtime.bootstrap is not None
        deadline = time.monotonic() + 30
        while runtime.activity.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        runtime.bootstrap.stop()
        assert runtime.bootstrap.state == "stopped" and not runtime.bootstrapping
    runtime.close()
    assert backends[0].calls == backends[1].calls == 0 and _pairs(tmp_path / "app" / "db.sqlite") == []
