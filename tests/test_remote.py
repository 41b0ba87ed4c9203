"""Fast tests of the remote (OpenAI-compatible) backend against a small real HTTP server on loopback.

The server below is a test double of a chat-completions server written with ``http.server``: it
speaks real HTTP over a real socket, so the backend's transport, timeouts, retries and parsing are
exercised end to end, and it can be told to fail in the ways real servers fail (429 with Retry-After,
500s, slowness, malformed JSON, models that ignore or refuse images). The real llama.cpp server is in
tests/test_remote_llamacpp.py (marker ``server``).
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from backends.base import Answer
from backends.messages import ChatMessage, ImagePart, Prompt, TextPart, image_to_data_url, vqa_prompt
from backends.remote import RemoteBackend
from backends.remote_http import (
    Attempts,
    HTTPReply,
    RemoteHTTPError,
    RetryingClient,
    parse_retry_after,
    server_reported_seconds,
)
from backends.remote_labels import label_scores_from_logprobs, match_label

KEY_ENV = "ROUTELENS_TEST_REMOTE_KEY"
SECRET = "sk-test-0123456789abcdef"


# ------------------------------------------------------------------------------------ the test server
@dataclass
class Reply:
    """One scripted reply to a chat request. ``body`` None = a normal completion."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class ChatServerDouble:
    """State of one test server: what it answers and what it received."""

    def __init__(self) -> None:
        self.models: list[str] = ["test-vlm"]
        self.models_replies: list[Reply] = []
        self.script: list[Reply] = []
        self.default_delay_s = 0.0
        self.reply_text = "A dog."
        self.image_tokens = 40  # 0: the model ignores images (like a text-only llama-cpp-python server)
        self.refuse_images: str | None = None  # an error text: the model refuses images with HTTP 400
        self.refuse_logprobs = False
        self.logprobs: list[dict[str, Any]] | None = None
        self.timings: dict[str, float] | None = None
        self.chat_requests: list[dict[str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.keep_alive = True
        self.url = ""
        self.opened: list[Any] = []  # backends and clients to close at teardown
        self.shut_down: Callable[[], None] = lambda: None  # the fixture sets it: stops the server

    # -- replies
    def completion(self, request: dict[str, Any]) -> Reply:
        texts, images = [], 0
        for message in request.get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            else:
                for part in content:
                    if part["type"] == "text":
                        texts.append(part["text"])
                    elif part["type"] == "image_url":
                        images += 1
        if images and self.refuse_images:
            return Reply(400, {"error": {"message": self.refuse_images, "type": "BadRequestError"}})
        if self.refuse_logprobs and request.get("logprobs"):
            return Reply(400, {"error": {"message": "logprobs are not supported by this server"}})
        prompt_tokens = sum(len(t.split()) for t in texts) + images * self.image_tokens
        message = {"role": "assistant", "content": self.reply_text}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
        if request.get("logprobs") and self.logprobs is not None:
            choice["logprobs"] = {"content": self.logprobs}
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 2, "total_tokens": prompt_tokens + 2}
        body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion", "model": request.get("model", "")}
        body.update(choices=[choice], usage=usage)
        if self.timings:
            body["timings"] = self.timings
        return Reply(200, body, delay_s=self.default_delay_s)


def _handler(state: ChatServerDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def _send(self, reply: Reply) -> None:
            deadline = time.monotonic() + reply.delay_s
            while time.monotonic() < deadline and not state.stop.is_set():
                time.sleep(0.01)
            if isinstance(reply.body, (bytes, str)):
                data, ctype = (reply.body.encode() if isinstance(reply.body, str) else reply.body), "text/plain"
            else:
                data, ctype = json.dumps(reply.body).encode(), "application/json"
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if not state.keep_alive:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        def do_GET(self) -> None:
            with state.lock:
                state.headers_seen.append(dict(self.headers))
                scripted = state.models_replies.pop(0) if state.models_replies else None
            if self.path != "/v1/models":
                self._send(Reply(404, {"error": {"message": f"no route {self.path}"}}))
            elif scripted is not None:
                self._send(scripted)
            else:
                self._send(Reply(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in state.models]}))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            if self.path != "/v1/chat/completions":
                self._send(Reply(404, {"error": {"message": f"no route {self.path}"}}))
                return
            request = json.loads(raw)
            with state.lock:
                state.chat_requests.append(request)
                state.headers_seen.append(dict(self.headers))
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                scripted = state.script.pop(0) if state.script else None
            try:
                self._send(scripted if scripted is not None else state.completion(request))
            finally:
                with state.lock:
                    state.in_flight -= 1

    return Handler


@pytest.fixture()
def server() -> Iterator[ChatServerDouble]:
    state = ChatServerDouble()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    def shut_down() -> None:
        if not state.stop.is_set():
            state.stop.set()
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)

    state.shut_down = shut_down
    try:
        yield state
    finally:
        for opened in state.opened:
            opened.close()
        shut_down()


@pytest.fixture()
def image() -> Image.Image:
    picture = Image.new("RGB", (64, 48), (10, 120, 200))
    picture.putpixel((3, 4), (255, 0, 0))
    return picture


def make(server: ChatServerDouble, **options: Any) -> RemoteBackend:
    options.setdefault("timeout_s", 5.0)
    options.setdefault("backoff_base_s", 0.01)
    options.setdefault("backoff_max_s", 0.05)
    backend = RemoteBackend("remote-test", base_url=server.url, cost=2.0, **options)
    server.opened.append(backend)
    return backend


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_clean_error(answer: Answer) -> str:
    assert answer.error, answer
    assert "\n" not in answer.error and "Traceback" not in answer.error
    assert answer.text == ""
    return answer.error


# ------------------------------------------------------------------------------------------ happy path
def test_answer_sends_png_data_url_then_question(server: ChatServerDouble, image: Image.Image) -> None:
    backend = make(server)
    answer = backend.answer(image, "What animal is this?")
    assert answer.ok, answer.error
    assert (answer.text, answer.label_scores) == ("A dog.", None)
    info = backend.describe()
    assert (info.kind, info.family, info.status) == ("vlm+llm", "remote", "ready")
    assert (info.model_id, info.device, info.cost) == ("test-vlm", f"remote {server.url.split('/')[2]}", 2.0)
    assert backend.vision.startswith("sees images")
    request = server.chat_requests[-1]
    assert request["model"] == "test-vlm"
    content = request["messages"][-1]["content"]
    assert content[0]["type"] == "image_url"
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.format == "PNG" and sent.size == (64, 48)
    assert sent.convert("RGB").getpixel((3, 4)) == (255, 0, 0)  # lossless
    assert content[1] == {"type": "text", "text": "What animal is this?\nAnswer briefly, in a few words."}
    assert "logprobs" not in request


def test_large_image_is_downscaled_before_sending(server: ChatServerDouble) -> None:
    backend = make(server, max_image_side=256, check_vision=False)
    answer = backend.answer(Image.new("RGB", (1024, 512)), "What is it?")
    assert answer.ok, answer.error
    url = server.chat_requests[-1]["messages"][-1]["content"][0]["image_url"]["url"]
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (256, 128)


def test_server_reported_time_is_recorded(server: ChatServerDouble, image: Image.Image) -> None:
    server.timings = {"prompt_ms": 12.0, "predicted_ms": 30.0}
    backend = make(server, check_vision=False)
    assert backend.answer(image, "What is it?").ok
    stats = backend.stats.snapshot()
    assert stats["last_server_s"] == pytest.approx(0.042)
    assert stats["ok"] == 1 and stats["errors"] == 0 and stats["retries"] == 0
    assert stats["last_total_s"] > 0


def test_labels_are_requested_mapped_and_ranked_by_logprobs(server: ChatServerDouble, image: Image.Image) -> None:
    server.reply_text = "Dog."
    top = [{"token": "Dog", "logprob": -0.2}, {"token": " cat", "logprob": -2.0}, {"token": "The", "logprob": -3.0}]
    server.logprobs = [
        {"token": "Dog", "logprob": -0.2, "top_logprobs": top},
        {"token": ".", "logprob": -0.1, "top_logprobs": []},
    ]
    backend = make(server, check_vision=False)
    answer = backend.answer(image, "Is this a cat or a dog?", labels=["cat", "dog", "rocket"])
    assert answer.ok, answer.error
    assert answer.text == "dog"
    assert answer.label_scores is not None
    labels = [label for label, _ in answer.label_scores]
    assert labels == ["dog", "cat", "rocket"]
    assert sum(score for _, score in answer.label_scores) == pytest.approx(1.0)
    assert answer.label_scores[2][1] == 0.0
    request = server.chat_requests[-1]
    assert request["logprobs"] is True and request["top_logprobs"] == 5
    question = request["messages"][-1]["content"][1]["text"]
    assert "exactly one of these options and nothing else: cat, dog, rocket" in question
    assert request["max_tokens"] == 16


def test_server_without_logprobs_support_is_asked_again_without(server: ChatServerDouble, image: Image.Image) -> None:
    server.refuse_logprobs = True
    server.reply_text = "It is a cat"
    backend = make(server, check_vision=False)
    first = backend.answer(image, "cat or dog?", labels=["cat", "dog"])
    second = backend.answer(image, "cat or dog?", labels=["cat", "dog"])
    assert (first.text, first.label_scores, first.error) == ("cat", None, None)
    assert second.ok
    # the first question found out; the second did not ask for logprobs again
    assert [bool(r.get("logprobs")) for r in server.chat_requests] == [True, False, False]


def test_reply_naming_no_label_is_shown_as_written(server: ChatServerDouble, image: Image.Image) -> None:
    server.reply_text = "a giraffe"
    backend = make(server, check_vision=False, label_logprobs=False)
    answer = backend.answer(image, "cat or dog?", labels=["cat", "dog"])
    assert (answer.text, answer.label_scores, answer.error) == ("a giraffe", None, None)


def test_empty_reply_is_an_error(server: ChatServerDouble, image: Image.Image) -> None:
    server.reply_text = ""
    backend = make(server, check_vision=False)
    error = assert_clean_error(backend.answer(image, "What?"))
    assert error == "the model returned an empty reply (finish_reason: stop)"


# ----------------------------------------------------------------------------------- faults: retries
def test_500s_give_an_error_after_the_retries(server: ChatServerDouble, image: Image.Image) -> None:
    backend = make(server, check_vision=False, max_retries=2)
    assert backend.load()
    server.script = [Reply(500, {"error": {"message": "CUDA error: device lost"}}) for _ in range(5)]
    error = assert_clean_error(backend.answer(image, "What is it?"))
    assert error == f"the server at {server.url} failed (HTTP 500: CUDA error: device lost) after 3 attempts"
    assert len(server.chat_requests) == 3
    stats = backend.stats.snapshot()
    assert stats["errors"] == 1 and stats["retries"] == 2


def test_503_then_success_uses_backoff(server: ChatServerDouble, image: Image.Image) -> None:
    backend = make(server, check_vision=False)
    assert backend.load()
    server.script = [Reply(503, "overloaded"), Reply(502, "bad gateway")]
    answer = backend.answer(image, "What is it?")
    assert answer.ok, answer.error
    assert len(server.chat_requests) == 3
    assert backend.stats.snapshot()["retries"] == 2


# ------------------------------------------------------------------- the HTTP client (backends.remote_http)
def post(server: ChatServerDouble, timeout_s: float = 5.0, **options: Any) -> tuple[HTTPReply, int]:
    """One POST through a fresh :class:`RetryingClient` (fast backoff): the reply and the attempts made."""
    options.setdefault("backoff_base_s", 0.01)
    options.setdefault("backoff_max_s", 0.05)
    http = RetryingClient(server.url, **options)
    server.opened.append(http)
    attempts = Attempts()
    payload = {"model": "test-vlm", "messages": [{"role": "user", "content": "hi"}]}
    return http.request("POST", "/chat/completions", payload, timeout_s=timeout_s, attempts=attempts), attempts.count


def test_client_honours_retry_after(server: ChatServerDouble) -> None:
    server.script = [Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "0.3"})]
    start = time.monotonic()
    reply, attempts = post(server)
    assert time.monotonic() - start >= 0.3  # Retry-After honoured (the backoff alone would be <= 0.05 s here)
    assert reply.data["choices"][0]["message"]["content"] == "A dog."
    assert reply.total_s >= 0.3 > reply.http_s
    assert attempts == 2 and len(server.chat_requests) == 2


@pytest.mark.parametrize(
    ("status", "retry_after", "timeout_s", "attempts", "message"),
    [  # a second 0.6 s wait would end after the 1 s deadline; a 30 s wait is beyond a 2 s one at once
        (503, "0.6", 1.0, 2, "the server at {url} failed (HTTP 503: busy) after 2 attempts"),
        (429, "30", 2.0, 1, "rate limited by the server at {url} (HTTP 429); it asked to wait 30 s, beyond timeout_s = 2"),
    ],
    ids=["503-second-wait-too-late", "429-wait-beyond-budget"],
)
def test_client_deadline_stops_retries(
    server: ChatServerDouble, status: int, retry_after: str, timeout_s: float, attempts: int, message: str
) -> None:
    server.script = [Reply(status, {"error": "busy"}, headers={"Retry-After": retry_after}) for _ in range(10)]
    start = time.monotonic()
    with pytest.raises(RemoteHTTPError) as caught:
        post(server, timeout_s=timeout_s, max_retries=9)
    assert time.monotonic() - start < 1.0
    assert caught.value.status == status and len(server.chat_requests) == attempts
    assert str(caught.value) == message.format(url=server.url)


def test_client_does_not_retry_4xx(server: ChatServerDouble) -> None:
    server.script = [Reply(422, {"detail": [{"msg": "field required: messages"}]})] * 3
    with pytest.raises(RemoteHTTPError) as caught:
        post(server)
    assert caught.value.status == 422 and len(server.chat_requests) == 1
    assert str(caught.value) == f"the server at {server.url} refused the request (HTTP 422: field required: messages)"


def test_client_hooks_explain_scrub_and_stop_retries(server: ChatServerDouble) -> None:
    server.script = [Reply(500, {"error": {"message": "no images for token s3cret"}})] * 3
    with pytest.raises(RemoteHTTPError) as caught:
        post(
            server,
            never_retry=lambda detail, payload: "no images" in detail and payload is not None,
            explain=lambda status, detail: f"own ({status}: {detail})",
            scrub=lambda text: text.replace("s3cret", "***"),
        )
    assert str(caught.value) == "own (500: no images for token ***)"
    assert len(server.chat_requests) == 1


def test_client_backoff_is_capped_with_equal_jitter() -> None:
    http = RetryingClient("http://127.0.0.1:1/v1", backoff_base_s=0.5, backoff_max_s=2.0)
    for attempt, full in [(1, 0.5), (2, 1.0), (3, 2.0), (8, 2.0)]:
        waits = [http.backoff(attempt) for _ in range(50)]
        assert all(full / 2 <= wait <= full for wait in waits), (attempt, min(waits), max(waits))
        assert max(waits) - min(waits) > 0  # jittered, so clients that failed together do not retry together


def test_parse_retry_after() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    assert parse_retry_after(email.utils.formatdate(now + 10, usegmt=True), now=now) == pytest.approx(10, abs=1.01)


def test_server_reported_seconds() -> None:
    assert server_reported_seconds({"timings": {"prompt_ms": 100, "predicted_ms": 50}}, {}) == pytest.approx(0.15)
    assert server_reported_seconds({}, {"x-compute-time": "0.25"}) == 0.25
    assert server_reported_seconds({}, {"openai-processing-ms": "120"}) == pytest.approx(0.12)
    assert server_reported_seconds({}, {"server-timing": "queue;dur=5, total;dur=40"}) == pytest.approx(0.04)
    assert server_reported_seconds({}, {"server-timing": "a;dur=5, b;dur=10"}) == pytest.approx(0.015)
    assert server_reported_seconds({}, {}) is None


# ------------------------------------------------------------------------------ faults: slow and down
def test_slow_server_times_out_within_the_budget(server: ChatServerDouble, image: Image.Image) -> None:
    backend = make(server, check_vision=False, timeout_s=0.6)
    assert backend.load()
    server.default_delay_s = 5.0
    start = time.monotonic()
    error = assert_clean_error(backend.answer(image, "What is it?"))
    elapsed = time.monotonic() - start
    assert error == f"the server at {server.url} did not answer within 0.6 s (timeout_s)"
    assert 0.5 < elapsed < 1.5


def test_server_down_is_a_clear_load_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = RemoteBackend("down", base_url=url, backoff_base_s=0.01, max_retries=2, timeout_s=5)
    start = time.monotonic()
    answer = backend.answer(Image.new("RGB", (32, 32)), "What is it?")
    backend.close()
    assert time.monotonic() - start < 2.0
    error = assert_clean_error(answer)
    assert error == (
        f"could not load: cannot reach the server at {url}: connection refused (is the server running?) after 3 attempts"
    )
    assert backend.describe().status == "failed"


def test_server_going_down_after_load_is_a_clear_answer_error(server: ChatServerDouble, image: Image.Image) -> None:
    server.keep_alive = False  # so that shutting the server down leaves no open connection behind
    backend = make(server, check_vision=False)
    assert backend.load()
    server.shut_down()
    error = assert_clean_error(backend.answer(image, "What is it?"))
    assert error.startswith(f"cannot reach the server at {server.url}: ")


def test_failed_load_is_retried_after_reconnect_after_s(server: ChatServerDouble, image: Image.Image) -> None:
    server.models_replies = [Reply(404, {"error": {"message": "starting up"}})]
    backend = make(server, check_vision=False, reconnect_after_s=0.2)
    first = backend.answer(image, "What is it?")
    again_at_once = backend.answer(image, "What is it?")
    time.sleep(0.25)
    later = backend.answer(image, "What is it?")
    assert first.error and "HTTP 404" in first.error and first.error.startswith("could not load: ")
    assert again_at_once.error == first.error  # no hammering a server that is down
    assert later.ok, later.error


def test_server_without_a_models_list_is_trusted_when_the_model_is_named(server: ChatServerDouble, image: Image.Image) -> None:
    server.models_replies = [Reply(404, {"error": {"message": "Not Found"}})] * 2
    named = make(server, model="llava", check_vision=False)
    assert named.answer(image, "What is it?").ok
    unnamed = make(server, check_vision=False)
    error = assert_clean_error(unnamed.answer(image, "What is it?"))
    assert error == f"could not load: the server at {server.url} has no such endpoint or model (HTTP 404: Not Found)"


# ---------------------------------------------------------------------------------- faults: replies
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(200, "<html>oops</html>"), "sent a reply that is not JSON (HTTP 200, starts with '<html>oops</html>')"),
        (Reply(200, {"id": "x"}), "sent a malformed chat-completions reply (no choices)"),
        (Reply(200, {"choices": [{"index": 0}]}), "sent a malformed chat-completions reply (no message in the first choice)"),
        (Reply(200, [1, 2]), "sent a malformed chat-completions reply (a JSON list, not an object)"),
        (Reply(200, {"error": {"message": "model crashed"}}), "reported an error: model crashed"),
    ],
)
def test_malformed_replies(server: ChatServerDouble, image: Image.Image, reply: Reply, expected: str) -> None:
    backend = make(server, check_vision=False)
    assert backend.load()
    server.script = [reply]
    error = assert_clean_error(backend.answer(image, "What is it?"))
    assert error == f"the server at {server.url} {expected}"


# ------------------------------------------------------------------------------ images and text-only
def test_model_that_ignores_images_fails_the_vision_check(server: ChatServerDouble, image: Image.Image) -> None:
    server.image_tokens = 0  # what llama-cpp-python does with a text-only GGUF: no error, image dropped
    backend = make(server)
    error = assert_clean_error(backend.answer(image, "What is it?"))
    assert error.startswith("could not load: the server's model does not accept images: it ignored an image")
    assert "send_image = false" in error


def test_model_that_refuses_images_is_named_and_not_retried(server: ChatServerDouble, image: Image.Image) -> None:
    server.refuse_images = "Qwen/Qwen2-0.5B is not a multimodal model"
    backend = make(server, check_vision=False)
    error = assert_clean_error(backend.answer(image, "What is it?"))
    assert error.startswith("the server's model does not accept images (HTTP 400: Qwen/Qwen2-0.5B is not a multimodal")
    assert len(server.chat_requests) == 1
    probing = make(server)
    load_error = assert_clean_error(probing.answer(image, "What is it?"))
    assert load_error.startswith("could not load: the server's model does not accept images (HTTP 400")


def test_image_refusal_as_a_500_is_not_retried(server: ChatServerDouble, image: Image.Image) -> None:
    backend = make(server, check_vision=False)
    assert backend.load()
    message = "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"
    server.script = [Reply(500, {"error": {"code": 500, "message": message}})] * 3
    error = assert_clean_error(backend.answer(image, "What is it?"))
    assert error.startswith("the server's model does not accept images (HTTP 500: image input is not supported")
    assert len(server.chat_requests) == 1


def test_send_image_false_asks_text_only_and_says_so(server: ChatServerDouble, image: Image.Image) -> None:
    server.image_tokens = 0
    backend = make(server, send_image=False)
    answer = backend.answer(image, "What is it?")
    assert answer.ok, answer.error
    assert server.chat_requests[-1]["messages"][-1]["content"] == "What is it?\nAnswer briefly, in a few words."
    assert "text only" in backend.describe().device
    assert backend.vision == "text only (send_image = false)"


# ----------------------------------------------------------------------------------------- API keys
def test_api_key_from_env_sent_as_bearer_and_never_shown(
    server: ChatServerDouble, image: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    backend = make(server, api_key_env=KEY_ENV)
    answer = backend.answer(image, "What is it?")
    assert answer.ok, answer.error
    assert server.headers_seen and all(h.get("Authorization") == f"Bearer {SECRET}" for h in server.headers_seen)
    card = json.dumps(backend.describe().to_json())
    assert SECRET not in card and SECRET not in repr(backend) and SECRET not in json.dumps(answer.to_json())
    assert SECRET not in json.dumps(backend.stats.snapshot())
    assert all(SECRET not in str(v) for v in [*vars(backend).values(), *vars(backend.http).values()])  # not kept
    # a server that echoes the key back in an error: the message shows it scrubbed
    server.script = [Reply(401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}})]
    error = assert_clean_error(backend.answer(image, "What is it?"))
    assert SECRET not in error
    assert error == (
        f"the server at {server.url} refused the request (HTTP 401: Incorrect API key provided: ***); "
        f"check the key in the environment variable {KEY_ENV}"
    )


def test_missing_key_variable_is_named(server: ChatServerDouble, image: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    backend = make(server, api_key_env=KEY_ENV)
    error = assert_clean_error(backend.answer(image, "What is it?"))
    assert error == (
        f"could not load: the environment variable {KEY_ENV} (api_key_env) is not set; "
        "export it before starting RouteLens"
    )
    assert server.headers_seen == []  # nothing was sent


def test_key_is_not_sent_over_plain_http_to_another_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    backend = RemoteBackend("lan", base_url="http://192.0.2.1:8000/v1", api_key_env=KEY_ENV)
    error = assert_clean_error(backend.answer(Image.new("RGB", (32, 32)), "What is it?"))  # fails before any traffic
    backend.close()
    assert error.startswith("could not load: refusing to send the API key over plain http to 192.0.2.1:8000")


def test_options_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        RemoteBackend("x", base_url="http://127.0.0.1:1/v1", api_key_env=SECRET)
    with pytest.raises(ValueError, match="base_url must look like"):
        RemoteBackend("x", base_url="127.0.0.1:8000")
    with pytest.raises(ValueError, match="max_concurrency"):
        RemoteBackend("x", base_url="http://127.0.0.1:1", max_concurrency=0)
    with pytest.raises(ValueError, match="no credentials in base_url"):
        RemoteBackend("x", base_url="http://user:pw@127.0.0.1:8000/v1")
    with pytest.raises(ValueError, match="image_format"):
        RemoteBackend("x", base_url="http://127.0.0.1:8000/v1", image_format="gif")
    backend = RemoteBackend("x", base_url="http://127.0.0.1:8000/")
    assert backend.base_url == "http://127.0.0.1:8000/v1"
    assert backend.describe().device == "remote 127.0.0.1:8000"


# ------------------------------------------------------------------------------ models and concurrency
def test_model_choice_against_the_served_list(server: ChatServerDouble, image: Image.Image) -> None:
    server.models = ["llava-7b", "qwen2-vl"]
    ambiguous = make(server)
    error = assert_clean_error(ambiguous.answer(image, "What?"))
    assert error == (
        f"could not load: the server at {server.url} serves several models; set `model` to one of: llava-7b, qwen2-vl"
    )
    missing = make(server, model="gpt-4o")
    error = assert_clean_error(missing.answer(image, "What?"))
    assert error.endswith("does not serve 'gpt-4o'; it serves: llava-7b, qwen2-vl")
    chosen = make(server, model="qwen2-vl", check_vision=False)
    assert chosen.answer(image, "What?").ok
    assert server.chat_requests[-1]["model"] == "qwen2-vl"


@pytest.mark.parametrize("limit", [1, 2])
def test_max_concurrency_bounds_requests_in_flight(server: ChatServerDouble, image: Image.Image, limit: int) -> None:
    backend = make(server, check_vision=False, max_concurrency=limit)
    assert backend.load()
    server.default_delay_s = 0.2
    answers: list[Answer] = []
    threads = [threading.Thread(target=lambda: answers.append(backend.answer(image, "What?"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(answers) == 4 and all(a.ok for a in answers)
    assert server.max_in_flight == limit


# ------------------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        *[("dog", "dog"), ("Dog.", "dog"), ("  DOG!\n", "dog"), ("It is a dog.", "dog"), ("dogs", "dog")],
        *[("The answer: red car", "red car"), ("hotdog", None), ("doog", "dog"), ("a cat, not a dog", None)],
        *[("Dog. Not a cat.", "dog"), ("Is this a cat or a dog?", None), ("red car or car", "red car")],
        *[("", None), ("giraffe", None)],
    ],
)
def test_match_label(reply: str, expected: str | None) -> None:
    assert match_label(reply, ["cat", "dog", "car", "red car"]) == expected


def test_label_scores_from_logprobs_edge_cases() -> None:
    assert label_scores_from_logprobs(None, ["a", "b"]) is None
    assert label_scores_from_logprobs({"content": None}, ["a", "b"]) is None
    zebra = {"content": [{"token": "zebra", "logprob": 0.0, "top_logprobs": []}]}
    assert label_scores_from_logprobs(zebra, ["a", "b"]) is None
    # leading blank tokens are skipped; a token shared by two labels splits its mass; tie -> chosen first
    content = [
        {"token": "\n", "logprob": -0.01, "top_logprobs": []},
        {
            "token": "re",
            "logprob": -0.5,
            "top_logprobs": [{"token": "re", "logprob": -0.5}, {"token": "blue", "logprob": -2.0}],
        },
    ]
    scores = label_scores_from_logprobs({"content": content}, ["red", "rectangle", "blue"], chosen="rectangle")
    assert scores is not None
    assert [label for label, _ in scores] == ["rectangle", "red", "blue"]
    assert scores[0][1] == pytest.approx(scores[1][1])
    assert sum(s for _, s in scores) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ messages
def test_prompt_converters(image: Image.Image) -> None:
    prompt = vqa_prompt("What colour?", image, labels=["red", "blue"], system="Be brief.")
    assert prompt.has_images and prompt.images == [image]
    openai = prompt.to_openai_messages()
    assert openai[0] == {"role": "system", "content": "Be brief."}
    assert [part["type"] for part in openai[1]["content"]] == ["image_url", "text"]
    assert openai[1]["content"][0]["image_url"]["url"] == image_to_data_url(image)
    hf = prompt.to_hf_messages()
    assert hf[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert hf[1]["content"][0] == {"type": "image", "image": image}
    assert hf[1]["content"][1]["text"].startswith("What colour?\nAnswer with exactly one of these options")
    text_only = prompt.without_images()
    assert not text_only.has_images
    assert text_only.to_openai_messages()[1]["content"] == openai[1]["content"][1]["text"]
    assert repr(ImagePart(image)) == "ImagePart(64x48 RGB)"


def test_message_validation(image: Image.Image) -> None:
    with pytest.raises(ValueError, match="only user messages"):
        ChatMessage("system", (ImagePart(image),))
    with pytest.raises(ValueError, match="unknown role"):
        ChatMessage("tool", (TextPart("x"),))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ChatMessage("user", ("plain string",))  # type: ignore[arg-type]
    conversation = Prompt.of(ChatMessage.user("hi", [image, image]), ChatMessage.assistant("hello"))
    assert len(conversation.images) == 2
    assert conversation.messages[0].text == "hi"
    assert image_to_data_url(image, "jpeg").startswith("data:image/jpeg;base64,")
    with pytest.raises(ValueError, match="unknown image format"):
        image_to_data_url(image, "gif")
