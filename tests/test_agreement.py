"""Agreement between annotators: Krippendorff's alpha on a worked example, checked by hand and against the
krippendorff package; per backend, per category, per annotator; disagreements; the command line; and three
annotators judging one query through /judge with the page's words."""

from __future__ import annotations

import json
from pathlib import Path

import krippendorff
import numpy as np
import pytest
from PIL import Image

from data.__main__ import main as cli
from data.agreement import compute, krippendorff_alpha, observed_agreement, report
from data.store import Store

CAT = str(Path(__file__).resolve().parent.parent / "data" / "examples" / "chelsea.jpg")


@pytest.fixture
def store(tmp_path):
    store = Store.open(tmp_path / "db.sqlite")
    yield store
    store.close()


def add_query(store: Store, n: int, category: str, backends=("a", "b"), **query) -> str:
    sha = store.put_image(Image.new("RGB", (4, 4), (n, 0, 0)))
    qid = store.record_query(image_sha256=sha, question=f"question {n}?", category=category, **query)
    for backend in backends:
        store.record_answer(qid, backend, {"text": f"{backend} answer {n}", "latency_s": 0.1})
    return qid


# ------------------------------------------------------------------------------------ the statistic
def test_alpha_of_a_small_example_worked_by_hand() -> None:
    """Two coders, four units: (1,1), (0,0), (1,0), (1,1). Coincidences o11 = 4, o00 = 2, o01 = o10 = 1;
    n1 = 5, n0 = 3, n = 8. D_o = 2/8; D_e = 2 * 5 * 3 / (8 * 7) = 30/56; alpha = 1 - D_o/D_e = 8/15."""
    units = {("q1", "a"): {"x": 1.0, "y": 1.0}, ("q2", "a"): {"x": 0.0, "y": 0.0},
             ("q3", "a"): {"x": 1.0, "y": 0.0}, ("q4", "a"): {"x": 1.0, "y": 1.0}}
    assert krippendorff_alpha(units) == pytest.approx(8 / 15, abs=1e-12)
    assert observed_agreement(units) == 0.75
    assert krippendorff_alpha({("q1", "a"): {"x": 1.0, "y": 1.0}}) is None  # one value only: undefined
    assert krippendorff_alpha({("q1", "a"): {"x": 1.0}, ("q2", "a"): {"x": 0.0}}) is None  # no unit with two values


# Three annotators, five queries, two backends; None = that annotator did not judge that backend.
WORKED = {
    # query: (category, {annotator: (verdict a, verdict b)})
    1: ("object", {"ana": (1, 0), "ben": (1, 0), "cy": (1, 1)}),
    2: ("object", {"ana": (0, 0), "ben": (1, 0), "cy": (0, 0)}),
    3: ("reasoning", {"ana": (1, 1), "ben": (1, None), "cy": (0, 1)}),
    4: ("reasoning", {"ana": (0, 1), "ben": (0, 1)}),
    5: ("object", {"ana": (1, 0)}),  # one annotator only: not an item of the agreement
}


def worked_store(store: Store) -> dict[int, str]:
    ids = {}
    for n, (category, judged) in WORKED.items():
        ids[n] = qid = add_query(store, n, category)
        for annotator, (va, vb) in judged.items():
            store.record_judgment(query_id=qid, verdicts={"a": va, "b": vb}, annotator=annotator,
                                  reason=f"{annotator} on {n}")
    return ids


def package_alpha(queries: list[int], backends: list[str]) -> float:
    """The reliability matrix of the worked example built by hand, given to the krippendorff package."""
    coders = ["ana", "ben", "cy"]
    columns = []
    for n in queries:
        for k, backend in enumerate(("a", "b")):
            if backend in backends:
                judged = WORKED[n][1]
                columns.append([np.nan if c not in judged or judged[c][k] is None else judged[c][k] for c in coders])
    return krippendorff.alpha(reliability_data=np.array(columns, dtype=float).T, level_of_measurement="nominal")


def test_worked_example_against_the_krippendorff_package(store) -> None:
    worked_store(store)
    result = report(store)
    assert result["items"] == 4 and result["units"] == 8 and result["annotators_total"] == 3
    assert result["krippendorff_alpha"] == pytest.approx(package_alpha([1, 2, 3, 4], ["a", "b"]), abs=1e-12)
    assert -1 <= result["krippendorff_alpha"] <= 1
    assert result["per_backend"]["a"]["krippendorff_alpha"] == pytest.approx(package_alpha([1, 2, 3, 4], ["a"]), abs=1e-12)
    assert result["per_backend"]["b"]["krippendorff_alpha"] == pytest.approx(package_alpha([1, 2, 3, 4], ["b"]), abs=1e-12)
    assert result["per_category"]["object"]["krippendorff_alpha"] == pytest.approx(package_alpha([1, 2], ["a", "b"]), abs=1e-12)
    assert result["per_category"]["reasoning"]["items"] == 2
    assert result["per_category"]["reasoning"]["krippendorff_alpha"] == pytest.approx(
        package_alpha([3, 4], ["a", "b"]), abs=1e-12)
    # each annotator against the majority of the others (ties among the others left out):
    # ana: q1a agree, q1b (ben 0, cy 1: tie) -, q2a (1,0 tie) -, q2b agree, q3a (1,0 tie) -, q3b (cy 1) agree,
    #      q4a agree, q4b agree -> 5 of 5
    # cy:  q1a agree, q1b (0,0) disagree, q2a (0,1 tie) -, q2b agree, q3a (1,1) disagree, q3b (ana 1) agree -> 3 of 5
    annotators = result["annotators"]
    assert (annotators["ana"]["compared"], annotators["ana"]["agree"]) == (5, 5)
    assert (annotators["cy"]["compared"], annotators["cy"]["agree"]) == (5, 3)
    assert annotators["cy"]["agreement_with_majority"] == pytest.approx(0.6)
    assert annotators["ben"]["units"] == 7  # ben left q3's b unjudged


def test_an_annotators_latest_verdict_counts_once(store) -> None:
    qid = add_query(store, 1, "object")
    store.record_judgment(query_id=qid, verdicts={"a": 0}, annotator="ana")
    store.record_judgment(query_id=qid, verdicts={"a": 1}, annotator="ana")  # changed her mind
    store.record_judgment(query_id=qid, verdicts={"a": 1}, annotator="ben")
    result = report(store)
    assert result["items"] == 1 and result["units"] == 1 and result["disagreements"] == []
    assert result["observed_agreement"] == 1.0 and result["krippendorff_alpha"] is None  # no variation: undefined


def test_disagreements_list_verdicts_reasons_and_the_final_verdict(store) -> None:
    ids = worked_store(store)
    result = report(store)
    split = {d["query_id"]: d for d in result["disagreements"]}
    assert set(split) == {ids[1], ids[2], ids[3]}  # q4: ana and ben agree
    first = split[ids[1]]
    assert first["backends"]["b"]["split"] and not first["backends"]["a"]["split"]
    assert first["backends"]["b"]["verdicts"] == {"ana": 0.0, "ben": 0.0, "cy": 1.0}
    assert first["backends"]["b"]["answer"] == "b answer 1" and first["reasons"]["cy"] == "cy on 1"
    assert first["question"] == "question 1?" and first["category"] == "object" and not first["adjudicated"]
    store.record_adjudication(query_id=ids[1], verdicts={"b": 0}, adjudicator="lead", reason="b misses the dog")
    again = {d["query_id"]: d for d in report(store)["disagreements"]}[ids[1]]
    assert again["adjudicated"] and again["backends"]["b"]["final"]["adjudicator"] == "lead"


def test_session_filter(store) -> None:
    sid = store.start_session("ana", "set", ["i1"], k=2)
    inside = add_query(store, 1, "object", session_id=sid, item_id="i1")
    outside = add_query(store, 2, "object")
    for who, verdict in (("ana", 1), ("ben", 0)):
        store.record_judgment(query_id=inside, verdicts={"a": verdict}, annotator=who, session_id=sid)
        store.record_judgment(query_id=outside, verdicts={"a": 1}, annotator=who)
    assert report(store)["items"] == 2
    scoped = report(store, session_id=sid)
    assert scoped["items"] == 1 and scoped["session"] == sid and scoped["observed_agreement"] == 0.0


def test_compute_needs_no_store() -> None:
    rows = [{"query_id": "q", "judgment_id": i, "backend": "a", "correct": v, "annotator": who}
            for i, (who, v) in enumerate((("x", 1.0), ("y", 0.0), ("z", 0.0)))]
    result = compute(rows)
    assert result["items"] == 1 and result["per_category"]["unknown"]["units"] == 1
    assert result["annotators"]["x"]["agreement_with_majority"] == 0.0


# ------------------------------------------------------------------------------------ the command line
def test_cli_agreement_json_and_text(store, capsys) -> None:
    worked_store(store)
    db = str(store.path)
    assert cli(["agreement", "--db", db, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"krippendorff_alpha", "items", "per_backend", "per_category", "annotators"}
    assert data["items"] == 4 and isinstance(data["krippendorff_alpha"], float)
    assert set(data["per_backend"]) == {"a", "b"} and set(data["per_category"]) == {"object", "reasoning"}
    assert cli(["agreement", "--db", db]) == 0
    text = capsys.readouterr().out
    assert "4 item(s) judged by two or more annotators" in text and "Krippendorff's alpha (nominal)" in text
    assert "3 item(s) where annotators split, 0 with a final verdict" in text
    assert cli(["agreement", "--db", db, "--session", "nope", "--json"]) == 0
    empty = json.loads(capsys.readouterr().out)
    assert empty["items"] == 0 and empty["krippendorff_alpha"] is None


def test_cli_agreement_on_a_missing_database_is_an_error(tmp_path, capsys) -> None:
    assert cli(["agreement", "--db", str(tmp_path / "none.sqlite")]) == 1
    assert capsys.readouterr().err.startswith("error: no database at")


# ------------------------------------------------------------------------------------ /judge, as the check runs it
@pytest.fixture()
def runtime(tmp_path):
    from backends.presets import parse_preset
    from components.runtime import AppConfig, Runtime
    from tests.doubles import EchoBackend

    preset = parse_preset({"name": "doubles", "backends": [{"name": "clip", "family": "open_clip"},
                                                           {"name": "llava", "family": "hf_vision"}]}, "test")
    rt = Runtime(AppConfig(db_path=tmp_path / "app.sqlite"), preset=preset,
                 backends=[EchoBackend("clip", kind="vlm"), EchoBackend("llava", kind="vlm+llm")])
    rt.start_loading()
    assert rt.wait_until_loaded(60)
    yield rt
    rt.close()


def test_three_annotators_judge_one_query_through_the_api_with_words(runtime, tmp_path, capsys) -> None:
    import gradio as gr

    from components.api import Api

    api = Api(runtime)
    qid = api.compare(CAT, "Is this a cat or a dog?", "")["query_id"]
    assert api.judge(qid, json.dumps({"clip": "correct", "llava": "wrong"}), "ana") == {"saved": 2}
    assert api.judge(qid, json.dumps({"clip": "Correct", "llava": 0}), "ben") == {"saved": 2}
    assert api.judge(qid, json.dumps({"verdicts": {"clip": "false", "llava": "true"}}), "cy") == {"saved": 2}
    assert api.judge(qid, json.dumps({"clip": "✓ correct", "llava": "skip"}), "dee") == {"saved": 1}
    with pytest.raises(gr.Error, match=r"must be one of correct, wrong, 1, 0, true, false \(or null") as refused:
        api.judge(qid, json.dumps({"clip": "maybe"}), "eve")
    assert "maybe" in str(refused.value)
    with pytest.raises(gr.Error, match="must be one of correct, wrong"):
        api.judge(qid, json.dumps({"clip": [1]}), "eve")
    db = str(runtime.store.path)
    assert cli(["agreement", "--db", db, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["items"] == 1 and -1 <= data["krippendorff_alpha"] <= 1
    assert set(data["annotators"]) == {"ana", "ben", "cy", "dee"}
    out = tmp_path / "votes.jsonl"
    assert cli(["export", "--db", db, "--format", "arena", "--out", str(out)]) == 0
    battles = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(battles) == 3  # dee judged one backend only: no battle
    assert [b["winner"] for b in battles] == ["model_a", "model_a", "model_b"]  # clip is model_a
    assert {b["judge"] for b in battles} == {"ana", "ben", "cy"} and not any(b["anony"] for b in battles)


def test_the_leaderboard_lists_disagreements_and_records_the_leads_final_verdict(runtime) -> None:
    from components.study_panel import StudyPanel

    store = runtime.store
    sid = store.start_session("lead", "set", ["i1"], k=2)
    sha = store.put_image(Image.new("RGB", (4, 4), (1, 1, 1)))
    qid = store.record_query(image_sha256=sha, question="Is it a cat?", session_id=sid, item_id="i1", source="annotation")
    for name in ("clip", "llava"):
        store.record_answer(qid, name, {"text": f"{name} says cat", "latency_s": 0.1})
    store.record_judgment(query_id=qid, verdicts={"clip": 1, "llava": 1}, annotator="ana", session_id=sid, reason="both fine")
    store.record_judgment(query_id=qid, verdicts={"clip": 1, "llava": 0}, annotator="ben", session_id=sid, reason="llava vague")
    panel = StudyPanel(runtime)
    summary, groups, annotators, _plot, _table, _categories, split = panel.refresh()
    assert "**1** item(s) judged by two or more annotators" in summary and "**1** item(s) where annotators split" in summary
    assert groups[0][:2] == ["overall", 1] and [row[0] for row in annotators] == ["ana", "ben"]
    assert [value for _, value in split["choices"]] == [qid]
    details, clip_radio, llava_radio = panel.pick(qid)
    assert "llava vague" in details and "ben: wrong" in details and "llava says cat" in details
    assert clip_radio["visible"] is False and llava_radio["visible"] is True  # only the split backend
    assert "only the session's lead annotator (lead)" in panel.adjudicate(qid, "ana", "", None, "correct")
    assert "Type your name" in panel.adjudicate(qid, "", "", None, "correct")
    assert panel.adjudicate(qid, "lead", "vague but right", None, "correct").startswith("✓ Saved 1 final verdict")
    assert {p["backend"]: p["correct"] for p in store.performance_pairs()} == {"clip": 1.0, "llava": 1.0}
    assert panel.pick(qid)[2]["value"] == "correct" and "final: <b>correct</b> by lead" in panel.pick(qid)[0]
