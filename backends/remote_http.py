"""The remote family's HTTP client: JSON requests to one server, with retries inside a time budget.

:class:`RetryingClient` knows HTTP, not chat completions. Per request it

- waits for one of ``max_concurrency`` slots, then sends; the whole call (slot wait, every attempt and
  every backoff) stays within the ``timeout_s`` the caller gives, so a budget changed after loading applies
  to the next request;
- retries the statuses in :data:`RETRY_STATUSES` and connection failures up to ``max_retries`` times,
  with exponential backoff and "equal jitter", or after the server's ``Retry-After`` when it sends one,
  and never sleeps past the deadline (a wait that would end after it fails the call at once);
- turns every failure into a one-line :class:`~backends.base.BackendError` (an HTTP error status into a
  :class:`RemoteHTTPError` that keeps the status), passed through the caller's ``scrub`` so no secret
  a server or a library echoes reaches a message.

The caller supplies what only it knows: the request headers (read at each request, so a key is never
stored here), a hint for 401/403, and two hooks for errors it recognises (``never_retry``: a retryable
status that is really a permanent refusal; ``explain``: its own message for an error).
:class:`RemoteStats` counts calls, retries, errors and where the time went.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from backends.base import BackendError

#: HTTP statuses worth retrying: rate limits and transient server failures.
RETRY_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})

#: ``(server's error detail, payload) -> True`` when a retryable status must not be retried.
NeverRetry = Callable[[str, Mapping[str, Any] | None], bool]
#: ``(status, server's error detail) -> a message of the caller's own``, or None for the usual one.
Explain = Callable[[int, str], str | None]


def one_line(text: str, limit: int = 240) -> str:
    """``text`` on one line (white space collapsed), cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def server_reported_seconds(body: Mapping[str, Any] | None, headers: Mapping[str, str]) -> float | None:
    """The time the server says it spent on a request, when it says.

    llama.cpp's C++ server: ``timings.prompt_ms + timings.predicted_ms``; TGI: the ``x-compute-time``
    header (seconds); llama-cpp-python and OpenAI: the ``openai-processing-ms`` header; any server: a
    ``Server-Timing`` header (its ``total`` entry, else the sum).
    """
    timings = body.get("timings") if isinstance(body, Mapping) else None
    if isinstance(timings, Mapping):
        parts = [timings.get("prompt_ms"), timings.get("predicted_ms")]
        numbers = [float(p) for p in parts if isinstance(p, (int, float))]
        if numbers:
            return sum(numbers) / 1000.0
    for header, scale in (("x-compute-time", 1.0), ("openai-processing-ms", 1000.0)):
        value = headers.get(header)
        if value:
            try:
                return float(value) / scale
            except ValueError:
                pass
    server_timing = headers.get("server-timing")
    if server_timing:
        total: float | None = None
        summed = 0.0
        for entry in server_timing.split(","):
            name, _, rest = entry.strip().partition(";")
            found = re.search(r"dur=([0-9.]+)", rest)
            if not found:
                continue
            millis = float(found.group(1))
            summed += millis
            if name.strip().lower() == "total":
                total = millis
        if total is not None or summed:
            return (total if total is not None else summed) / 1000.0
    return None


def error_detail(response: httpx.Response) -> str:
    """The server's own error message, from the usual JSON shapes, else the body's start."""
    try:
        data = response.json()
    except (ValueError, UnicodeDecodeError):
        data = None
    message: Any = None
    if isinstance(data, Mapping):
        error = data.get("error")
        if isinstance(error, Mapping):
            message = error.get("message") or error.get("msg") or error
        else:
            message = error or data.get("detail") or data.get("message")
        if isinstance(message, list):  # FastAPI validation errors
            message = "; ".join(str(m.get("msg", m)) if isinstance(m, Mapping) else str(m) for m in message)
    if not message:
        message = response.text or response.reason_phrase
    return one_line(str(message), 200)


def transport_reason(exc: httpx.TransportError) -> str:
    """Why a connection failed, in words a person running the server recognises."""
    text = str(exc)
    lowered = text.lower()
    if "refused" in lowered or "errno 111" in lowered:
        return "connection refused (is the server running?)"
    if "name or service not known" in lowered or "nodename nor servname" in lowered or "errno -2" in lowered:
        return "host not found"
    if "reset" in lowered:
        return "connection reset by the server"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the server broke the connection ({one_line(text, 120) or 'no reply'})"
    return one_line(text, 160) or exc.__class__.__name__


class RemoteHTTPError(BackendError):
    """The server answered with an HTTP error status (kept, so callers can react to it)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Attempts:
    """Counts the attempts of one call (it may span several requests), so a failure can say how many."""

    def __init__(self) -> None:
        self.count = 0


@dataclass
class HTTPReply:
    """One successful request: the response, its parsed JSON and where the time went."""

    response: httpx.Response
    data: Any
    #: Round trip of the attempt that succeeded.
    http_s: float
    #: Whole request: slot wait, every attempt and backoff.
    total_s: float


@dataclass
class RemoteStats:
    """Per-backend counters (not per-user data): calls, retries, errors and time split."""

    calls: int = 0
    ok: int = 0
    errors: int = 0
    retries: int = 0
    client_s_total: float = 0.0
    server_s_total: float = 0.0
    server_timed_calls: int = 0
    last_server_s: float | None = None
    last_total_s: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_ok(self, attempts: int, client_s: float, server_s: float | None) -> None:
        """A call that succeeded after ``attempts`` attempts, ``client_s`` seconds in all."""
        with self._lock:
            self.calls += 1
            self.retries += max(0, attempts - 1)
            self.ok += 1
            self.client_s_total += client_s
            self.last_total_s = client_s
            self.last_server_s = server_s
            if server_s is not None:
                self.server_s_total += server_s
                self.server_timed_calls += 1

    def record_error(self, attempts: int) -> None:
        with self._lock:
            self.calls += 1
            self.retries += max(0, attempts - 1)
            self.errors += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            data: dict[str, Any] = {
                "calls": self.calls,
                "ok": self.ok,
                "errors": self.errors,
                "retries": self.retries,
                "client_s_total": self.client_s_total,
                "server_s_total": self.server_s_total,
                "server_timed_calls": self.server_timed_calls,
                "last_server_s": self.last_server_s,
                "last_total_s": self.last_total_s,
            }
        return data


def _no_headers() -> dict[str, str]:
    return {"Accept": "application/json"}


class RetryingClient:
    """JSON requests to one server (``base_url`` + a path), retried within the caller's budget."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float = 5.0,
        max_retries: int = 2,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_concurrency: int = 4,
        headers: Callable[[], Mapping[str, str]] = _no_headers,
        scrub: Callable[[str], str] = str,
        auth_hint: str = "the server wants a key",
        never_retry: NeverRetry | None = None,
        explain: Explain | None = None,
    ) -> None:
        if connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be positive")
        if max_retries < 0 or max_concurrency < 1:
            raise ValueError("max_retries must be >= 0 and max_concurrency >= 1")
        self.base_url = base_url
        self.connect_timeout_s = float(connect_timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_concurrency = int(max_concurrency)
        self._headers = headers
        self._scrub = scrub
        self._auth_hint = auth_hint
        self._never_retry = never_retry
        self._explain = explain
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._rng = random.Random()

    def _get_client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(
                    follow_redirects=False,
                    limits=httpx.Limits(
                        max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
                    ),
                    trust_env=False,  # never route a key through a proxy from the environment
                )
            return self._client

    def close(self) -> None:
        """Close the connection pool; the next request opens a new one."""
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): "equal jitter", half fixed, half random."""
        delay = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    def request(
        self,
        method: str,
        path: str,
        payload: Mapping[str, Any] | None = None,
        *,
        timeout_s: float,
        attempts: Attempts | None = None,
    ) -> HTTPReply:
        """Send one request with retries inside ``timeout_s``. Raises :class:`BackendError` (one line)."""
        counter = attempts or Attempts()
        start = time.monotonic()
        deadline = start + timeout_s
        url = f"{self.base_url}{path}"
        headers = dict(self._headers())
        if not self._slots.acquire(timeout=timeout_s):
            raise BackendError(
                f"all {self.max_concurrency} request slots to {self.base_url} stayed busy for "
                f"{timeout_s:g} s (max_concurrency = {self.max_concurrency})"
            )
        try:
            client = self._get_client()
            while True:
                counter.count += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BackendError(self._timeout_message(timeout_s, counter.count - 1))
                timeout = httpx.Timeout(remaining, connect=min(remaining, self.connect_timeout_s))
                sent = time.monotonic()
                try:
                    response = client.request(method, url, json=payload, headers=headers, timeout=timeout)
                except httpx.ConnectTimeout:
                    problem = f"no connection within {self.connect_timeout_s:g} s (connect_timeout_s)"
                    if self._sleep_before_retry(counter.count, None, deadline):
                        continue
                    raise BackendError(self._unreachable(problem, counter.count)) from None
                except httpx.TimeoutException:
                    raise BackendError(self._timeout_message(timeout_s, counter.count)) from None
                except httpx.TransportError as exc:
                    if self._sleep_before_retry(counter.count, None, deadline):
                        continue
                    raise BackendError(self._unreachable(transport_reason(exc), counter.count)) from None
                http_s = time.monotonic() - sent
                status = response.status_code
                if status in RETRY_STATUSES and not self._refused(response, payload):
                    wait = parse_retry_after(response.headers.get("retry-after"))
                    if self._sleep_before_retry(counter.count, wait, deadline):
                        continue
                    raise RemoteHTTPError(self._http_message(response, counter.count, timeout_s, wait, deadline), status)
                if status >= 400:
                    raise RemoteHTTPError(self._http_message(response, counter.count, timeout_s, None, deadline), status)
                try:
                    data = response.json()
                except (ValueError, UnicodeDecodeError):
                    start_text = one_line(response.text, 60)
                    raise BackendError(
                        f"the server at {self.base_url} sent a reply that is not JSON "
                        f"(HTTP {status}, starts with {start_text!r})"
                    ) from None
                return HTTPReply(response, data, http_s, time.monotonic() - start)
        finally:
            self._slots.release()

    def _sleep_before_retry(self, attempt: int, retry_after: float | None, deadline: float) -> bool:
        """Sleep before the next attempt when one is allowed and fits in the budget; else False."""
        if attempt > self.max_retries:
            return False
        wait = retry_after if retry_after is not None else self.backoff(attempt)
        if time.monotonic() + wait >= deadline:
            return False
        time.sleep(wait)
        return True

    def _refused(self, response: httpx.Response, payload: Mapping[str, Any] | None) -> bool:
        return self._never_retry is not None and self._never_retry(error_detail(response), payload)

    def _timeout_message(self, timeout_s: float, attempts: int) -> str:
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        return f"the server at {self.base_url} did not answer within {timeout_s:g} s (timeout_s){tried}"

    def _unreachable(self, reason: str, attempts: int) -> str:
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        return self._scrub(f"cannot reach the server at {self.base_url}: {reason}{tried}")

    def _http_message(
        self, response: httpx.Response, attempts: int, timeout_s: float, retry_after: float | None, deadline: float
    ) -> str:
        status = response.status_code
        detail = error_detail(response)
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        own = self._explain(status, detail) if self._explain is not None and status not in (401, 403) else None
        if status in (401, 403):
            message = f"the server at {self.base_url} refused the request (HTTP {status}: {detail}); {self._auth_hint}"
        elif own is not None:
            message = own
        elif status == 429:
            message = f"rate limited by the server at {self.base_url} (HTTP 429){tried}"
            if retry_after is not None and time.monotonic() + retry_after >= deadline:
                message += f"; it asked to wait {retry_after:g} s, beyond timeout_s = {timeout_s:g}"
        elif status == 404:
            message = f"the server at {self.base_url} has no such endpoint or model (HTTP 404: {detail})"
        elif status >= 500:
            message = f"the server at {self.base_url} failed (HTTP {status}: {detail}){tried}"
        else:
            message = f"the server at {self.base_url} refused the request (HTTP {status}: {detail})"
        return self._scrub(message)
