"""Durability and concurrency of the store, with real processes.

- crash: a child process saves judgments and prints each acknowledged client key; it is killed with
  SIGKILL mid-stream; every acknowledged judgment must be there, whole, and integrity_check ok.
- concurrency: 4 threads and 4 processes save judgments at once (and resubmit some); no "database is
  locked" reaches any of them and the count is exact.
- several processes opening a fresh database at once apply the migrations exactly once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from data import schema
from data.store import Store

REPO = Path(__file__).resolve().parents[1]

WRITER = r"""
import json, sys
from data.store import Store

def write(store, name, query_ids, count, resubmit):
    saved = zeros = 0
    errors = []
    for i in range(count):
        try:
            saved += store.record_judgment(
                query_id=query_ids[i % len(query_ids)],
                verdicts={"a": i % 2 == 0, "b": True, "c": 0.5}, best="b",
                annotator=name, client_key=f"{name}-{i}")
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}")
    for i in range(resubmit):
        try:
            zeros += store.record_judgment(query_id=query_ids[0], verdicts={"a": True}, client_key=f"{name}-{i}") == 0
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}")
    return {"name": name, "saved": saved, "zeros": zeros, "errors": errors}

if __name__ == "__main__":
    db, name, ids, count, resubmit = sys.argv[1:6]
    store = Store.open(db)
    print("ready", flush=True)
    sys.stdin.readline()
    result = write(store, name, ids.split(","), int(count), int(resubmit))
    store.close()
    print(json.dumps(result), flush=True)
"""

CRASH_CHILD = r"""
import sys
from data.store import Store
store = Store.open(sys.argv[1])
query_ids = sys.argv[2].split(",")
i = 0
while True:
    key = f"crash-{i}"
    store.record_judgment(query_id=query_ids[i % len(query_ids)], verdicts={"a": i % 2 == 0, "b": True},
                          reason="r" * (i % 300), client_key=key)
    print(key, flush=True)
    i += 1
"""

OPENER = r"""
import sys
from data.store import Store
print("ready", flush=True)
sys.stdin.readline()
Store.open(sys.argv[1]).close()
print("opened", flush=True)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=REPO, env=_env(), text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _expect_line(proc: subprocess.Popen, expected: str, timeout: float = 60.0) -> None:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()))
    reader.start()
    reader.join(timeout)
    if not lines or lines[0].strip() != expected:
        proc.kill()
        raise AssertionError(f"child said {lines!r}, expected {expected!r}; stderr: {proc.stderr.read()[-2000:]}")


@pytest.fixture
def seeded(tmp_path):
    """A database with 4 queries, each answered by backends a, b and c."""
    path = tmp_path / "data" / "routelens.sqlite"
    with Store.open(path) as store:
        ids = []
        for i in range(4):
            sha = store.put_image(Image.new("RGB", (4, 4), (i, 0, 0)))
            qid = store.record_query(image_sha256=sha, question=f"q{i}", labels=None)
            for backend in "abc":
                store.record_answer(qid, backend, {"text": backend, "label_scores": None, "latency_s": 0.1, "error": None})
            ids.append(qid)
    return path, ids


def test_acknowledged_judgments_survive_sigkill(seeded):
    path, ids = seeded
    rng = random.Random(3)
    for _round in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASH_CHILD, str(path), ",".join(ids)], cwd=REPO, env=_env(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        acknowledged: list[str] = []
        target = rng.randint(40, 120)
        deadline = time.monotonic() + 60

        def read_acks(stream=proc.stdout, into=acknowledged):
            for line in stream:
                into.append(line)

        reader = threading.Thread(target=read_acks, daemon=True)
        reader.start()
        while len(acknowledged) < target and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(rng.random() * 0.01)  # land anywhere inside the next judgment
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(10)
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        assert len(acknowledged) >= target
        acked = {line.strip() for line in acknowledged if line.strip()}

        raw = sqlite3.connect(path)  # what is on disk, before the store touches it
        try:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            keys = {r[0] for r in raw.execute("SELECT client_key FROM judgments WHERE client_key LIKE 'crash-%'")}
            assert acked <= keys, f"lost acknowledged judgments: {sorted(acked - keys)[:5]}"
            assert len(keys) - len(acked) <= 1  # at most the one in flight, committed but not yet printed
            # whole judgments only: every judgment has both of its verdicts
            assert raw.execute(
                "SELECT COUNT(*) FROM judgments j WHERE (SELECT COUNT(*) FROM verdicts v WHERE v.judgment_id = j.id) != 2"
            ).fetchone()[0] == 0
            raw.execute("DELETE FROM verdicts")  # the next round reuses the same keys
            raw.execute("DELETE FROM judgments")
            raw.commit()
        finally:
            raw.close()
        with Store.open(path) as store:
            assert store.integrity_check() == ["ok"]


def test_eight_concurrent_writers_threads_and_processes(seeded):
    path, ids = seeded
    per_writer, resubmit = 25, 5
    procs = [_spawn(WRITER, str(path), f"proc{n}", ",".join(ids), str(per_writer), str(resubmit)) for n in range(4)]
    try:
        for proc in procs:
            _expect_line(proc, "ready")
        namespace: dict = {}
        exec(compile(WRITER, "writer", "exec"), namespace)  # the same writer function, in threads
        results: list[dict] = []
        with Store.open(path) as store:
            threads = [
                threading.Thread(target=lambda n=n: results.append(
                    namespace["write"](store, f"thread{n}", ids, per_writer, resubmit)))
                for n in range(4)
            ]
            for proc in procs:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            for proc in procs:
                out, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err[-2000:]
                results.append(json.loads(out.strip().splitlines()[-1]))

            assert len(results) == 8
            assert [r["errors"] for r in results] == [[]] * 8  # no "database is locked", nothing else
            assert all(r["saved"] == per_writer * 3 and r["zeros"] == resubmit for r in results)
            counts = store.counts()
            assert counts["judgments"] == 8 * per_writer and counts["verdicts"] == 8 * per_writer * 3
            assert counts["annotators"] == 8
            keys = [r[0] for r in store._db().execute("SELECT client_key FROM judgments")]
            assert len(keys) == len(set(keys)) == 8 * per_writer
            assert store.integrity_check() == ["ok"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_processes_opening_a_fresh_database_at_once_migrate_once(tmp_path):
    path = tmp_path / "fresh" / "routelens.sqlite"
    procs = [_spawn(OPENER, str(path)) for _ in range(4)]
    try:
        for proc in procs:
            _expect_line(proc, "ready")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0 and out.strip() == "opened", err[-2000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(schema.MIGRATIONS)
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()
