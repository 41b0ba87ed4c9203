"""The ``remote`` family: a model behind an OpenAI-compatible chat-completions server.

vLLM, Text Generation Inference, llama.cpp's server (C++ or llama-cpp-python), Ollama and hosted models
all speak the same protocol, so one backend covers them (see docs/remote.md for the server side).

What it does, per question:

- builds the prompt with :func:`backends.messages.vqa_prompt` and sends the image as a base64 PNG data URL
  in an ``image_url`` content part, followed by the question text;
- with candidate labels, asks for exactly one of them, maps the reply to a label
  (:func:`match_label`) and, where the server returns ``logprobs``, ranks the labels by the probability
  of their first token (:func:`label_scores_from_logprobs`);
- keeps within ``timeout_s`` for the whole call (waiting for a slot, retries and backoff included),
  retries 429 / 5xx / connection failures with exponential backoff and jitter, honouring ``Retry-After``,
  and never has more than ``max_concurrency`` requests in flight to its server;
- turns every failure (server down, slow, 4xx/5xx, malformed reply, a model that takes no images) into a
  one-line :class:`BackendError` that the base class shows in the panel, with no stack trace;
- records the time the server reports for itself (llama.cpp ``timings``, TGI ``x-compute-time``,
  ``openai-processing-ms`` from llama-cpp-python and OpenAI, ``Server-Timing``) when it reports one,
  so the client-side overhead can be measured (:attr:`RemoteBackend.stats`).

Images and text-only models. By default ``_load`` sends a tiny probe (the same text with and without a
32x32 image, one output token each) and compares the prompt token counts the server reports: a model
that really sees the image counts image tokens. A server whose model ignores images (llama-cpp-python
serving a text-only GGUF drops multi-part messages without an error) or refuses them (vLLM, llama.cpp
and OpenAI answer 400/500 "not a multimodal model", "image input is not supported", ...) fails to load
with "the server's model does not accept images". We do not silently fall back to asking without the
image: a text-only model's confident guess about a picture it never saw would be recorded, judged and
learned from by the router as if it were a visual answer. A preset that really wants a text-only model
(a blind baseline) says so with ``send_image = false``; its card then reads "text only".

The API key is read from the environment variable named by ``api_key_env`` at each request, sent only as
``Authorization: Bearer`` to ``base_url`` (redirects are not followed), never stored on the instance,
in ``describe()`` or in the database, and scrubbed from any error text.
"""

from __future__ import annotations

import difflib
import email.utils
import ipaddress
import math
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx
from PIL import Image

from backends.base import Backend, BackendError, ModelReply
from backends.messages import IMAGE_FORMATS, Prompt, image_to_data_url, vqa_prompt

#: HTTP statuses worth retrying: rate limits and transient server failures.
RETRY_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
#: Most ``top_logprobs`` the OpenAI protocol allows.
MAX_TOP_LOGPROBS = 20

_TEXT_ONLY = re.compile(
    r"not (?:a )?multi-?modal"
    r"|(?:image|vision|multi-?modal)[\w\s()'-]{0,40}(?:not supported|unsupported|not enabled|not allowed)"
    r"|(?:not|n't|cannot|can't|only) (?:support|accept|handle|process)s?[\w\s-]{0,30}(?:image|vision|multi-?modal)"
    r"|at most 0 image"
    r"|missing data required for image"
    r"|image_url is only supported"
    r"|mmproj",
    re.IGNORECASE,
)
_LOGPROBS_REJECTED = re.compile(r"logprob", re.IGNORECASE)


# --------------------------------------------------------------------------------------------- helpers
def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s-]", " ", text.casefold()).replace("_", " ").split())


def match_label(reply: str, labels: Sequence[str]) -> str | None:
    """The label a free-text reply names, or None when it names none or is ambiguous.

    1. The whole reply is a label (case, punctuation and blanks ignored): that label.
    2. Else the labels the reply mentions as whole words (a plural "s"/"es" allowed; a label inside a
       longer mentioned one, "car" in "red car", does not count): exactly one -> that label; several ->
       the one the reply starts with, else None ("a cat or a dog?", an echo of the question, names no
       answer).
    3. Else a close spelling of the reply's first line (difflib ratio >= 0.8), else None.
    """
    if not labels:
        return None
    said = _normalise(reply)
    if not said:
        return None
    normalised = [(label, _normalise(label)) for label in labels]
    for label, norm in normalised:
        if norm and norm == said:
            return label
    spans: list[tuple[int, int, str]] = []
    for label, norm in normalised:
        if not norm:
            continue
        pattern = r"(?<![\w-])" + re.escape(norm) + r"(?:e?s)?(?![\w-])"
        spans.extend((found.start(), found.end(), label) for found in re.finditer(pattern, said))
    mentioned = {
        label
        for start, end, label in spans
        if not any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in spans)
    }
    if len(mentioned) == 1:
        return mentioned.pop()
    if mentioned:
        at_start = [(end, label) for start, end, label in spans if start == 0 and label in mentioned]
        return max(at_start)[1] if at_start else None
    first_line = _normalise(reply.strip().splitlines()[0]) if reply.strip() else ""
    by_norm = {norm: label for label, norm in reversed(normalised) if norm}
    close = difflib.get_close_matches(first_line, list(by_norm), n=1, cutoff=0.8)
    return by_norm[close[0]] if close else None


def label_scores_from_logprobs(
    logprobs: Any, labels: Sequence[str], chosen: str | None = None
) -> list[tuple[str, float]] | None:
    """Rank labels by the probability of their first token at the first non-blank generated position.

    ``logprobs`` is a chat-completions ``choices[0].logprobs`` object. Each alternative token's
    probability goes to the labels it begins (shared equally when several labels begin with it); the
    scores are then renormalised over the labels. None when the server sent no usable logprobs or no
    alternative begins any label. ``chosen`` (the label the text named) wins ties.
    """
    if not isinstance(logprobs, Mapping) or not labels:
        return None
    content = logprobs.get("content")
    if not isinstance(content, list):
        return None
    position = next(
        (entry for entry in content if isinstance(entry, Mapping) and str(entry.get("token", "")).strip()),
        None,
    )
    if position is None:
        return None
    alternatives = position.get("top_logprobs") or []
    if not isinstance(alternatives, list) or not alternatives:
        alternatives = [position]
    keys = [label.casefold().strip() for label in labels]
    mass = [0.0] * len(labels)
    seen: set[str] = set()
    for alternative in alternatives:
        if not isinstance(alternative, Mapping):
            continue
        token = str(alternative.get("token", "")).strip().casefold()
        logprob = alternative.get("logprob")
        if not token or token in seen or not isinstance(logprob, (int, float)) or math.isnan(logprob):
            continue
        seen.add(token)
        starts = [i for i, key in enumerate(keys) if key.startswith(token)]
        if not starts:
            continue
        share = math.exp(float(logprob)) / len(starts)
        for i in starts:
            mass[i] += share
    total = sum(mass)
    if total <= 0.0:
        return None
    scores = [(label, m / total) for label, m in zip(labels, mass, strict=True)]
    scores.sort(key=lambda item: (-item[1], item[0] != chosen))
    return scores


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


def _error_detail(response: httpx.Response) -> str:
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
    return _one_line(str(message), 200)


def _transport_reason(exc: httpx.TransportError) -> str:
    text = str(exc)
    lowered = text.lower()
    if "refused" in lowered or "errno 111" in lowered:
        return "connection refused (is the server running?)"
    if "name or service not known" in lowered or "nodename nor servname" in lowered or "errno -2" in lowered:
        return "host not found"
    if "reset" in lowered:
        return "connection reset by the server"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the server broke the connection ({_one_line(text, 120) or 'no reply'})"
    return _one_line(text, 160) or exc.__class__.__name__


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ChatResult:
    """One successful chat-completions call, with where the time went."""

    text: str
    model: str
    finish_reason: str | None
    usage: dict[str, Any]
    logprobs: Any
    #: Whole call: slot wait, every attempt and backoff (what the panel waits for, minus prompt building).
    total_s: float
    #: Round trip of the attempt that succeeded.
    http_s: float
    #: What the server reported for itself, None when it reports nothing.
    server_s: float | None
    attempts: int
    #: Building the payload (image PNG + base64) before sending.
    encode_s: float = 0.0


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

    def record(self, result: ChatResult | None, attempts: int) -> None:
        with self._lock:
            self.calls += 1
            self.retries += max(0, attempts - 1)
            if result is None:
                self.errors += 1
                return
            self.ok += 1
            self.client_s_total += result.total_s + result.encode_s
            self.last_total_s = result.total_s + result.encode_s
            self.last_server_s = result.server_s
            if result.server_s is not None:
                self.server_s_total += result.server_s
                self.server_timed_calls += 1

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


class RemoteHTTPError(BackendError):
    """The server answered with an HTTP error status (kept, so callers can react to it)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Attempts:
    """Counts the attempts of one call, so a failure can still report how many were made."""

    def __init__(self) -> None:
        self.count = 0


# --------------------------------------------------------------------------------------------- backend
class RemoteBackend(Backend):
    """A generative model behind an OpenAI-compatible server. Options come from the preset:

    ``base_url`` (e.g. ``http://gpu-box:8000/v1``; ``/v1`` is added when the URL has no path),
    ``model`` (the served name; empty = the only one the server lists), ``api_key_env`` (name of the
    environment variable holding the key), ``timeout_s`` (budget for one whole call), ``connect_timeout_s``,
    ``max_retries``, ``backoff_base_s``, ``backoff_max_s``, ``max_concurrency``, ``cost``,
    ``max_tokens``, ``label_max_tokens``, ``temperature``, ``system_prompt``, ``image_format``
    (``png``), ``max_image_side``, ``send_image``, ``check_vision``, ``label_logprobs``,
    ``reconnect_after_s``, ``allow_plain_http_key``, ``extra_body`` (merged into every request).
    """

    serialize_load = False  # opening a connection does not import model code

    kind: ClassVar[str] = "vlm+llm"
    family: ClassVar[str] = "remote"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        model: str = "",
        model_id: str = "",
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_retries: int = 2,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_concurrency: int = 4,
        cost: float = 0.0,
        max_tokens: int = 64,
        label_max_tokens: int = 16,
        temperature: float = 0.0,
        system_prompt: str | None = None,
        image_format: str = "png",
        max_image_side: int | None = 1024,
        send_image: bool = True,
        check_vision: bool = True,
        label_logprobs: bool = True,
        reconnect_after_s: float = 15.0,
        allow_plain_http_key: bool = False,
        extra_body: Mapping[str, Any] | None = None,
        licence: str | None = None,
        quantize: bool = True,  # accepted for preset uniformity; quantization is the server's business
        device: str = "auto",  # accepted for preset uniformity; the device is the server's
        shared: Any | None = None,
    ) -> None:
        if model and model_id and model != model_id:
            raise ValueError(f"remote backend {name!r}: give the served model name once, as `model`")
        model = model or model_id
        super().__init__(
            name,
            model_id=model,
            quantize=quantize,
            device=device,
            cost=cost,
            timeout_s=timeout_s,
            licence=licence,
            shared=shared,
        )
        self.base_url = self._normalise_base_url(name, base_url)
        parts = urlsplit(self.base_url)
        self._host = parts.hostname or ""
        self._host_port = parts.netloc
        self.model = model
        if api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env):
            raise ValueError(
                f"remote backend {name!r}: api_key_env must be the NAME of an environment variable "
                "(for example OPENAI_API_KEY), never the key itself"
            )
        self.api_key_env = api_key_env
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError(f"remote backend {name!r}: timeout_s and connect_timeout_s must be positive")
        if max_retries < 0 or max_concurrency < 1:
            raise ValueError(f"remote backend {name!r}: max_retries must be >= 0 and max_concurrency >= 1")
        self.connect_timeout_s = float(connect_timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_concurrency = int(max_concurrency)
        self.max_tokens = int(max_tokens)
        self.label_max_tokens = int(label_max_tokens)
        self.temperature = float(temperature)
        self.system_prompt = system_prompt
        if image_format.lower() not in IMAGE_FORMATS:
            raise ValueError(f"remote backend {name!r}: image_format must be one of {', '.join(IMAGE_FORMATS)}")
        self.image_format = image_format.lower()
        self.max_image_side = max_image_side
        self.send_image = bool(send_image)
        self.check_vision = bool(check_vision)
        self.label_logprobs = bool(label_logprobs)
        self.retry_failed_load_after_s = float(reconnect_after_s)
        self.allow_plain_http_key = bool(allow_plain_http_key)
        self.extra_body: dict[str, Any] = dict(extra_body or {})
        self.stats = RemoteStats()
        #: What the vision probe found: "sees images", "not checked (...)", "text only (send_image = false)".
        self.vision: str = "not checked"
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._rng = random.Random()
        self._logprobs_supported = True
        self.info.device = f"remote {self._host_port}"
        self.info.quantization = "server-side"

    # ------------------------------------------------------------------------------ configuration
    @staticmethod
    def _normalise_base_url(name: str, base_url: str) -> str:
        parts = urlsplit(str(base_url).strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"remote backend {name!r}: base_url must look like http://HOST:PORT/v1, got {base_url!r}")
        if parts.username or parts.password:
            raise ValueError(
                f"remote backend {name!r}: no credentials in base_url (presets are shared files); "
                "put the key in an environment variable and name it in api_key_env"
            )
        path = parts.path.rstrip("/") or "/v1"
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))

    @property
    def display_url(self) -> str:
        """The base URL, as messages show it (it holds no credentials: those are refused)."""
        return self.base_url

    def _api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise BackendError(
                f"the environment variable {self.api_key_env} (api_key_env) is not set; "
                "export it before starting RouteLens"
            )
        return key

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _scrub(self, text: str) -> str:
        """Remove the API key from any text a server or a library produced."""
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "").strip()
            if len(key) >= 4:
                text = text.replace(key, "***")
        return text

    def _get_client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(
                    follow_redirects=False,
                    limits=httpx.Limits(
                        max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
                    ),
                    trust_env=False,  # never route the key through a proxy from the environment
                )
            return self._client

    def close(self) -> None:
        """Close the HTTP connection pool (tests and app shutdown)."""
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # ---------------------------------------------------------------------------------- transport
    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        delay = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    def _request(
        self,
        method: str,
        path: str,
        payload: dict[str, Any] | None = None,
        attempts: _Attempts | None = None,
    ) -> tuple[httpx.Response, Any, float, float]:
        """Send one request with retries inside ``timeout_s``: (response, parsed JSON, http_s, total_s).

        Raises :class:`BackendError` with a one-line message for every failure.
        """
        counter = attempts or _Attempts()
        start = time.monotonic()
        deadline = start + self.timeout_s
        url = f"{self.base_url}{path}"
        headers = self._headers()
        if not self._slots.acquire(timeout=self.timeout_s):
            raise BackendError(
                f"all {self.max_concurrency} request slots to {self.display_url} stayed busy for "
                f"{self.timeout_s:g} s (max_concurrency = {self.max_concurrency})"
            )
        try:
            client = self._get_client()
            while True:
                counter.count += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BackendError(self._timeout_message(counter.count - 1))
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
                    raise BackendError(self._timeout_message(counter.count)) from None
                except httpx.TransportError as exc:
                    if self._sleep_before_retry(counter.count, None, deadline):
                        continue
                    raise BackendError(self._unreachable(_transport_reason(exc), counter.count)) from None
                http_s = time.monotonic() - sent
                if response.status_code in RETRY_STATUSES and not self._refuses_images(response, payload):
                    wait = parse_retry_after(response.headers.get("retry-after"))
                    if self._sleep_before_retry(counter.count, wait, deadline):
                        continue
                    message = self._http_message(response, counter.count, wait, deadline)
                    raise RemoteHTTPError(message, response.status_code)
                if response.status_code >= 400:
                    message = self._http_message(response, counter.count, None, deadline)
                    raise RemoteHTTPError(message, response.status_code)
                try:
                    data = response.json()
                except (ValueError, UnicodeDecodeError):
                    start_text = _one_line(response.text, 60)
                    raise BackendError(
                        f"the server at {self.display_url} sent a reply that is not JSON "
                        f"(HTTP {response.status_code}, starts with {start_text!r})"
                    ) from None
                return response, data, http_s, time.monotonic() - start
        finally:
            self._slots.release()

    def _sleep_before_retry(self, attempt: int, retry_after: float | None, deadline: float) -> bool:
        """Sleep before the next attempt when one is allowed and fits in the budget; else False."""
        if attempt > self.max_retries:
            return False
        wait = retry_after if retry_after is not None else self._backoff(attempt)
        if time.monotonic() + wait >= deadline:
            return False
        time.sleep(wait)
        return True

    def _timeout_message(self, attempts: int) -> str:
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        return f"the server at {self.display_url} did not answer within {self.timeout_s:g} s (timeout_s){tried}"

    def _unreachable(self, reason: str, attempts: int) -> str:
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        return self._scrub(f"cannot reach the server at {self.display_url}: {reason}{tried}")

    def _refuses_images(self, response: httpx.Response, payload: Mapping[str, Any] | None) -> bool:
        if response.status_code < 400 or not payload or not _payload_has_image(payload):
            return False
        return bool(_TEXT_ONLY.search(_error_detail(response)))

    def _http_message(self, response: httpx.Response, attempts: int, retry_after: float | None, deadline: float) -> str:
        status = response.status_code
        detail = _error_detail(response)
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        if status in (401, 403):
            hint = (
                f"check the key in the environment variable {self.api_key_env}"
                if self.api_key_env
                else "the server wants a key: name its environment variable in api_key_env"
            )
            message = f"the server at {self.display_url} refused the request (HTTP {status}: {detail}); {hint}"
        elif _TEXT_ONLY.search(detail) and status >= 400:
            message = (
                f"the server's model does not accept images (HTTP {status}: {detail}); point this backend "
                "at a vision model, or set send_image = false to ask it without the image"
            )
        elif status == 429:
            message = f"rate limited by the server at {self.display_url} (HTTP 429){tried}"
            if retry_after is not None and time.monotonic() + retry_after >= deadline:
                message += f"; it asked to wait {retry_after:g} s, beyond timeout_s = {self.timeout_s:g}"
        elif status == 404:
            message = f"the server at {self.display_url} has no such endpoint or model (HTTP 404: {detail})"
        elif status >= 500:
            message = f"the server at {self.display_url} failed (HTTP {status}: {detail}){tried}"
        else:
            message = f"the server at {self.display_url} refused the request (HTTP {status}: {detail})"
        return self._scrub(message)

    # ----------------------------------------------------------------------------------- loading
    def _load(self) -> None:
        self._connect()

    def _connect(self) -> None:
        if self.api_key_env:
            self._api_key()  # fail early, and clearly, when the variable is missing
            if urlsplit(self.base_url).scheme == "http" and not _is_loopback(self._host):
                if not self.allow_plain_http_key:
                    raise BackendError(
                        f"refusing to send the API key over plain http to {self._host_port}; use https, "
                        "or set allow_plain_http_key = true for a trusted network"
                    )
        try:
            _, data, _, _ = self._request("GET", "/models")
        except RemoteHTTPError as exc:
            if exc.status != 404 or not self.model:
                raise
            data = None  # reachable, but it does not list models: trust the preset's `model`
        served = _served_models(data)
        if not self.model:
            if len(served) == 1:
                self.model = served[0]
            elif not served:
                raise BackendError(f"the server at {self.display_url} lists no models; set `model` in the preset")
            else:
                raise BackendError(
                    f"the server at {self.display_url} serves several models; set `model` to one of: "
                    + ", ".join(served[:10])
                )
        elif served and self.model not in served:
            raise BackendError(
                f"the server at {self.display_url} does not serve {self.model!r}; it serves: " + ", ".join(served[:10])
            )
        self.info.model_id = self.model
        if not self.send_image:
            self.vision = "text only (send_image = false)"
            self.info.device = f"remote {self._host_port} (text only: the image is not sent)"
        elif self.check_vision:
            self.vision = self._probe_vision()
        else:
            self.vision = "not checked (check_vision = false)"

    def _probe_vision(self) -> str:
        """Ask the same one-token question with and without a tiny image and compare prompt tokens."""
        probe_text = "What colour is this image?"
        image_part = {
            "type": "image_url",
            "image_url": {"url": image_to_data_url(Image.new("RGB", (32, 32), (200, 30, 30)), self.image_format)},
        }
        counts: list[int | None] = []
        for with_image in (True, False):
            # Both probes send a list of parts, so the only difference between them is the image.
            content: list[dict[str, Any]] = [{"type": "text", "text": probe_text}]
            if with_image:
                content = [image_part, *content]
            payload: dict[str, Any] = {
                "model": self.model,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 1,
                "temperature": 0.0,
            }
            try:
                _, data, _, _ = self._request("POST", "/chat/completions", payload)
            except BackendError as exc:
                if with_image and "does not accept images" in str(exc):
                    raise
                raise BackendError(f"the vision check failed: {exc}") from None
            usage = data.get("usage") if isinstance(data, Mapping) else None
            tokens = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
            counts.append(int(tokens) if isinstance(tokens, (int, float)) else None)
        with_image_tokens, text_tokens = counts
        if with_image_tokens is None or text_tokens is None:
            return "not checked (the server reports no prompt token counts)"
        if with_image_tokens <= text_tokens:
            raise BackendError(
                "the server's model does not accept images: it ignored an image sent in a check "
                f"({with_image_tokens} prompt tokens with the image, {text_tokens} without); point this "
                "backend at a vision model, or set send_image = false to ask it without the image"
            )
        return f"sees images ({with_image_tokens - text_tokens} image tokens for a 32x32 check image)"

    # --------------------------------------------------------------------------------- answering
    def chat(
        self,
        prompt: Prompt,
        *,
        max_tokens: int | None = None,
        top_logprobs: int | None = None,
    ) -> ChatResult:
        """One chat-completions call. Raises :class:`BackendError` (one line) on any failure."""
        if not self.send_image:
            prompt = prompt.without_images()
        encode_start = time.perf_counter()
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": prompt.to_openai_messages(self.image_format, self.max_image_side),
            "max_tokens": max_tokens or self.max_tokens,
            "temperature": self.temperature,
            "stream": False,
        }
        payload.update(self.extra_body)
        want_logprobs = bool(top_logprobs) and self._logprobs_supported
        if want_logprobs:
            payload["logprobs"] = True
            payload["top_logprobs"] = min(MAX_TOP_LOGPROBS, int(top_logprobs or 1))
        encode_s = time.perf_counter() - encode_start
        attempts = _Attempts()
        try:
            try:
                response, data, http_s, total_s = self._request("POST", "/chat/completions", payload, attempts)
            except RemoteHTTPError as exc:
                if want_logprobs and 400 <= exc.status < 500 and _LOGPROBS_REJECTED.search(str(exc)):
                    self._logprobs_supported = False  # this server takes no logprobs; ask without
                    payload.pop("logprobs", None)
                    payload.pop("top_logprobs", None)
                    response, data, http_s, total_s = self._request("POST", "/chat/completions", payload, attempts)
                else:
                    raise
            result = self._parse_chat(data, response, http_s, total_s, attempts.count)
        except BackendError:
            self.stats.record(None, attempts.count)
            raise
        result.encode_s = encode_s
        self.stats.record(result, attempts.count)
        return result

    def _parse_chat(
        self, data: Any, response: httpx.Response, http_s: float, total_s: float, attempts: int
    ) -> ChatResult:
        def malformed(why: str) -> BackendError:
            return BackendError(f"the server at {self.display_url} sent a malformed chat-completions reply ({why})")

        if not isinstance(data, Mapping):
            raise malformed(f"a JSON {type(data).__name__}, not an object")
        if "error" in data and "choices" not in data:
            detail = data["error"].get("message") if isinstance(data["error"], Mapping) else data["error"]
            raise BackendError(
                self._scrub(f"the server at {self.display_url} reported an error: {_one_line(str(detail), 200)}")
            )
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            raise malformed("no choices")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, Mapping):
            raise malformed("no message in the first choice")
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "text"
            )
        elif content is not None and not isinstance(content, str):
            raise malformed(f"message content is a {type(content).__name__}")
        usage = data.get("usage") if isinstance(data.get("usage"), Mapping) else {}
        return ChatResult(
            text=(content or "").strip(),
            model=str(data.get("model") or self.model),
            finish_reason=choice.get("finish_reason"),
            usage=dict(usage),
            logprobs=choice.get("logprobs"),
            total_s=total_s,
            http_s=http_s,
            server_s=server_reported_seconds(data, response.headers),
            attempts=attempts,
        )

    def _answer(self, image: Image.Image, question: str, labels: list[str] | None) -> ModelReply:
        prompt = vqa_prompt(question, image, labels, system=self.system_prompt)
        top = None
        if labels and self.label_logprobs:
            top = max(5, min(MAX_TOP_LOGPROBS, len(labels)))
        result = self.chat(prompt, max_tokens=self.label_max_tokens if labels else None, top_logprobs=top)
        if not result.text:
            reason = f" (finish_reason: {result.finish_reason})" if result.finish_reason else ""
            raise BackendError(f"the model returned an empty reply{reason}")
        if not labels:
            return ModelReply(text=result.text)
        chosen = match_label(result.text, labels)
        scores = label_scores_from_logprobs(result.logprobs, labels, chosen) if top else None
        # The text is the label the model named; a reply that names none is shown as the model wrote it.
        return ModelReply(text=chosen if chosen is not None else result.text, label_scores=scores)


def _payload_has_image(payload: Mapping[str, Any]) -> bool:
    for message in payload.get("messages", []) or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list) and any(
            isinstance(part, Mapping) and part.get("type") == "image_url" for part in content
        ):
            return True
    return False


def _served_models(data: Any) -> list[str]:
    if isinstance(data, Mapping):
        items = data.get("data", data.get("models", []))
    else:
        items = data
    if not isinstance(items, list):
        return []
    ids: list[str] = []
    for item in items:
        if isinstance(item, Mapping):
            ident = item.get("id") or item.get("name") or item.get("model")
            if ident:
                ids.append(str(ident))
        elif isinstance(item, str):
            ids.append(item)
    return ids
