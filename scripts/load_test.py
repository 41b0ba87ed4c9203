"""Load test: N concurrent gradio_client users against the app, on loopback, bounded in count and time.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/load_test.py                  # launches app.py --preset offline
    .venv/bin/python scripts/load_test.py --users 20 --compares 3 --judges 3 --max-seconds 900
    .venv/bin/python scripts/load_test.py --url http://127.0.0.1:7860 --db var/routelens.sqlite

Without ``--url`` it launches ``app.py`` (the app's own queue settings: ``demo.queue(default_concurrency_limit=4,
max_size=64)``, ``/compare`` limited to ``AppConfig.max_concurrent_compares``) with a fresh database in a
temporary folder, waits for every backend to load, and stops it at the end.

Each user opens its own ``gradio_client.Client``, waits at a barrier so all start together, then sends
``--compares`` /compare requests (one of the example photos in data/examples with its question) and
``--judges`` /judge requests, interleaved (compare, judge, compare, judge, ...), each judgment with its own
client_key; then it re-sends its first judgment unchanged (a client retry), which must store nothing.
No new request starts after ``--max-seconds``; a request still running then is counted as an error.

Checks: no request failed (a full queue, a timeout or a server error all count); every acknowledged
judgment is in SQLite exactly once with all its verdicts; every returned query id is stored with one
answer per backend; the database passes ``PRAGMA integrity_check``. Reports p50 / p95 / max latency per
endpoint and the throughput, as text and (``--json``) as JSON. Exit status 0 only when every check holds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EXAMPLES = ROOT / "data" / "examples"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Call:
    endpoint: str
    seconds: float
    ok: bool
    error: str | None = None


@dataclass
class User:
    index: int
    calls: list[Call] = field(default_factory=list)
    query_ids: list[str] = field(default_factory=list)
    acknowledged: dict[str, int] = field(default_factory=dict)  # client_key -> verdict rows saved
    duplicate_saved: int | None = None


def examples() -> list[tuple[Path, str, str]]:
    rows = []
    for line in (EXAMPLES / "examples.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows.append((EXAMPLES / row["image"], row["question"], ", ".join(row.get("labels") or [])))
    return rows


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def run_user(user: User, url: str, args: argparse.Namespace, run_id: str, barrier: threading.Barrier,
             deadline_box: list[float], photos: list[tuple[Path, str, str]]) -> None:
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False, auth=args.auth_pair)
    except Exception as exc:
        user.calls.append(Call("connect", 0.0, False, f"{type(exc).__name__}: {exc}"))
        barrier.abort()
        return
    try:
        barrier.wait(timeout=300)
    except threading.BrokenBarrierError:
        user.calls.append(Call("connect", 0.0, False, "the other users could not connect"))
        return

    def call(endpoint: str, *payload: Any) -> Any:
        remaining = deadline_box[0] - time.monotonic()
        if remaining <= 0:
            user.calls.append(Call(endpoint, 0.0, False, "not sent: --max-seconds reached"))
            return None
        start = time.perf_counter()
        try:
            result = client.submit(*payload, api_name=f"/{endpoint}").result(timeout=min(remaining, args.max_seconds))
        except Exception as exc:
            user.calls.append(Call(endpoint, time.perf_counter() - start, False, f"{type(exc).__name__}: {str(exc)[:200]}"))
            return None
        user.calls.append(Call(endpoint, time.perf_counter() - start, True))
        return result

    first_judgment: tuple[str, str] | None = None
    steps = max(args.compares, args.judges)
    for step in range(steps):
        if step < args.compares:
            image, question, labels = photos[(user.index * args.compares + step) % len(photos)]
            result = call("compare", handle_file(str(image)), question, labels)
            if result:
                user.query_ids.append(result["query_id"])
                failed = [name for name, a in result["answers"].items() if a.get("error")]
                if failed:
                    user.calls[-1] = Call("compare", user.calls[-1].seconds, False, f"backend errors: {failed}")
        if step < args.judges and user.query_ids:
            query_id = user.query_ids[min(step, len(user.query_ids) - 1)]
            key = f"load-{run_id}-{user.index}-{step}"
            verdicts = {name: (user.index + step + i) % 2 for i, name in enumerate(args.backends)}
            body = json.dumps({"verdicts": verdicts, "reason": f"load test user {user.index} step {step}", "client_key": key})
            result = call("judge", query_id, body, f"load-user-{user.index}")
            if result is not None:
                user.acknowledged[key] = int(result["saved"])
                if first_judgment is None:
                    first_judgment = (query_id, body)
    if first_judgment is not None and args.retry_duplicate:
        result = call("judge", first_judgment[0], first_judgment[1], f"load-user-{user.index}")
        if result is not None:
            user.duplicate_saved = int(result["saved"])


def check_database(db_path: Path, run_id: str, users: list[User], backends: list[str]) -> dict[str, Any]:
    acked = {key: n for user in users for key, n in user.acknowledged.items()}
    query_ids = [q for user in users for q in user.query_ids]
    raw = sqlite3.connect(f"file:{urllib.parse.quote(str(db_path))}?mode=ro", uri=True)
    try:
        rows = raw.execute(
            "SELECT j.client_key, COUNT(DISTINCT j.id), COUNT(v.backend) FROM judgments j LEFT JOIN verdicts v ON v.judgment_id = j.id "
            "WHERE j.client_key LIKE ? GROUP BY j.client_key", [f"load-{run_id}-%"],
        ).fetchall()
        stored = {key: (judgments, verdicts) for key, judgments, verdicts in rows}
        missing = sorted(set(acked) - set(stored))
        duplicated = sorted(key for key, (judgments, _) in stored.items() if judgments != 1)
        wrong_verdicts = sorted(key for key in acked if key in stored and stored[key][1] != acked[key])
        unacknowledged = sorted(set(stored) - set(acked))
        answers = dict(raw.execute(
            f"SELECT query_id, COUNT(*) FROM answers WHERE query_id IN ({','.join('?' * len(query_ids))}) GROUP BY query_id",
            query_ids,
        ).fetchall()) if query_ids else {}
        queries_missing = [q for q in query_ids if answers.get(q) != len(backends)]
        integrity = raw.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        raw.close()
    return {
        "judgments_acknowledged": len(acked),
        "judgments_stored": len(stored),
        "verdict_rows_acknowledged": sum(acked.values()),
        "verdict_rows_stored": sum(v for _, v in stored.values()),
        "missing": missing,
        "stored_more_than_once": duplicated,
        "wrong_verdict_count": wrong_verdicts,
        "stored_but_not_acknowledged": unacknowledged,
        "queries_returned": len(query_ids),
        "queries_missing_or_incomplete": queries_missing,
        "integrity_check": integrity,
    }


def queue_settings() -> dict[str, Any]:
    """The app's queue settings, read from app.py and AppConfig (what this run was served with)."""
    from components.runtime import AppConfig

    source = (ROOT / "app.py").read_text(encoding="utf-8")
    match = re.search(r"demo\.queue\(([^)]*)\)", source)
    return {"demo.queue": match.group(1) if match else "?", "compare_concurrency_limit": AppConfig().max_concurrent_compares}


def summarise(users: list[User], wall_s: float) -> dict[str, Any]:
    calls = [c for u in users for c in u.calls]
    by_endpoint: dict[str, Any] = {}
    for endpoint in sorted({c.endpoint for c in calls}):
        ok = [c.seconds for c in calls if c.endpoint == endpoint and c.ok]
        errors = [c for c in calls if c.endpoint == endpoint and not c.ok]
        by_endpoint[endpoint] = {
            "ok": len(ok), "errors": len(errors),
            "p50_s": round(percentile(ok, 0.5), 3), "p95_s": round(percentile(ok, 0.95), 3),
            "max_s": round(max(ok), 3) if ok else None, "mean_s": round(statistics.fmean(ok), 3) if ok else None,
            "per_s": round(len(ok) / wall_s, 3) if wall_s else None,
        }
    errors = [f"user {u.index} {c.endpoint}: {c.error}" for u in users for c in u.calls if not c.ok]
    return {
        "wall_s": round(wall_s, 2),
        "requests_ok": sum(1 for c in calls if c.ok),
        "throughput_requests_per_s": round(sum(1 for c in calls if c.ok) / wall_s, 3) if wall_s else None,
        "endpoints": by_endpoint,
        "errors": errors,
        "duplicate_retries_saved": [u.duplicate_saved for u in users if u.duplicate_saved is not None],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running app on loopback (default: launch app.py)")
    parser.add_argument("--db", type=Path, help="its SQLite file (needed with --url for the checks)")
    parser.add_argument("--preset", default="offline", help="preset for the launched app (default: offline)")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--compares", type=int, default=3, help="/compare requests per user")
    parser.add_argument("--judges", type=int, default=3, help="/judge requests per user (plus one duplicate retry)")
    parser.add_argument("--no-retry-duplicate", dest="retry_duplicate", action="store_false")
    parser.add_argument("--max-seconds", type=float, default=900, help="no request starts after this (default 900)")
    parser.add_argument("--auth", help="USER:PASS when the app runs with --auth")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.users < 1 or args.users > 200 or args.compares > 50 or args.judges > 50:
        parser.error("keep it bounded: 1-200 users, at most 50 requests of each kind per user")
    if args.url and urllib.parse.urlsplit(args.url).hostname not in LOOPBACK:
        parser.error("--url must be on loopback (127.0.0.1 / localhost)")
    args.auth_pair = tuple(args.auth.split(":", 1)) if args.auth else None
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from gradio_client import Client

    from tests.live_app import launched_app

    run_id = uuid.uuid4().hex[:8]
    photos = examples()
    with ExitStack() as stack:
        if args.url:
            url, db_path = args.url, args.db
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="routelens-load-")))
            db_path = folder / "routelens.sqlite"
            started = time.perf_counter()
            extra = ["--auth", args.auth] if args.auth else []
            url = stack.enter_context(launched_app(db_path, preset=args.preset, extra=extra))
            print(f"app ready on {url} in {time.perf_counter() - started:.0f} s (preset {args.preset})", flush=True)
        stats = Client(url, verbose=False, auth=args.auth_pair).predict(api_name="/stats")
        args.backends = sorted((stats.get("backends") or {}).keys())
        if not args.backends:  # no judgments yet: ask once to learn the backends' names
            warm = Client(url, verbose=False, auth=args.auth_pair)
            from gradio_client import handle_file

            image, question, labels = photos[0]
            args.backends = sorted(warm.predict(handle_file(str(image)), question, labels, api_name="/compare")["answers"])
        print(f"{args.users} users x ({args.compares} compare + {args.judges} judge"
              f"{' + 1 duplicate judge' if args.retry_duplicate else ''}); backends {args.backends}", flush=True)

        users = [User(i) for i in range(args.users)]
        deadline_box = [time.monotonic() + args.max_seconds]
        clock: dict[str, float] = {}

        def go() -> None:  # runs once, when every user is connected: the clock starts now
            clock["start"] = time.perf_counter()
            deadline_box[0] = time.monotonic() + args.max_seconds

        barrier = threading.Barrier(args.users + 1, action=go)
        threads = [
            threading.Thread(target=run_user, args=(u, url, args, run_id, barrier, deadline_box, photos), daemon=True)
            for u in users
        ]
        for thread in threads:
            thread.start()
        try:
            barrier.wait(timeout=300)
        except threading.BrokenBarrierError:
            pass
        for thread in threads:
            thread.join(args.max_seconds + 120)
        wall = time.perf_counter() - clock.get("start", time.perf_counter())
        report = summarise(users, wall)
        report.update(
            users=args.users, compares_per_user=args.compares, judges_per_user=args.judges, preset=args.preset,
            url=url, queue=queue_settings(), omp_num_threads=os.environ.get("OMP_NUM_THREADS"), cpus=os.cpu_count(),
        )
        report["database"] = check_database(db_path, run_id, users, args.backends) if db_path else None

    db = report["database"] or {}
    checks = {
        "no errors": not report["errors"],
        "every acknowledged judgment stored exactly once": bool(db) and not db["missing"] and not db["stored_more_than_once"]
        and not db["wrong_verdict_count"] and not db["stored_but_not_acknowledged"],
        "duplicate retries stored nothing": all(n == 0 for n in report["duplicate_retries_saved"]),
        "every query stored with all its answers": bool(db) and not db["queries_missing_or_incomplete"],
        "integrity_check ok": db.get("integrity_check") == "ok",
    }
    report["checks"] = checks
    print()
    print(f"wall {report['wall_s']} s, {report['requests_ok']} requests ok, {report['throughput_requests_per_s']} requests/s")
    print(f"{'endpoint':<10}{'ok':>5}{'errors':>8}{'p50 s':>9}{'p95 s':>9}{'max s':>9}{'per s':>8}")
    for endpoint, row in report["endpoints"].items():
        print(f"{endpoint:<10}{row['ok']:>5}{row['errors']:>8}{row['p50_s']:>9}{row['p95_s']:>9}{str(row['max_s']):>9}{str(row['per_s']):>8}")
    if db:
        print(f"judgments: {db['judgments_acknowledged']} acknowledged, {db['judgments_stored']} stored; "
              f"verdict rows {db['verdict_rows_acknowledged']} acknowledged, {db['verdict_rows_stored']} stored; "
              f"queries {db['queries_returned']}; integrity {db['integrity_check']}")
    for error in report["errors"][:20]:
        print("ERROR", error)
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
