"""End to end on the real offline preset: gradio_client against a launched app, and headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.live_app import ROOT, launched_app, CHROMIUM, CHROMIUM_ARGS

CAT = ROOT / "data" / "examples" / "chelsea.jpg"
SCREENSHOTS = ROOT / "screenshots"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("live")
    with launched_app(folder / "routelens.sqlite") as url:
        yield url, folder / "routelens.sqlite"


def test_client_compare_judge_stats(app_url) -> None:
    from gradio_client import Client, handle_file

    url, _ = app_url
    client = Client(url, verbose=False)
    decision = client.predict(handle_file(str(CAT)), "What animal is this?", api_name="/route")
    assert set(decision) >= {"choice", "confidence", "probabilities", "category", "version"}
    result = client.predict(handle_file(str(CAT)), "Is this a cat or a dog?", "", api_name="/compare")
    assert result["labels"] == ["cat", "dog"]
    answers = result["answers"]
    assert set(answers) == {"efficientnet-lite0", "gemma3-270m+tags"}
    assert all(a["error"] is None for a in answers.values()), answers
    assert answers["efficientnet-lite0"]["text"] == "cat"
    verdicts = {name: 1 if a["text"] == "cat" else 0 for name, a in answers.items()}
    saved = client.predict(result["query_id"], json.dumps(verdicts), "e2e", api_name="/judge")
    assert saved == {"saved": 2}
    stats = client.predict(api_name="/stats")
    assert stats["counts"]["judgments"] >= 1
    assert stats["backends"]["efficientnet-lite0"]["n"] >= 1


@pytest.mark.browser
def test_browser_ask_see_router_and_panels_then_judge(app_url) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    from data.store import Store

    url, db_path = app_url
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("#run", timeout=60_000)
        page.screenshot(path=str(SCREENSHOTS / "01-start.png"), full_page=True)
        page.set_input_files("#image input[type=file]", str(CAT))
        page.fill("#question textarea", "Is this a cat or a dog?")
        page.click("#run")
        page.wait_for_selector("#router-card .rl-route-choice", timeout=120_000)
        page.wait_for_function("() => document.querySelectorAll('.rl-spinner').length === 0", timeout=180_000)
        page.screenshot(path=str(SCREENSHOTS / "02-answered.png"), full_page=True)
        panels = page.locator(".rl-panel")
        assert panels.count() == 2
        assert page.locator(".rl-panel.rl-picked").count() == 1
        assert page.locator("#router-chart").is_visible()
        page.locator("#verdict-0 label", has_text="correct").click()
        page.locator("#verdict-1 label", has_text="wrong").click()
        page.locator("#best label", has_text="efficientnet-lite0").click()
        page.fill("#reason textarea", "browser test")
        page.click("#save")
        page.wait_for_selector("#judge-status :text('Saved')", timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "03-saved.png"), full_page=True)
        page.get_by_role("tab", name="Leaderboard & router").click()
        page.wait_for_timeout(2500)
        page.screenshot(path=str(SCREENSHOTS / "04-leaderboard.png"), full_page=True)
        browser.close()
    store = Store.open(db_path, read_only=True)
    try:
        reasons = [row.get("reason") for row in store.judgment_rows()]
    finally:
        store.close()
    assert "browser test" in reasons
