"""Replay an eval set through /v1/chat/completions: routed mode against "ask every backend", and a load mode.

    .venv/bin/python app.py --preset offline &            # then, against it:
    .venv/bin/python scripts/bench_openai_api.py --url http://127.0.0.1:7860 --limit 10 --json out.json
    .venv/bin/python scripts/bench_openai_api.py --url URL --db var/routelens.sqlite --load --concurrency 20 --duration 60

Reports accuracy (backends/scoring.py), total cost (the backends' cost units, from the reply's ``routelens.cost``)
and wall time of routed mode and of every backend asked; the endpoint's overhead over the backend's own
latency (p50/p95); accuracy and cost per lambda (``routelens:lambda=X``). ``--load`` sends routed requests
from ``--concurrency`` threads for ``--duration`` seconds, counts errors other than 429 and, with ``--db``,
checks every answered query id is stored once with exactly one answer. Exit 1 when a load check fails.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def data_url(path: str) -> str:
    kind = mimetypes.guess_type(path)[0] or "image/png"
    return f"data:{kind};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def ask(client: httpx.Client, model: str, item: Any) -> tuple[int, dict[str, Any], float]:
    status, reply, wall, _ = ask_with_headers(client, model, item)
    return status, reply, wall


def ask_with_headers(client: httpx.Client, model: str, item: Any) -> tuple[int, dict[str, Any], float, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": [
        {"type": "text", "text": item.question}, {"type": "image_url", "image_url": {"url": data_url(item.image)}}]}]}
    if item.labels:
        body["labels"] = item.labels
    start = time.perf_counter()
    reply = client.post("/v1/chat/completions", json=body)
    return reply.status_code, reply.json(), time.perf_counter() - start, reply.headers


def retry_after_s(headers: Any, default: float = 1.0) -> float:
    """The server's Retry-After in seconds (a well-behaved client waits that long after a 429)."""
    try:
        return max(0.0, float(headers.get("retry-after", default)))
    except (TypeError, ValueError):
        return default


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))], 4)


def run_mode(client: httpx.Client, model: str, items: list[Any]) -> dict[str, Any]:
    from backends.scoring import score_answer

    correct, cost, overhead, errors, waited = 0.0, 0.0, [], 0, 0.0
    start = time.perf_counter()
    for item in items:
        status, reply, wall, headers = ask_with_headers(client, model, item)
        while status == 429:  # the per-key rate limit: wait as told, then the same question again
            pause = retry_after_s(headers)
            waited += pause
            time.sleep(pause)
            status, reply, wall, headers = ask_with_headers(client, model, item)
        if status != 200:
            errors += 1
            continue
        info = reply["routelens"]
        correct += score_answer(reply["choices"][0]["message"]["content"], item.accepted)
        cost += info.get("cost") or 0.0
        overhead.append(wall - (info.get("latency_s") or 0.0))
    # wall_s leaves out the waits a 429 asked for (rate_limit_wait_s), so modes compare on answering time
    return {"model": model, "n": len(items), "errors": errors, "accuracy": round(correct / max(1, len(items)), 4),
            "total_cost": round(cost, 4), "wall_s": round(time.perf_counter() - start - waited, 3),
            "rate_limit_wait_s": round(waited, 3),
            "overhead_p50_s": pct(overhead, 0.5), "overhead_p95_s": pct(overhead, 0.95)}


def load(client_args: dict[str, Any], items: list[Any], concurrency: int, duration: float, db: str | None) -> dict[str, Any]:
    lock, statuses, ids = threading.Lock(), {}, []
    stop = time.monotonic() + duration

    def worker(index: int) -> None:
        with httpx.Client(**client_args) as client:
            n = index
            while time.monotonic() < stop:
                headers: Any = {}
                try:
                    status, reply, _, headers = ask_with_headers(client, "routelens", items[n % len(items)])
                except (httpx.HTTPError, ValueError) as exc:
                    status, reply = type(exc).__name__, {}
                with lock:
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if status == 200:
                        ids.append(reply["routelens"]["query_id"])
                if status == 429:  # honour Retry-After, as the openai client does; the same item again
                    time.sleep(min(retry_after_s(headers), max(0.0, stop - time.monotonic())))
                    continue
                n += concurrency

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out: dict[str, Any] = {"statuses": statuses, "errors_not_429": sum(v for k, v in statuses.items() if k not in ("200", "429")),
                           "answered": len(ids), "distinct_ids": len(set(ids))}
    if db:
        raw = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            counts = [raw.execute("SELECT COUNT(*) FROM answers WHERE query_id = ?", [q]).fetchone()[0] for q in ids]
        finally:
            raw.close()
        out["recorded_once_with_one_answer"] = all(c == 1 for c in counts) and len(set(ids)) == len(ids)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--api-key", default=None, help="the endpoint's key (default: none, loopback)")
    parser.add_argument("--data", default=str(ROOT / "data" / "bootstrap" / "eval.jsonl"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--lambdas", default="0,0.3,1,3")
    parser.add_argument("--load", action="store_true")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--db", default=None, help="the app's SQLite file, to check the load mode's records")
    parser.add_argument("--json", default=None, help="write the report here")
    args = parser.parse_args(argv)
    from data.datasets import read_eval_jsonl

    items = read_eval_jsonl(args.data, limit=args.limit)
    client_args = {"base_url": args.url, "timeout": 300,
                   "headers": {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}}
    report: dict[str, Any] = {"data": args.data, "n": len(items)}
    with httpx.Client(**client_args) as client:
        if args.load:
            report["load"] = load(client_args, items, args.concurrency, args.duration, args.db)
        else:
            models = [m["id"] for m in client.get("/v1/models").json()["data"]]
            report["routed"] = run_mode(client, "routelens", items)
            report["every"] = {m: run_mode(client, m, items) for m in models if m != "routelens"}
            report["every_total"] = {"total_cost": round(sum(r["total_cost"] for r in report["every"].values()), 4),
                                     "wall_s": round(sum(r["wall_s"] for r in report["every"].values()), 3)}
            report["lambda_curve"] = [run_mode(client, f"routelens:lambda={lam}", items) | {"lambda": float(lam)}
                                      for lam in args.lambdas.split(",") if lam.strip()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    load_report = report.get("load")
    if load_report and (load_report["errors_not_429"] or load_report.get("recorded_once_with_one_answer") is False):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
