"""Pairs JSONL: validation by line number, relative image paths, atomic writes, and the store round trip."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from data.__main__ import main as cli
from data.pairs import FIELDS, PairsError, parse_pairs, read_pairs, validate_pair, write_pairs
from data.store import Store


def pair(**overrides):
    row = {
        "query_id": "q1", "question": "what animal is this?", "image": None, "image_sha256": None,
        "category": "object", "backend": "clip-b32", "answer": "a cat", "correct": 1.0, "latency_s": 0.12,
        "source": "benchmark",
    }
    row.update(overrides)
    return row


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- reading


def test_read_valid_file_resolves_relative_images_and_fills_defaults(tmp_path):
    (tmp_path / "imgs").mkdir()
    path = write_lines(tmp_path / "pairs.jsonl", [
        json.dumps(pair(image="imgs/a.png")),
        "",
        json.dumps({"query_id": 7, "question": "q?", "backend": "b", "correct": False, "dataset": "easy-vqa"}),
    ])
    result = read_pairs(path)
    assert result.ok and len(result.rows) == 2 and result.line_numbers == [1, 3]
    first, second = result.rows
    assert first["image"] == str(tmp_path / "imgs" / "a.png")
    assert second["query_id"] == "7" and second["correct"] == 0.0 and second["source"] == "benchmark"
    assert second["image"] is None and second["answer"] is None and second["latency_s"] is None
    assert second["dataset"] == "easy-vqa"  # fields beyond the format are kept
    assert set(FIELDS) <= set(second)


BAD_LINES = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"question": "q", "backend": "b", "correct": 1}), "missing required field(s): query_id"),
    (json.dumps(pair(correct=1.5)), "'correct' must be in [0, 1]"),
    (json.dumps(pair(correct=-0.1)), "'correct' must be in [0, 1]"),
    (json.dumps(pair(correct="1")), "'correct' must be a number"),
    (json.dumps(pair(correct=None)), "'correct' must be a number"),
    ('{"query_id": "q", "question": "q", "backend": "b", "correct": NaN}', "not valid JSON"),
    (json.dumps(pair(question="")), "'question' must not be empty"),
    (json.dumps(pair(backend=3)), "'backend' must be a string"),
    (json.dumps(pair(image_sha256="abc")), "'image_sha256' must be 64 hex digits"),
    (json.dumps(pair(source="vibes")), "'source' must be one of"),
    (json.dumps(pair(latency_s=-1)), "'latency_s' must be >= 0"),
    (json.dumps(pair(query_id="")), "'query_id' must be a non-empty string"),
    (json.dumps(pair(query_id="\ud800")), "not valid Unicode"),
]


@pytest.mark.parametrize("line, message", BAD_LINES)
def test_each_kind_of_bad_line_is_reported_with_its_number(tmp_path, line, message):
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(pair(query_id="ok")), line])
    result = read_pairs(path, strict=False)
    assert [row["query_id"] for row in result.rows] == ["ok"]
    assert len(result.errors) == 1
    number, text = result.errors[0]
    assert number == 2 and message in text


def test_strict_read_raises_listing_every_bad_line(tmp_path):
    lines = [json.dumps(pair(query_id=f"q{i}")) for i in range(6)]
    lines[1] = "oops"
    lines[4] = json.dumps(pair(query_id="q4", correct=2))
    lines.append(json.dumps(pair(query_id="q0")))  # duplicate of line 1
    path = write_lines(tmp_path / "pairs.jsonl", lines)
    with pytest.raises(PairsError) as caught:
        read_pairs(path)
    assert [n for n, _ in caught.value.errors] == [2, 5, 7]
    assert "duplicate of line 1" in caught.value.errors[2][1]
    assert "line 2" in str(caught.value) and "line 5" in str(caught.value)


def test_invalid_utf8_and_bom(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(pair()).encode() + b"\n" + b'{"query_id": "\xff"}\n')
    result = read_pairs(path, strict=False)
    assert len(result.rows) == 1
    assert result.errors[0][0] == 2 and "UTF-8" in result.errors[0][1]


# ----------------------------------------------------------------------------- writing


def test_write_makes_images_relative_under_the_folder_and_absolute_elsewhere(tmp_path):
    out = tmp_path / "out" / "pairs.jsonl"
    inside = tmp_path / "out" / "images" / "a.png"
    outside = tmp_path / "elsewhere" / "b.png"
    rows = [pair(query_id="a", image=str(inside)), pair(query_id="b", image=outside)]
    assert write_pairs(rows, out) == 2
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written[0]["image"] == "images/a.png"
    assert written[1]["image"] == str(outside)
    assert list(written[0]) == list(FIELDS)
    assert [r["image"] for r in read_pairs(out).rows] == [str(inside), str(outside)]


def test_write_is_atomic_on_a_bad_row(tmp_path):
    out = tmp_path / "pairs.jsonl"
    write_pairs([pair()], out)
    before = out.read_bytes()
    with pytest.raises(ValueError, match="pair 1: 'correct'"):
        write_pairs([pair(query_id="x"), pair(query_id="y", correct=3)], out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


# ----------------------------------------------------------------------------- properties

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
_name = st.text(alphabet=string.ascii_letters + string.digits + "-_.:", min_size=1, max_size=12)
_rows = st.lists(
    st.fixed_dictionaries(
        {
            "query_id": _name,
            "question": _text.filter(lambda s: s.strip()),
            "backend": _name,
            "correct": st.one_of(st.booleans(), st.floats(0, 1), st.integers(0, 1)),
        },
        optional={
            "image": st.sampled_from(["a.png", "sub/b.png", "/abs/c.png"]),
            "image_sha256": st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
            "category": st.one_of(st.none(), _text),
            "answer": st.one_of(st.none(), _text),
            "latency_s": st.one_of(st.none(), st.floats(0, 1e6), st.integers(0, 10_000)),
            "source": st.sampled_from(["benchmark", "judgment"]),
            "extra_field": st.one_of(st.integers(), _text, st.lists(st.integers(), max_size=3)),
        },
    ),
    max_size=8,
    unique_by=lambda r: (r["query_id"], r["backend"], r.get("source", "benchmark")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_rows)
def test_property_write_then_read_gives_the_same_rows(tmp_path, rows):
    base = tmp_path / "prop"
    base.mkdir(exist_ok=True)
    normalised = [validate_pair(r, base_dir=base) for r in rows]
    out = base / "pairs.jsonl"
    write_pairs(normalised, out)
    assert read_pairs(out).rows == normalised


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.builds(lambda c: json.dumps(pair(correct=c)).encode(), st.one_of(st.floats(allow_nan=False), st.none(), st.text(max_size=3))),
), max_size=10))
def test_property_reader_never_crashes_and_accounts_for_every_line(lines):
    clean = [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines]
    result = parse_pairs(clean, base_dir="/")

    def blank(number: int, line: bytes) -> bool:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return not (text.lstrip("\ufeff") if number == 1 else text).strip()

    non_blank = sum(1 for n, line in enumerate(clean, 1) if not blank(n, line))
    assert len(result.rows) + len(result.errors) == non_blank  # every line is a row or an error
    numbers = [n for n, _ in result.errors] + result.line_numbers
    assert len(numbers) == len(set(numbers)) and all(1 <= n <= len(clean) for n in numbers)
    for row in result.rows:
        assert 0.0 <= row["correct"] <= 1.0


# ----------------------------------------------------------------------------- the store round trip


@pytest.fixture
def judged_store(tmp_path):
    store = Store.open(tmp_path / "one" / "routelens.sqlite")
    sha = store.put_image(Image.new("RGB", (6, 6), (10, 200, 30)))
    for i in range(3):
        qid = store.record_query(image_sha256=sha, question=f"colour {i}?", labels=None, category="attribute")
        for backend, text in (("clip", "green"), ("vlm", "blue")):
            store.record_answer(qid, backend, {"text": text, "label_scores": None, "latency_s": 0.5, "error": None})
        store.record_judgment(query_id=qid, verdicts={"clip": True, "vlm": i % 2 == 0}, best="clip", annotator="ann")
    yield store
    store.close()


def test_import_export_import_keeps_every_row(tmp_path, judged_store, capsys):
    (tmp_path / "bench" / "img").mkdir(parents=True)
    bench = write_lines(tmp_path / "bench" / "pairs.jsonl", [
        json.dumps(pair(query_id=f"b{i}", backend=backend, correct=i % 2, image="img/x.png", extra_field=[i]))
        for i in range(5) for backend in ("clip", "vlm")
    ])
    db_one = str(judged_store.path)
    assert cli(["import", str(bench), "--db", db_one]) == 0
    assert "imported 10 pair(s)" in capsys.readouterr().out
    first = list(judged_store.performance_pairs())
    assert len(first) == 6 + 10

    export_one = tmp_path / "export1" / "pairs.jsonl"
    assert cli(["export", "--db", db_one, "--format", "jsonl", "--out", str(export_one)]) == 0
    assert (tmp_path / "export1" / "pairs.judgments.jsonl").is_file()

    db_two = tmp_path / "two" / "routelens.sqlite"
    assert cli(["import", str(export_one), "--db", str(db_two)]) == 0
    with Store.open(db_two) as store_two:
        second = list(store_two.performance_pairs())
    key = lambda r: (r["query_id"], r["backend"], r["source"])  # noqa: E731
    assert sorted(map(key, second)) == sorted(map(key, first))
    assert sorted(first, key=key) == sorted(second, key=key)  # every field, image paths included

    export_two = tmp_path / "export2" / "pairs.jsonl"
    assert cli(["export", "--db", str(db_two), "--format", "jsonl", "--out", str(export_two)]) == 0
    assert [json.loads(line) for line in export_two.read_text().splitlines()] == \
           [json.loads(line) for line in export_one.read_text().splitlines()]

    # importing back into the first store skips what it already holds (its own judgments included)
    capsys.readouterr()
    assert cli(["import", str(export_two), "--db", db_one]) == 0
    assert "imported 0 pair(s), skipped 16" in capsys.readouterr().out
    assert len(list(judged_store.performance_pairs())) == 16


def test_csv_and_parquet_exports_write_two_files(tmp_path, judged_store):
    import pandas as pd

    db = str(judged_store.path)
    assert cli(["export", "--db", db, "--format", "csv", "--out", str(tmp_path / "csv")]) == 0
    assert cli(["export", "--db", db, "--format", "parquet", "--out", str(tmp_path / "pq")]) == 0
    for frame in (pd.read_csv(tmp_path / "csv" / "pairs.csv"), pd.read_parquet(tmp_path / "pq" / "pairs.parquet")):
        assert len(frame) == 6 and list(frame.columns) == list(FIELDS)
        assert sorted(frame["correct"]) == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    for frame in (pd.read_csv(tmp_path / "csv" / "judgments.csv"),
                  pd.read_parquet(tmp_path / "pq" / "judgments.parquet")):
        assert len(frame) == 6 and set(frame["annotator"]) == {"ann"} and set(frame["best"]) == {"clip"}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_export_all_gives_one_zip_for_download(tmp_path, judged_store, fmt):
    import zipfile

    from data.export import export_all

    archive = export_all(judged_store, fmt, tmp_path / "dl")
    assert archive.name == f"routelens-{fmt}.zip"
    with zipfile.ZipFile(archive) as bundle:
        names = sorted(bundle.namelist())
    assert names == (["pairs.jsonl", "pairs.judgments.jsonl"] if fmt == "jsonl" else [f"judgments.{fmt}", f"pairs.{fmt}"])


def test_cli_import_bad_lines_imports_nothing_and_lists_line_numbers(tmp_path, capsys):
    path = write_lines(tmp_path / "pairs.jsonl", [
        json.dumps(pair(query_id="a")), "nope", json.dumps(pair(query_id="b", correct=7)), json.dumps(pair(query_id="c")),
    ])
    db = tmp_path / "db" / "routelens.sqlite"
    assert cli(["import", str(path), "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: not valid JSON" in err and f"{path}:3: 'correct' must be in [0, 1]" in err
    assert "2 bad line(s)" in err and "lines 2, 3" in err and "nothing was imported" in err
    assert "Traceback" not in err
    with Store.open(db) as store:
        assert store.counts()["imported_pairs"] == 0

    assert cli(["import", str(path), "--db", str(db), "--skip-bad"]) == 3
    captured = capsys.readouterr()
    assert "imported 2 pair(s)" in captured.out and f"{path}:2:" in captured.err
    with Store.open(db) as store:
        assert [r["query_id"] for r in store.performance_pairs()] == ["a", "c"]


def test_import_conflicting_values_is_a_bad_line(tmp_path):
    db = tmp_path / "routelens.sqlite"
    first = write_lines(tmp_path / "one.jsonl", [json.dumps(pair(correct=1))])
    second = write_lines(tmp_path / "two.jsonl", [json.dumps(pair(query_id="new")), json.dumps(pair(correct=0))])
    with Store.open(db) as store:
        assert store.import_pairs(first).imported == 1
        report = store.import_pairs(second)
        assert report.imported == 0 and report.errors[0][0] == 2 and "conflicts" in report.errors[0][1]
        assert store.counts()["imported_pairs"] == 1


def test_cli_expected_errors_are_one_line(tmp_path, capsys):
    assert cli(["import", str(tmp_path / "missing.jsonl"), "--db", str(tmp_path / "db.sqlite")]) == 1
    assert cli(["stats", "--db", str(tmp_path / "nothing-here.sqlite")]) == 1
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(4096))
    assert cli(["stats", "--db", str(garbage)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "no pairs file" in err[0] and "no database" in err[1] and "not a SQLite database" in err[2]
    assert not (tmp_path / "nothing-here.sqlite").exists()


def test_cli_stats_prints_a_table(judged_store, capsys):
    assert cli(["stats", "--db", str(judged_store.path), "--categories"]) == 0
    out = capsys.readouterr().out
    assert "judgments: 3" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("clip ", "vlm "))}
    assert lines["clip"][1:4] == ["3", "3.000", "1.000"] and lines["vlm"][1:4] == ["3", "2.000", "0.667"]
    assert "attribute" in out


def test_python_dash_m_data_runs(judged_store):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "ROUTELENS_DB": str(judged_store.path)}
    done = subprocess.run([sys.executable, "-m", "data", "stats"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "judgments: 3" in done.stdout
    done = subprocess.run([sys.executable, "-m", "data", "export", "--format", "xml", "--out", "x"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid choice" in done.stderr
