"""An OpenAI-compatible chat endpoint on the app's own server: ``POST /v1/chat/completions``, ``GET /v1/models``.

Mounted through ``demo.launch(app_kwargs={"routes": endpoint.routes()})``: FastAPI takes ``routes`` at
construction, so these routes exist before Gradio adds its own and ``launch`` keeps doing everything else
(share link, ``--auth`` login page, ``max_file_size``). Gradio's login guards its own routes only, so it
neither opens nor gates these; access here is the API key alone (or loopback when no key is set).

Only the chosen backend runs. Every accepted request is recorded like a Compare query (source ``api``)
with exactly one answer, so its ``query_id`` can be judged through ``/judge``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import threading
import time
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components.runtime import Busy, InputError, Runtime

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
ROUTED = "routelens"
#: A request body cap: a 25 MB image grows by a third in base64.
MAX_BODY_BYTES = 36 * 2**20
MAX_FETCH_BYTES = 25 * 2**20


class ApiError(Exception):
    """A refusal in OpenAI's error shape."""

    def __init__(self, status: int, message: str, type_: str, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


class ExposureError(RuntimeError):
    """The app would serve the endpoint openly on a non-loopback host."""


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse start-up on a non-loopback host without a key (the endpoint runs models for anyone)."""
    if not api_key and host not in LOOPBACK:
        raise ExposureError(
            f"--host {host} serves /v1/chat/completions beyond this machine, but no API key is set: "
            "set ROUTELENS_API_KEY (or name another variable with --api-key-env), or use --host 127.0.0.1"
        )


def preset_api_settings(runtime: Runtime) -> dict[str, Any]:
    """The preset's ``[api]`` table, read defensively (Preset keeps no unknown tables): {} when absent or bad."""
    table = getattr(runtime.preset, "api", None)
    if isinstance(table, dict):
        return table
    try:
        data = tomllib.loads(Path(runtime.preset.source).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return {}
    table = data.get("api")
    return table if isinstance(table, dict) else {}


class RateLimiter:
    """A token bucket per client key; one per endpoint object (never module state)."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate, self.burst = max(1e-6, float(rate_per_s)), max(1, int(burst))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float | None:
        """None when allowed, else seconds until a token is back."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


@dataclass(frozen=True)
class ChatRequest:
    backend: str | None  # None: the router picks
    lambda_cost: float | None
    question: str
    image: bytes
    labels: list[str] | None
    stream: bool
    model: str


def bad(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code)


def decode_data_url(url: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise bad("image_url must be a data:image/...;base64, URL (or an https URL on an allowed host)", "invalid_image_url")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad("the image data URL is not valid base64", "invalid_image_url") from None


class OpenAIEndpoint:
    """The handlers for one app; holds its rate limiter."""

    def __init__(
        self, runtime: Runtime, *, api_key: str | None = None, closed_reason: str | None = None,
        image_hosts: list[str] | None = None, rate_per_s: float | None = None, burst: int | None = None,
        slot_wait_s: float = 2.0, fetch: Callable[[str], bytes] | None = None,
    ) -> None:
        settings = preset_api_settings(runtime)
        hosts = image_hosts if image_hosts is not None else settings.get("image_hosts", [])
        self.runtime = runtime
        self.api_key = api_key or None
        self.closed_reason = closed_reason
        self.image_hosts = frozenset(str(h).lower() for h in hosts) if isinstance(hosts, list) else frozenset()
        self.limiter = RateLimiter(
            rate_per_s if rate_per_s is not None else float(settings.get("rate_per_minute", 120)) / 60.0,
            burst if burst is not None else int(settings.get("burst", 20)),
        )
        self.slot_wait_s = slot_wait_s
        self.fetch = fetch or self._fetch

    # ------------------------------------------------------------------ access
    def client_key(self, headers: Any, client_host: str | None) -> str:
        """The rate-limit key; raises 401 when the key is missing or wrong."""
        if self.closed_reason and not self.api_key:
            raise ApiError(401, self.closed_reason, "authentication_error", "endpoint_closed")
        if not self.api_key:
            return f"local:{client_host}"
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer <key>)", "authentication_error", "invalid_api_key")
        return "key:" + hmac.new(b"routelens", token.strip().encode(), "sha256").hexdigest()[:16]

    # ------------------------------------------------------------------ parsing
    def model_ids(self) -> list[str]:
        return [ROUTED] + [b.name for b in self.runtime.backends]

    def parse(self, body: Any) -> ChatRequest:
        if not isinstance(body, dict):
            raise bad("the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad("model is required: 'routelens', 'routelens:lambda=0.3' or a backend's name", "missing_model")
        backend, lam = self._model(model)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad("messages must be a non-empty list", "missing_messages")
        user = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
        if user is None:
            raise bad("messages need a user message with the question and an image_url part", "missing_messages")
        content = user.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise bad("message content must be a string or a list of parts")
        texts, images = [], []
        for part in parts:
            if not isinstance(part, dict):
                raise bad("each content part must be an object")
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str):
                    raise bad("image_url.url must be a string", "invalid_image_url")
                images.append(url)
        if not images:
            raise bad("the last user message has no image_url part", "missing_image")
        if len(images) > 1:
            raise bad("send one image per request", "too_many_images")
        labels = body.get("labels")
        if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise bad("labels must be a list of strings")
        return ChatRequest(backend, lam, " ".join(texts), self._image(images[0]), labels, bool(body.get("stream")), model)

    def _model(self, model: str) -> tuple[str | None, float | None]:
        if model == ROUTED:
            return None, None
        if model.startswith(ROUTED + ":"):
            key, _, value = model[len(ROUTED) + 1:].partition("=")
            try:
                lam = float(value)
            except ValueError:
                lam = -1.0
            if key != "lambda" or not 0.0 <= lam <= 100.0:
                raise ApiError(404, f"unknown model {model!r}: use routelens:lambda=X with 0 <= X <= 100", "invalid_request_error", "model_not_found")
            return None, lam
        if model in (b.name for b in self.runtime.backends):
            return model, None
        raise ApiError(404, f"unknown model {model!r}; GET /v1/models lists them", "invalid_request_error", "model_not_found")

    def _image(self, url: str) -> bytes:
        """A data URL, or https on an allow-listed host; never a local path (a string is never passed on)."""
        if url.startswith("data:"):
            return decode_data_url(url)
        parsed = urlparse(url)
        if parsed.scheme == "https" and (parsed.hostname or "").lower() in self.image_hosts:
            return self.fetch(url)
        raise bad("image_url must be a data: URL (https only for hosts the preset's [api] image_hosts allows)", "invalid_image_url")

    @staticmethod
    def _fetch(url: str) -> bytes:
        import httpx

        try:
            with httpx.stream("GET", url, timeout=10, follow_redirects=False) as reply:
                if reply.status_code != 200:
                    raise bad(f"the image URL answered HTTP {reply.status_code}", "invalid_image_url")
                data = b""
                for chunk in reply.iter_bytes():
                    data += chunk
                    if len(data) > MAX_FETCH_BYTES:
                        raise bad("the image at the URL is larger than 25 MB", "invalid_image_url")
                return data
        except httpx.HTTPError as exc:
            raise bad(f"the image URL could not be fetched ({type(exc).__name__})", "invalid_image_url") from None

    # ------------------------------------------------------------------ answering
    def complete(self, request: ChatRequest) -> dict[str, Any]:
        """Prepare, route (unless named), run one backend, record; the chat.completion dict."""
        runtime = self.runtime
        try:
            picture, clean, labels = runtime.prepare(request.image, request.question, request.labels)
        except InputError as exc:
            raise bad(str(exc), "invalid_input") from None
        try:
            with runtime.compare_slot(self.slot_wait_s):
                decision = None
                if request.backend is None:
                    decision = runtime.route(picture, clean, request.lambda_cost)
                    name = decision["choice"]
                else:
                    from router.categories import classify_question

                    name = request.backend
                category = decision.get("category") if decision else classify_question(clean)
                result, answer = runtime.answer_one(picture, clean, labels, name, decision=decision, source="api")
        except Busy as exc:
            raise ApiError(429, str(exc), "rate_limit_error", "over_capacity", {"Retry-After": "2"}) from None
        backend = runtime.backend(name)
        if answer.error:
            raise ApiError(502, f"backend {name} failed: {answer.error}", "server_error", "backend_failed")
        lam = decision.get("lambda_cost") if decision else None
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": "stop"}],
            # Word counts, not tokens: the backends do not all report tokens.
            "usage": {"prompt_tokens": len(clean.split()), "completion_tokens": len(answer.text.split()),
                      "total_tokens": len(clean.split()) + len(answer.text.split())},
            "routelens": {
                "backend": name, "kind": backend.describe().kind,
                "confidence": decision.get("confidence") if decision else None,
                "category": category, "router_version": decision.get("version") if decision else None,
                "lambda_cost": lam, "query_id": result.query_id,
                "cost": backend.cost, "latency_s": round(answer.latency_s, 4), "notices": result.notices,
            },
        }

    # ------------------------------------------------------------------ HTTP
    def routes(self) -> list[Any]:
        from starlette.routing import Route

        return [
            Route("/v1/models", self.http_models, methods=["GET"]),
            Route("/v1/chat/completions", self.http_chat, methods=["POST"]),
        ]

    async def http_models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        try:
            self.client_key(request.headers, request.client.host if request.client else None)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "routelens"} for name in self.model_ids()]})

    async def http_chat(self, request: Any) -> Any:
        import anyio
        from starlette.responses import JSONResponse, StreamingResponse

        try:
            key = self.client_key(request.headers, request.client.host if request.client else None)
            wait = self.limiter.take(key)
            if wait is not None:
                raise ApiError(429, "rate limit reached for this key; retry after the Retry-After seconds",
                               "rate_limit_error", "rate_limited", {"Retry-After": str(max(1, int(wait + 0.999)))})
            raw = await request.body()
            if len(raw) > MAX_BODY_BYTES:
                raise bad("the request body is larger than 36 MB")
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise bad("the request body is not valid JSON", "invalid_json") from None
            parsed = await anyio.to_thread.run_sync(self.parse, body)
            reply = await anyio.to_thread.run_sync(self.complete, parsed)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        except Exception:  # never a stack trace to the client
            import logging

            logging.getLogger("routelens").exception("chat completion failed")
            return JSONResponse(ApiError(500, "internal error", "server_error", "internal").body(), status_code=500)
        if not parsed.stream:
            return JSONResponse(reply)
        return StreamingResponse(sse_events(reply), media_type="text/event-stream")


def sse_events(reply: dict[str, Any]):
    """A finished completion as chunks: role+content, then finish_reason with usage and routelens, then [DONE]."""
    base = {"id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"], "model": reply["model"]}
    text = reply["choices"][0]["message"]["content"]
    first = dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}])
    last = dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}], usage=reply["usage"], routelens=reply["routelens"])
    for chunk in (first, last):
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"
