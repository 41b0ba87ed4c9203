"""The ``remote`` family: a model behind an OpenAI-compatible chat-completions server.

vLLM, Text Generation Inference, llama.cpp's server (C++ or llama-cpp-python), Ollama and hosted models
all speak the same protocol, so one backend covers them (see docs/remote.md for the server side).

What it does, per question:

- builds the prompt with :func:`backends.messages.vqa_prompt` and sends the image as a base64 PNG data URL
  in an ``image_url`` content part, followed by the question text;
- with candidate labels, asks for exactly one of them, maps the reply to a label
  (:func:`~backends.remote_labels.match_label`) and, where the server returns ``logprobs``, ranks the
  labels by the probability of their first token (:func:`~backends.remote_labels.label_scores_from_logprobs`);
- sends through its :class:`~backends.remote_http.RetryingClient` (:attr:`RemoteBackend.http`), which
  keeps within ``timeout_s`` for the whole call (waiting for a slot, retries and backoff included),
  retries 429 / 5xx / connection failures with exponential backoff and jitter, honouring ``Retry-After``,
  and never has more than ``max_concurrency`` requests in flight to its server;
- turns every failure (server down, slow, 4xx/5xx, malformed reply, a model that takes no images) into a
  one-line :class:`BackendError` that the base class shows in the panel, with no stack trace (the
  reply shapes and the servers' wordings for "no images" are read in :mod:`backends.remote_chat`);
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

import ipaddress
import os
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from PIL import Image

from backends.base import Backend, BackendError, ModelReply
from backends.messages import IMAGE_FORMATS, Prompt, vqa_prompt
from backends.remote_chat import (
    LOGPROBS_REJECTED,
    MAX_TOP_LOGPROBS,
    ChatResult,
    explain_image_refusal,
    parse_chat_reply,
    prompt_tokens,
    refuses_images,
    served_models,
    vision_probe_payload,
)
from backends.remote_http import (
    RETRY_STATUSES,
    Attempts,
    HTTPReply,
    RemoteHTTPError,
    RemoteStats,
    RetryingClient,
    parse_retry_after,
    server_reported_seconds,
)
from backends.remote_labels import label_scores_from_logprobs, match_label

__all__ = [
    "MAX_TOP_LOGPROBS",
    "RETRY_STATUSES",
    "ChatResult",
    "RemoteBackend",
    "RemoteHTTPError",
    "RemoteStats",
    "label_scores_from_logprobs",
    "match_label",
    "parse_retry_after",
    "server_reported_seconds",
]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        self._logprobs_supported = True
        try:
            self.http = RetryingClient(
                self.base_url,
                connect_timeout_s=connect_timeout_s,
                max_retries=max_retries,
                backoff_base_s=backoff_base_s,
                backoff_max_s=backoff_max_s,
                max_concurrency=max_concurrency,
                headers=self._headers,
                scrub=self._scrub,
                auth_hint=(
                    f"check the key in the environment variable {api_key_env}"
                    if api_key_env
                    else "the server wants a key: name its environment variable in api_key_env"
                ),
                never_retry=refuses_images,
                explain=explain_image_refusal,
            )
        except ValueError as exc:
            raise ValueError(f"remote backend {name!r}: {exc}") from None
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

    def close(self) -> None:
        """Close the HTTP connection pool (tests and app shutdown)."""
        self.http.close()

    def _request(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None, attempts: Attempts | None = None
    ) -> HTTPReply:
        """One request through :attr:`http`, within this backend's current ``timeout_s``."""
        return self.http.request(method, path, payload, timeout_s=self.timeout_s, attempts=attempts)

    # ----------------------------------------------------------------------------------- loading
    def _load(self) -> None:
        self._connect()

    def _connect(self) -> None:
        if self.api_key_env:
            self._api_key()  # fail early, and clearly, when the variable is missing
            plain = urlsplit(self.base_url).scheme == "http" and not _is_loopback(self._host)
            if plain and not self.allow_plain_http_key:
                raise BackendError(
                    f"refusing to send the API key over plain http to {self._host_port}; use https, "
                    "or set allow_plain_http_key = true for a trusted network"
                )
        try:
            data = self._request("GET", "/models").data
        except RemoteHTTPError as exc:
            if exc.status != 404 or not self.model:
                raise
            data = None  # reachable, but it does not list models: trust the preset's `model`
        served = served_models(data)
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
        counts: list[int | None] = []
        for with_image in (True, False):
            payload = vision_probe_payload(self.model, with_image, self.image_format)
            try:
                counts.append(prompt_tokens(self._request("POST", "/chat/completions", payload).data))
            except BackendError as exc:
                if with_image and "does not accept images" in str(exc):
                    raise
                raise BackendError(f"the vision check failed: {exc}") from None
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
        attempts = Attempts()
        try:
            try:
                reply = self._request("POST", "/chat/completions", payload, attempts)
            except RemoteHTTPError as exc:
                if want_logprobs and 400 <= exc.status < 500 and LOGPROBS_REJECTED.search(str(exc)):
                    self._logprobs_supported = False  # this server takes no logprobs; ask without
                    payload.pop("logprobs", None)
                    payload.pop("top_logprobs", None)
                    reply = self._request("POST", "/chat/completions", payload, attempts)
                else:
                    raise
            result = parse_chat_reply(
                reply, attempts=attempts.count, model=self.model, server=self.display_url, scrub=self._scrub
            )
        except BackendError:
            self.stats.record_error(attempts.count)
            raise
        result.encode_s = encode_s
        self.stats.record_ok(attempts.count, result.total_s + encode_s, result.server_s)
        return result

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
