"""/v1/chat/completions and /v1/models on a really launched app (Runtime with test doubles), via openai and httpx."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from backends.presets import parse_preset
from components.openai_api import OpenAIEndpoint
from components.runtime import AppConfig, Runtime
from tests.doubles import EchoBackend, RaisingBackend
from tests.live_app import ROOT, free_port

CAT = ROOT / "data" / "examples" / "chelsea.jpg"
KEY = "test-key-123"
DATA_URL = "data:image/jpeg;base64," + base64.b64encode(CAT.read_bytes()).decode()


def chat(model: str = "routelens", question: str = "Is this a cat or a dog?", url: str = DATA_URL, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": [
        {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]}], **extra}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import app

    folder = tmp_path_factory.mktemp("openai")
    preset = parse_preset({"name": "doubles", "backends": [{"name": "clip", "family": "open_clip"}]}, "test")
    backends = [EchoBackend("clip", kind="vlm", cost=0.1), EchoBackend("llava", kind="vlm+llm", word="a circle", cost=1.0),
                RaisingBackend("broken", kind="vlm+llm")]
    runtime = Runtime(AppConfig(db_path=folder / "db.sqlite"), preset=preset, backends=backends)
    runtime.start_loading()
    assert runtime.wait_until_loaded(60)
    endpoint = OpenAIEndpoint(runtime, api_key=KEY, slot_wait_s=0.0)
    demo = app.build_app(runtime)
    demo.queue()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                auth=[("u", "p")], app_kwargs={"routes": endpoint.routes()})
    yield f"http://127.0.0.1:{port}", runtime
    demo.close()
    runtime.close()


def post(url: str, body, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + "/v1/chat/completions", content=content, headers=headers, timeout=30)


def test_models_list_with_openai_client(served) -> None:
    from openai import OpenAI

    url, _ = served
    client = OpenAI(base_url=url + "/v1", api_key=KEY)
    assert [m.id for m in client.models.list().data] == ["routelens", "clip", "llava", "broken"]
    raw = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert raw["object"] == "list" and all(m["owned_by"] == "routelens" for m in raw["data"])


def test_routed_request_records_one_answer_and_is_judgeable(served) -> None:
    from openai import OpenAI

    url, runtime = served
    client = OpenAI(base_url=url + "/v1", api_key=KEY)
    reply = client.chat.completions.create(model="routelens", messages=chat()["messages"])
    assert reply.object == "chat.completion" and reply.choices[0].message.content == "cat"
    info = reply.model_extra["routelens"]
    assert info["backend"] == "clip" and info["kind"] == "vlm" and info["category"] == "object"
    stored = runtime.store.query(info["query_id"])
    assert stored["source"] == "api" and list(stored["answers"]) == ["clip"]
    assert runtime.judge(info["query_id"], {"clip": 1.0}) == 1


def test_named_backend_and_lambda_model(served) -> None:
    url, runtime = served
    reply = post(url, chat("llava", "what shape is it?")).json()
    assert reply["routelens"]["backend"] == "llava" and reply["choices"][0]["message"]["content"] == "a circle"
    assert list(runtime.store.query(reply["routelens"]["query_id"])["answers"]) == ["llava"]
    routed = post(url, chat("routelens:lambda=0.3")).json()
    assert routed["routelens"]["lambda_cost"] == 0.3


def test_stream_sends_chunks_then_done(served) -> None:
    from openai import OpenAI

    url, _ = served
    client = OpenAI(base_url=url + "/v1", api_key=KEY)
    chunks = list(client.chat.completions.create(model="clip", messages=chat()["messages"], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "cat"
    assert chunks[-1].choices[0].finish_reason == "stop"
    raw = post(url, chat("clip", stream=True)).text
    assert raw.rstrip().endswith("data: [DONE]") and '"chat.completion.chunk"' in raw


@pytest.mark.parametrize(("body", "status", "code"), [
    (chat(url=None) | {"messages": [{"role": "user", "content": "what is it?"}]}, 400, "missing_image"),
    (chat(url="data:image/png;base64,@@not-base64@@"), 400, "invalid_image_url"),
    (chat(url=str(CAT)), 400, "invalid_image_url"),
    (chat(url="file://" + str(CAT)), 400, "invalid_image_url"),
    (chat(url="https://example.com/cat.jpg"), 400, "invalid_image_url"),
    (chat("gpt-4o"), 404, "model_not_found"),
    ("{not json", 400, "invalid_json"),
    ({"model": "routelens"}, 400, "missing_messages"),
    (chat("broken"), 502, "backend_failed"),
])
def test_errors_in_openai_shape(served, body, status, code) -> None:
    url, _ = served
    reply = post(url, body)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["code"] == code and "Traceback" not in reply.text
    if status == 502:
        assert "broken" in reply.json()["error"]["message"]


def test_missing_or_wrong_key_is_401_and_gradio_login_does_not_open_it(served) -> None:
    url, _ = served
    assert post(url, chat(), key=None).status_code == 401
    assert post(url, chat(), key="wrong").status_code == 401
    assert httpx.get(url + "/v1/models").status_code == 401


def test_full_compare_slots_give_429_with_retry_after(served) -> None:
    url, runtime = served
    slots = runtime._compare_slots
    taken = 0
    while slots.acquire(blocking=False):
        taken += 1
    try:
        reply = post(url, chat())
    finally:
        for _ in range(taken):
            slots.release()
    assert reply.status_code == 429 and reply.headers["Retry-After"]
    assert reply.json()["error"]["code"] == "over_capacity"


def test_token_bucket_gives_429_with_retry_after(served) -> None:
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    _, runtime = served
    endpoint = OpenAIEndpoint(runtime, rate_per_s=0.01, burst=1)
    with TestClient(Starlette(routes=endpoint.routes())) as client:
        first = client.post("/v1/chat/completions", json=chat("clip"))
        second = client.post("/v1/chat/completions", json=chat("clip"))
    assert first.status_code == 200
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1


def test_start_up_refused_on_public_host_without_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ROUTELENS_API_KEY"}
    proc = subprocess.run([sys.executable, str(ROOT / "app.py"), "--host", "0.0.0.0", "--db", str(tmp_path / "db.sqlite"),
                           "--preset", "offline"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no API key" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_openai_api_script_smoke(served, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_openai_api

    url, runtime = served
    out = tmp_path / "bench.json"
    assert bench_openai_api.main(["--url", url, "--api-key", KEY, "--limit", "2", "--lambdas", "0,1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["routed"]["n"] == 2 and set(report["every"]) == {"clip", "llava", "broken"}
    assert report["every"]["broken"]["errors"] == 2 and len(report["lambda_curve"]) == 2
    db = str(runtime.config.resolved_db_path)
    assert bench_openai_api.main(["--url", url, "--api-key", KEY, "--limit", "2", "--load", "--concurrency", "2",
                                  "--duration", "1", "--db", db, "--json", str(out)]) == 0
    loaded = json.loads(out.read_text())["load"]
    assert loaded["answered"] >= 1 and loaded["recorded_once_with_one_answer"] is True
