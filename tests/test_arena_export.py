"""Battles from judgments and the arena export: FastChat's fields, the winner rules, anonymity, and an
independent Bradley-Terry fit (choix) of the exported votes that ranks the backends as the Leaderboard does."""

from __future__ import annotations

import json
import math

import choix
import numpy as np
import pytest
from PIL import Image

from components.study_panel import headline_ratings_figure
from data.__main__ import main as cli
from data.battles import judgment_battles
from data.ratings import bradley_terry_with_ci
from data.store import Store

NAMES = ["alpha", "beta", "gamma"]
ARENA_FIELDS = {"model_a", "model_b", "winner", "anony", "judge", "tstamp", "question_id", "category", "language"}


@pytest.fixture
def store(tmp_path):
    store = Store.open(tmp_path / "db.sqlite")
    yield store
    store.close()


def add_query(store: Store, n: int, category: str = "object", backends=NAMES) -> str:
    sha = store.put_image(Image.new("RGB", (4, 4), (n % 256, n // 256, 7)))
    qid = store.record_query(image_sha256=sha, question=f"q{n}?", category=category)
    for backend in backends:
        store.record_answer(qid, backend, {"text": f"{backend} {n}", "latency_s": 0.1})
    return qid


@pytest.mark.parametrize(("best", "verdicts", "expected"), [
    # one correct, one wrong: the correct one wins; both correct: tie; both wrong: tie (bothbad)
    (None, {"a": 1, "b": 0, "c": 1}, [("a", "b", "model_a"), ("a", "c", "tie"), ("b", "c", "model_b")]),
    (None, {"a": 0, "b": 0}, [("a", "b", "tie (bothbad)")]),
    (None, {"a": 1}, []),  # one backend judged: nothing to compare
    # the best answer decides the pairs it is in; the verdicts decide the others
    ("b", {"a": 1, "c": 0}, [("a", "b", "model_b"), ("a", "c", "model_a"), ("b", "c", "model_a")]),
    ("b", {}, [("a", "b", "model_b"), ("b", "c", "model_a")]),
    ("tie", {}, [("a", "b", "tie"), ("a", "c", "tie"), ("b", "c", "tie")]),
    ("all_wrong", {"a": 0}, [("a", "b", "tie (bothbad)"), ("a", "c", "tie (bothbad)"), ("b", "c", "tie (bothbad)")]),
    (None, {"a": 1, "b": 0.5}, [("a", "b", "model_a")]),
])
def test_battles_from_one_judgment(best, verdicts, expected) -> None:
    assert judgment_battles(best, verdicts, ["a", "b", "c"]) == expected


def test_arena_export_has_fastchats_fields(store, tmp_path, capsys) -> None:
    blind = add_query(store, 1, "ocr")
    seen = add_query(store, 2)
    store.record_judgment(query_id=blind, verdicts={"alpha": 1, "beta": 0}, annotator="ana", blind=True)
    store.record_judgment(query_id=blind, verdicts={"alpha": 1, "beta": 1}, annotator="ben", blind=True,
                          flag_reason="beta's answer names its own model ('beta')")
    store.record_judgment(query_id=seen, verdicts={}, best="gamma", annotator="cy")
    out = tmp_path / "votes.jsonl"
    assert cli(["export", "--db", str(store.path), "--format", "arena", "--out", str(out)]) == 0
    assert f"battles: 4 row(s) -> {out}" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(r) >= ARENA_FIELDS for r in rows)
    assert [(r["model_a"], r["model_b"], r["winner"], r["anony"], r["judge"]) for r in rows] == [
        ("alpha", "beta", "model_a", True, "ana"),
        ("alpha", "beta", "tie", False, "ben"),  # blind, but a model named itself
        ("alpha", "gamma", "model_b", False, "cy"),  # not blind
        ("beta", "gamma", "model_b", False, "cy"),
    ]
    assert rows[0]["question_id"] == blind and rows[0]["category"] == "ocr" and rows[0]["language"] is None
    assert rows[1]["flag_reason"].startswith("beta's answer") and rows[0]["blind"] and not rows[2]["blind"]
    assert all(isinstance(r["tstamp"], float) and r["tstamp"] > 1.7e9 for r in rows)
    assert rows[0]["winner"] in ("model_a", "model_b", "tie", "tie (bothbad)")
    assert cli(["export", "--db", str(store.path), "--format", "arena", "--out", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err


def _simulate(store: Store) -> None:
    """Blind judgments where alpha > beta > gamma (each answer correct with its own probability), and
    non-blind ones that all favour gamma: the fair ranking and the all-votes ranking differ."""
    rng = np.random.default_rng(5)
    chance = {"alpha": 0.85, "beta": 0.55, "gamma": 0.25}
    for n in range(80):
        qid = add_query(store, n, "object" if n % 2 else "reasoning")
        verdicts = {name: int(rng.random() < p) for name, p in chance.items()}
        best = max(verdicts, key=lambda k: (verdicts[k], chance[k] * rng.random())) if n % 3 == 0 else None
        store.record_judgment(query_id=qid, verdicts=verdicts, best=best, annotator=f"a{n % 4}", blind=True)
    for n in range(80, 140):
        qid = add_query(store, n)
        store.record_judgment(query_id=qid, verdicts={"alpha": 0, "beta": 0, "gamma": 1}, annotator="fan")


def _choix_ranking(rows: list[dict], names: list[str]) -> list[str]:
    """An independent Bradley-Terry fit: a win counts twice for the winner, a tie once each way."""
    pairs = []
    for r in rows:
        i, j = names.index(r["model_a"]), names.index(r["model_b"])
        if r["winner"] == "model_a":
            pairs += [(i, j), (i, j)]
        elif r["winner"] == "model_b":
            pairs += [(j, i), (j, i)]
        else:
            pairs += [(i, j), (j, i)]
    theta = choix.ilsr_pairwise(len(names), pairs, alpha=1e-6)
    return [names[k] for k in np.argsort(-theta)]


def test_an_independent_fit_of_the_exported_votes_ranks_as_the_leaderboard(store, tmp_path) -> None:
    _simulate(store)
    out = tmp_path / "votes.jsonl"
    assert cli(["export", "--db", str(store.path), "--format", "arena", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    fair = [r for r in rows if r["anony"]]
    assert len(fair) >= 100 and len(rows) - len(fair) == 60 * 3
    leaderboard = list(headline_ratings_figure(store, NAMES).data[0].y)  # what the Leaderboard draws, best first
    assert leaderboard == _choix_ranking(fair, NAMES) == ["alpha", "beta", "gamma"]
    assert "fair votes" in headline_ratings_figure(store, NAMES).layout.title.text
    # counting every vote (the toggle) the non-blind fan's votes put gamma first, for choix and for us
    every = [r.backend for r in bradley_terry_with_ci(
        [(r["model_a"], r["model_b"], {"model_a": 1.0, "model_b": 0.0}.get(r["winner"], 0.5)) for r in rows], NAMES,
        rounds=10)]
    assert every[0] == "gamma" == _choix_ranking(rows, NAMES)[0]
    # ratings point values agree with choix's on the same scale
    ours = {r.backend: r.rating for r in bradley_terry_with_ci(
        [(r["model_a"], r["model_b"], {"model_a": 1.0, "model_b": 0.0}.get(r["winner"], 0.5)) for r in fair], NAMES,
        rounds=10)}
    pairs = []
    for r in fair:
        i, j = NAMES.index(r["model_a"]), NAMES.index(r["model_b"])
        pairs += {"model_a": [(i, j), (i, j)], "model_b": [(j, i), (j, i)]}.get(r["winner"], [(i, j), (j, i)])
    theta = choix.ilsr_pairwise(3, pairs, alpha=1e-9)
    for k in range(3):
        for m in range(k + 1, 3):
            ours_diff = (ours[NAMES[k]] - ours[NAMES[m]]) * math.log(10) / 400
            assert ours_diff == pytest.approx(theta[k] - theta[m], abs=0.01)


def test_the_leaderboard_counts_every_vote_while_none_is_blind_and_says_so(store) -> None:
    qid = add_query(store, 1)
    assert "No judgments yet" in headline_ratings_figure(store, NAMES).layout.annotations[0].text
    store.record_judgment(query_id=qid, verdicts={"alpha": 1, "beta": 0}, annotator="ana")
    figure = headline_ratings_figure(store, NAMES)
    assert "all 1 votes, none blind yet" in figure.layout.title.text and list(figure.data[0].y)[0] == "alpha"


def test_ratings_per_category_and_the_all_votes_toggle(tmp_path) -> None:
    from backends.presets import parse_preset
    from components.runtime import AppConfig, Runtime
    from components.study_panel import StudyPanel
    from tests.doubles import EchoBackend

    preset = parse_preset({"name": "d", "backends": [{"name": n, "family": "open_clip"} for n in NAMES]}, "test")
    rt = Runtime(AppConfig(db_path=tmp_path / "app.sqlite"), preset=preset, backends=[EchoBackend(n) for n in NAMES])
    try:
        _simulate(rt.store)
        panel = StudyPanel(rt)
        plot, table = panel.ratings("fair", "reasoning")
        assert "fair votes, reasoning" in plot.layout.title.text and len(table) == 3
        assert sum(b.category == "reasoning" for b in rt.store.battles(anonymous_only=True)) == int(
            plot.layout.title.text.split()[3])
        plot_all, _ = panel.ratings("all", "all categories")
        assert list(plot_all.data[0].y)[0] == "gamma"
        refreshed = panel.refresh()
        assert refreshed[5]["choices"] == ["all categories", "object", "reasoning"]
    finally:
        rt.close()


def test_the_rating_chart_has_a_short_title_and_whole_number_ticks(store) -> None:
    qid = add_query(store, 2)
    store.record_judgment(query_id=qid, verdicts={"alpha": 1, "beta": 1}, best="tie", annotator="ana")
    figure = headline_ratings_figure(store, NAMES)
    headline = figure.layout.title.text.split("<br>")[0]
    assert headline == "Bradley-Terry rating", "a long one-line title is cut off on a half-width chart"
    low, high = figure.layout.xaxis.range
    assert high - low >= 50 and figure.layout.xaxis.tickformat == ".0f"  # never a 999 / 999.5 / 1000 axis


def test_download_folders_are_fresh_per_call_and_old_ones_are_pruned(tmp_path) -> None:
    import os
    import time

    from components.staging import staging_folder

    first, second = staging_folder("export-", parent=tmp_path), staging_folder("export-", parent=tmp_path)
    assert first != second and first.is_dir() and not any(first.iterdir())
    (first / "judgments.csv").write_text("a,b\n")
    stale = time.time() - 7200
    os.utime(first, (stale, stale))
    third = staging_folder("arena-", parent=tmp_path, max_age_s=3600)
    assert not first.exists(), "a folder older than max_age_s is removed"
    assert second.exists() and third.exists() and third.name.startswith("arena-")
