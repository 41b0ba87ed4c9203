"""Benchmark the store: write throughput, size on disk, and reading pairs at scale.

    python scripts/bench_store.py                     # the defaults below, about 1-3 minutes
    python scripts/bench_store.py --read-judgments 20000 --writer-judgments 100   # quicker
    python scripts/bench_store.py --single-judgments 20 --writers 2 --writer-judgments 5 \
        --size-judgments 50 --read-judgments 200 --json out.json                  # a smoke run, seconds

Measures, on a fresh database in a temporary folder (or --dir):
1. judgments/s through ``Store.record_judgment`` with one writer (synchronous FULL, and NORMAL);
2. judgments/s with 8 concurrent writers, as 8 processes and as 8 threads sharing one Store;
3. database size per 10,000 judgments: the judgment rows alone (10,000 judgments with 3 verdicts,
   saved through the API) and per 10,000 judged queries (query, decision, 3 answers, judgment);
4. at 100,000 judgments (3 verdicts each; bulk-loaded with plain SQL, since the write path is
   measured above): time to read every performance pair, to compute ``stats()``, and to open the
   store (which runs quick_check).
Every judgment is a real ``record_judgment`` call in 1-3; each one commits (and, with FULL, fsyncs).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from data.schema import utc_now
from data.store import Store

BACKENDS = ("clip-b32", "siglip-b16", "qwen2-vl-2b")


def seed(store: Store, queries: int) -> list[str]:
    sha = store.put_image(Image.new("RGB", (32, 32), (120, 30, 200)))
    ids = []
    for i in range(queries):
        qid = store.record_query(image_sha256=sha, question=f"what is shown in picture {i}?", labels=None)
        for backend in BACKENDS:
            store.record_answer(qid, backend, {"text": f"{backend} answer {i}", "label_scores": None,
                                               "latency_s": 0.25, "error": None})
        ids.append(qid)
    return ids


def write_judgments(store: Store, query_ids: list[str], count: int, name: str) -> None:
    for i in range(count):
        store.record_judgment(
            query_id=query_ids[i % len(query_ids)],
            verdicts={BACKENDS[0]: i % 2 == 0, BACKENDS[1]: True, BACKENDS[2]: i % 3 == 0},
            best=BACKENDS[1], annotator=name, client_key=uuid.uuid4().hex,
        )


def _process_writer(path: str, ids: list[str], count: int, name: str, ready, go) -> None:
    store = Store.open(path)
    ready.release()
    go.wait()
    write_judgments(store, ids, count, name)
    store.close()


def bench_single(folder: Path, synchronous: str, count: int) -> float:
    with Store.open(folder / f"single-{synchronous}.sqlite", synchronous=synchronous) as store:
        ids = seed(store, 20)
        start = time.perf_counter()
        write_judgments(store, ids, count, "solo")
        return count / (time.perf_counter() - start)


def bench_processes(folder: Path, writers: int, per_writer: int) -> float:
    path = folder / "processes.sqlite"
    with Store.open(path) as store:
        ids = seed(store, 20)
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [ctx.Process(target=_process_writer, args=(str(path), ids, per_writer, f"p{n}", ready, go))
             for n in range(writers)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.acquire()
    start = time.perf_counter()
    go.set()
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - start
    if any(proc.exitcode != 0 for proc in procs):
        raise SystemExit("a writer process failed")
    with Store.open(path) as store:
        assert store.counts()["judgments"] == writers * per_writer
    return writers * per_writer / elapsed


def bench_threads(folder: Path, writers: int, per_writer: int) -> float:
    with Store.open(folder / "threads.sqlite") as store:
        ids = seed(store, 20)
        threads = [threading.Thread(target=write_judgments, args=(store, ids, per_writer, f"t{n}"))
                   for n in range(writers)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        assert store.counts()["judgments"] == writers * per_writer
    return writers * per_writer / elapsed


def bulk_queries(store: Store, count: int) -> list[str]:
    """Queries with a decision and 3 answers each, via plain SQL in one transaction (fast setup)."""
    sha = store.put_image(Image.new("RGB", (32, 32), (1, 2, 3)))
    now = utc_now()
    ids = [uuid.uuid4().hex for _ in range(count)]
    conn = store._db().conn
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO queries (id, image_sha256, question, labels, source, category, created_at) VALUES (?, ?, ?, ?, 'compare', ?, ?)",
        [(q, sha, f"what is shown in picture {i}, and what colour is it?", None, "object", now) for i, q in enumerate(ids)],
    )
    conn.executemany(
        "INSERT INTO decisions (query_id, choice, confidence, probabilities, category, version, latency_ms, lambda_cost, created_at) "
        "VALUES (?, ?, 0.71, ?, 'object', 'router-v3', 4.2, 0.1, ?)",
        [(q, BACKENDS[0], '{"clip-b32": 0.71, "siglip-b16": 0.66, "qwen2-vl-2b": 0.58}', now) for q in ids],
    )
    conn.executemany(
        "INSERT INTO answers (query_id, backend, text, label_scores, latency_s, error, created_at) VALUES (?, ?, ?, NULL, 0.31, NULL, ?)",
        [(q, b, f"a red bicycle leaning on a wall ({b})", now) for q in ids for b in BACKENDS],
    )
    conn.execute("COMMIT")
    return ids


def bulk_judgments(store: Store, ids: list[str]) -> None:
    now = utc_now()
    conn = store._db().conn
    conn.execute("BEGIN IMMEDIATE")
    start = conn.execute("SELECT COALESCE(MAX(id), 0) FROM judgments").fetchone()[0] + 1
    conn.executemany(
        "INSERT INTO judgments (id, query_id, best, true_answer, reason, annotator, session_id, client_key, created_at) "
        "VALUES (?, ?, ?, NULL, ?, ?, NULL, ?, ?)",
        [(start + i, q, BACKENDS[i % 3], "the VLM read the sign" if i % 10 == 0 else None, f"annotator{i % 5}",
          uuid.uuid4().hex, now) for i, q in enumerate(ids)],
    )
    conn.executemany(
        "INSERT INTO verdicts (judgment_id, query_id, backend, correct, created_at) VALUES (?, ?, ?, ?, ?)",
        [(start + i, q, b, float((i + k) % 2), now) for i, q in enumerate(ids) for k, b in enumerate(BACKENDS)],
    )
    conn.execute("COMMIT")


def db_bytes(store: Store) -> int:
    conn = store._db().conn
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    used = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    return used * page_size


def bench_size(folder: Path, judgments: int) -> tuple[float, float]:
    with Store.open(folder / "size.sqlite", synchronous="NORMAL") as store:
        empty = db_bytes(store)
        ids = bulk_queries(store, judgments)
        with_queries = db_bytes(store)
        for i, qid in enumerate(ids):  # through the API, one commit each
            store.record_judgment(query_id=qid, verdicts={BACKENDS[0]: i % 2 == 0, BACKENDS[1]: True, BACKENDS[2]: False},
                                  best=BACKENDS[1], annotator=f"annotator{i % 5}",
                                  reason="the VLM read the sign" if i % 10 == 0 else None, client_key=uuid.uuid4().hex)
        full = db_bytes(store)
    scale = 10_000 / judgments
    return (full - with_queries) * scale, (full - empty) * scale


def bench_read(folder: Path, judgments: int) -> dict[str, float]:
    path = folder / "read.sqlite"
    with Store.open(path, synchronous="NORMAL") as store:
        ids = bulk_queries(store, judgments)
        bulk_judgments(store, ids)
        db_bytes(store)
    out: dict[str, float] = {}
    start = time.perf_counter()
    store = Store.open(path)
    out["open"] = time.perf_counter() - start
    try:
        start = time.perf_counter()
        pairs = sum(1 for _ in store.performance_pairs())
        out["pairs"] = time.perf_counter() - start
        out["n_pairs"] = pairs
        start = time.perf_counter()
        store.stats()
        out["stats"] = time.perf_counter() - start
        out["size"] = path.stat().st_size
    finally:
        store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--single-judgments", type=int, default=300, help="judgments for the 1-writer runs")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--writer-judgments", type=int, default=50, help="judgments per concurrent writer")
    parser.add_argument("--size-judgments", type=int, default=10_000)
    parser.add_argument("--read-judgments", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench_store_"))
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    figures: dict[str, float] = {}

    def report(label: str, value: str) -> None:
        rows.append((label, value))
        print(f"  {label}: {value}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    try:
        for sync in ("FULL", "NORMAL"):
            rate = bench_single(folder, sync, args.single_judgments)
            figures[f"judgments_per_s_1_writer_{sync.lower()}"] = rate
            report(f"judgments/s, 1 writer, synchronous={sync}", f"{rate:,.0f}")
        rate = bench_processes(folder, args.writers, args.writer_judgments)
        figures["judgments_per_s_writer_processes"] = rate
        report(f"judgments/s, {args.writers} writers (processes), FULL", f"{rate:,.0f}")
        rate = bench_threads(folder, args.writers, args.writer_judgments)
        figures["judgments_per_s_writer_threads"] = rate
        report(f"judgments/s, {args.writers} writers (threads, one Store), FULL", f"{rate:,.0f}")
        judgment_bytes, query_bytes = bench_size(folder, args.size_judgments)
        figures["mib_per_10k_judgments"] = judgment_bytes / 2**20
        figures["mib_per_10k_judged_queries"] = query_bytes / 2**20
        report("db size per 10,000 judgments (judgment + 3 verdict rows)", f"{judgment_bytes / 2**20:.2f} MiB")
        report("db size per 10,000 judged queries (+ query, decision, 3 answers)", f"{query_bytes / 2**20:.2f} MiB")
        read = bench_read(folder, args.read_judgments)
        figures.update({f"read_{key}_s" if key in ("open", "pairs", "stats") else key: value for key, value in read.items()})
        n = f"{args.read_judgments:,}"
        report(f"read all performance pairs at {n} judgments ({read['n_pairs']:,} pairs)", f"{read['pairs']:.2f} s")
        report(f"stats() at {n} judgments", f"{read['stats']:.2f} s")
        report(f"Store.open incl. quick_check at {n} judgments ({read['size'] / 2**20:.0f} MiB)", f"{read['open']:.2f} s")
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)

    width = max(len(label) for label, _ in rows)
    print(f"{'measure'.ljust(width)}  value")
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")
    print(f"(sqlite {sqlite3.sqlite_version}, python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
          f"total {time.perf_counter() - started:.0f} s)")
    if args.json:
        settings = {key: getattr(args, key) for key in ("single_judgments", "writers", "writer_judgments", "size_judgments",
                                                          "read_judgments")}
        args.json.write_text(json.dumps({"settings": settings, "figures": figures, "rows": dict(rows)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
