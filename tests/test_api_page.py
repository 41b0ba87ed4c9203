"""Gradio's "Use via API" page (``?view=api``) and ``Client.view_api()`` list the four documented endpoints
only, each with a description, typed and described parameters, a typed result and a real example; every
other event handler of the page is hidden from them and still works for the page."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from backends.presets import parse_preset
from components import api
from components.runtime import AppConfig, Runtime
from tests.doubles import EchoBackend
from tests.live_app import CHROMIUM, CHROMIUM_ARGS, ROOT, check_screenshot

DOCUMENTED = {"/route", "/compare", "/judge", "/stats"}
PARAMETERS = {
    "/route": ["image", "question"],
    "/compare": ["image", "question", "labels"],
    "/judge": ["query_id", "verdicts", "annotator"],
    "/stats": [],
}
#: What gradio shows when a component says nothing of its own (its stock examples and descriptions).
GRADIO_DEFAULTS = {"Hello!!", "", "A local filepath or publicly available URL.", "any valid json"}
CAT = ROOT / "data" / "examples" / "chelsea.jpg"
SCREENSHOTS = ROOT / "screenshots"


@pytest.fixture()
def runtime(tmp_path):
    preset = parse_preset(
        {"name": "doubles", "backends": [{"name": "clip", "family": "open_clip"}, {"name": "llava", "family": "hf_vision"}]},
        "test",
    )
    backends = [EchoBackend("clip", kind="vlm", cost=0.1), EchoBackend("llava", kind="vlm+llm", cost=1.0)]
    rt = Runtime(AppConfig(db_path=tmp_path / "db.sqlite"), preset=preset, backends=backends)
    yield rt
    rt.close()


@pytest.fixture()
def demo(runtime):
    import app

    return app.build_app(runtime)


def test_only_the_documented_endpoints_are_public(demo) -> None:
    info = demo.get_api_info()
    assert set(info["named_endpoints"]) == DOCUMENTED
    assert info["unnamed_endpoints"] == {}
    # what the page and the client read (the config) says the same, not only the Python objects
    public = {f"/{dep['api_name']}" for dep in demo.config["dependencies"] if dep["api_visibility"] == "public"}
    assert public == DOCUMENTED
    # the others are "undocumented", not "private": still in the full listing, so still callable
    everything = demo.get_api_info(all_endpoints=True)["named_endpoints"]
    hidden = {name: ep["api_visibility"] for name, ep in everything.items() if name not in DOCUMENTED}
    assert len(hidden) >= 10, sorted(hidden)
    assert set(hidden.values()) == {"undocumented"}
    assert {"/whoami", "/idle_panels"} <= set(hidden)


def test_every_endpoint_parameter_and_result_is_described_typed_and_has_a_real_example(demo) -> None:
    endpoints = demo.get_api_info()["named_endpoints"]
    for name, endpoint in endpoints.items():
        assert len(endpoint["description"]) > 40, (name, endpoint["description"])
        parameters = endpoint["parameters"]
        assert [p["parameter_name"] for p in parameters] == PARAMETERS[name]
        for p in parameters:
            where = f"{name} {p['parameter_name']}"
            assert p["python_type"]["description"] not in GRADIO_DEFAULTS, where
            assert p["python_type"]["type"] in {"str", "filepath"}, where
            example = p["example_input"]
            assert example and (isinstance(example, dict) or example not in GRADIO_DEFAULTS), where
            assert not p["parameter_has_default"], where
        [result] = endpoint["returns"]
        assert result["python_type"]["type"].startswith("dict("), (name, result["python_type"])
        assert result["python_type"]["description"] not in GRADIO_DEFAULTS, name
        assert result["label"] != "result", name
    image = endpoints["/compare"]["parameters"][0]["example_input"]
    assert image["url"] == api.EXAMPLE_IMAGE_URL and image["url"].endswith("/chelsea.png")
    assert "choice: str" in endpoints["/route"]["returns"][0]["python_type"]["type"]
    assert "query_id: str" in endpoints["/compare"]["returns"][0]["python_type"]["type"]
    assert "saved: int" in endpoints["/judge"]["returns"][0]["python_type"]["type"]


def test_the_page_snippets_are_valid_code_naming_this_apps_backends(demo) -> None:
    from gradio_client.snippet import generate_code_snippets

    endpoint = demo.get_api_info()["named_endpoints"]["/judge"]
    snippets = generate_code_snippets("/judge", endpoint, "http://127.0.0.1:7860/")
    # Python: gradio quotes a string example without escaping it; ours must still parse and carry JSON
    call = next(node for node in ast.walk(ast.parse(snippets["python"])) if isinstance(node, ast.Call)
                and getattr(node.func, "attr", "") == "predict")
    args = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    assert json.loads(args["verdicts"]) == {"clip": "correct", "llava": "wrong"}
    assert api.parse_verdicts(args["verdicts"])["verdicts"] == {"clip": 1.0, "llava": 0.0}
    assert args["annotator"] == "alice" and args["api_name"] == "/judge"
    # curl: the body between -d '...' is JSON whose verdicts are JSON too
    body = json.loads(re.search(r"-d '(.*)'", snippets["bash"]).group(1))
    assert json.loads(body["verdicts"]) == {"clip": "correct", "llava": "wrong"}
    compare = generate_code_snippets("/compare", demo.get_api_info()["named_endpoints"]["/compare"], "http://h/")
    assert f"handle_file('{api.EXAMPLE_IMAGE_URL}')" in compare["python"]
    assert 'question="Is this a cat or a dog?"' in compare["python"]


def test_a_documented_name_taken_by_another_handler_is_refused(runtime) -> None:
    import gradio as gr

    def stats() -> str:  # an internal handler named like an endpoint, registered first
        return "x"

    with gr.Blocks() as demo:
        gr.Button("internal").click(stats, None, gr.Textbox())
        endpoints = api.build(runtime)
    with pytest.raises(RuntimeError, match="/stats was registered as /stats_1"):
        api.hide_internal_handlers(demo, endpoints)


# --- against the launched app (the session's shared offline app) ---------------------------------------------


@pytest.mark.slow
def test_client_view_api_lists_only_the_documented_endpoints_and_stats_answers(offline_app) -> None:
    import httpx
    from gradio_client import Client

    url, _ = offline_app
    client = Client(url, verbose=False)
    info = client.view_api(return_format="dict", print_info=False)
    assert set(info["named_endpoints"]) == DOCUMENTED
    assert info["unnamed_endpoints"] == {}
    for name, endpoint in info["named_endpoints"].items():
        assert [p["parameter_name"] for p in endpoint["parameters"]] == PARAMETERS[name]
        assert all(p["python_type"]["description"] not in GRADIO_DEFAULTS for p in endpoint["parameters"]), name
    stats = client.predict(api_name="/stats")
    assert stats["preset"] == "offline" and "judgments" in stats["counts"]
    # the page's own source: descriptions and snippets with this app's backends in them
    served = httpx.get(f"{url}/gradio_api/info", timeout=30).json()["named_endpoints"]
    assert set(served) == DOCUMENTED
    assert all(endpoint["description"] for endpoint in served.values())
    assert '\\"efficientnet-lite0\\": \\"correct\\"' in served["/judge"]["code_snippets"]["python"]


@pytest.mark.slow
@pytest.mark.browser
def test_browser_api_page_shows_the_four_endpoints_and_compare_still_works(offline_app) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import expect, sync_playwright

    url, _ = offline_app
    SCREENSHOTS.mkdir(exist_ok=True)
    viewport = {"width": 1400, "height": 1000}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=viewport)
        page.goto(url + "/?view=api", wait_until="domcontentloaded")
        page.wait_for_selector("#run", timeout=60_000)
        if not page.locator(".api-docs").is_visible():
            # gradio 6.31 loads its API page only from the footer button (a fresh ?view=api load shows the
            # app): the header's "Use via API" link presses it, as a person would
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#run", timeout=60_000)
            page.click("#rl-api-link")
        docs = page.locator(".api-docs")
        expect(docs).to_contain_text("API name: /stats", timeout=30_000)
        assert "view=api" in page.url
        text = docs.inner_text()
        assert re.findall(r"API name: (/\S+)", text) == ["/route", "/compare", "/judge", "/stats"]
        assert "4 API endpoints" in text
        for unnamed in ("/lambda", "/_fn", "/refresh", "/ask", "/whoami", "/idle_panels"):
            assert unnamed not in text, unnamed
        expect(docs).to_contain_text("The photo to ask about")  # a parameter's description
        expect(docs).to_contain_text("efficientnet-lite0")  # the /judge example names this app's backends
        page.screenshot(path=str(SCREENSHOTS / "api-page.png"))
        check_screenshot(SCREENSHOTS / "api-page.png", width=viewport["width"], min_height=viewport["height"])

        # the page's own handlers are "undocumented" now, and asking on Compare still works
        ask = browser.new_page(viewport=viewport)
        ask.goto(url, wait_until="domcontentloaded")
        ask.wait_for_selector("#run", timeout=60_000)
        ask.fill("#question textarea", "Is this a cat or a dog?")
        ask.set_input_files("#image input[type=file]", str(CAT))
        ask.click("#run")
        ask.wait_for_selector("#router-card .rl-route-choice", timeout=60_000)
        assert ask.locator("#router-card .rl-route-choice").inner_text().split()[0] in {
            "efficientnet-lite0", "gemma3-270m+tags"}
        # let both answers arrive, so the shared app is idle for the next test
        expect(ask.locator(".rl-panel .rl-answer")).to_have_count(2, timeout=60_000)
        assert ask.locator(".rl-panel .rl-error").count() == 0
        browser.close()
