"""End to end on the real offline preset: gradio_client against a launched app, and headless Chromium."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests import live_app
from tests.live_app import CHROMIUM, CHROMIUM_ARGS, ROOT, browser_page, db_rows

CAT = ROOT / "data" / "examples" / "chelsea.jpg"
SCREENSHOTS = ROOT / "screenshots"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app_url(offline_app):
    return offline_app


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


VIEWPORT = {"width": 1400, "height": 1000}
BACKENDS = ["efficientnet-lite0", "gemma3-270m+tags"]


def check_screenshot(path: Path) -> None:
    live_app.check_screenshot(path, width=VIEWPORT["width"], min_height=VIEWPORT["height"])




def _count_judgments(db_path: Path) -> int:
    raw = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return raw.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
    finally:
        raw.close()


@pytest.mark.browser
def test_browser_ask_see_router_and_panels_then_judge(app_url) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import expect, sync_playwright

    from data.store import Store

    url, db_path = app_url
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("#run", timeout=60_000)
        # the start page: the ask button, one idle panel per backend, an empty router card
        expect(page.locator("#run")).to_be_visible()
        expect(page.locator("#run")).to_have_text("Ask every model")
        expect(page.locator("#router-card")).to_contain_text("Ask a question")
        expect(page.locator(".rl-panel")).to_have_count(2)
        assert page.locator(".rl-panel").evaluate_all("els => els.map(e => e.dataset.backend)") == BACKENDS
        # first use: the ask button is above the fold, and the empty chart draws no meaningless ticks
        box = page.locator("#run").bounding_box()
        assert box and box["y"] + box["height"] <= VIEWPORT["height"], f"'Ask every model' is below the fold: {box}"
        expect(page.locator("#rl-status")).to_contain_text("models ready")
        assert page.locator("#router-chart .xtick, #router-chart .ytick").count() == 0
        page.screenshot(path=str(SCREENSHOTS / "01-start.png"), full_page=True)
        check_screenshot(SCREENSHOTS / "01-start.png")

        page.set_input_files("#image input[type=file]", str(CAT))
        page.fill("#question textarea", "Is this a cat or a dog?")
        page.click("#run")
        page.wait_for_selector("#router-card .rl-route-choice", timeout=120_000)
        page.wait_for_function("() => document.querySelectorAll('.rl-spinner').length === 0", timeout=180_000)
        page.screenshot(path=str(SCREENSHOTS / "02-answered.png"), full_page=True)
        check_screenshot(SCREENSHOTS / "02-answered.png")
        panels = page.locator(".rl-panel")
        assert panels.count() == 2
        # the router card names one backend, and exactly that backend's panel is highlighted
        choice = page.locator("#router-card .rl-route-choice").inner_text().split()[0]
        assert choice in BACKENDS
        picked = page.locator(".rl-panel.rl-picked")
        assert picked.count() == 1 and picked.get_attribute("data-backend") == choice
        expect(picked).to_contain_text("router pick")
        expect(page.locator("#router-card")).to_contain_text("predicted task")
        # both backends answered (no error), and the vlm named the cat with its label scores
        assert page.locator(".rl-panel .rl-error").count() == 0
        expect(page.locator(".rl-panel .rl-answer")).to_have_count(2)
        vlm = page.locator(".rl-panel[data-backend='efficientnet-lite0']")
        expect(vlm.locator(".rl-answer")).to_have_text("cat")
        expect(vlm.locator(".rl-scores")).to_contain_text("dog")
        chart = page.locator("#router-chart")
        assert chart.is_visible()
        for name in BACKENDS:  # the P(correct) chart has a bar per backend
            expect(chart).to_contain_text(name)

        page.locator("#verdict-0 label", has_text="correct").click()
        page.locator("#verdict-1 label", has_text="wrong").click()
        page.locator("#best label", has_text="efficientnet-lite0").click()
        page.fill("#reason textarea", "browser test")
        page.click("#save")
        page.wait_for_selector("#judge-status :text('Saved')", timeout=30_000)
        expect(page.locator("#judge-status")).to_contain_text("Saved 2 verdict(s)")
        page.screenshot(path=str(SCREENSHOTS / "03-saved.png"), full_page=True)
        check_screenshot(SCREENSHOTS / "03-saved.png")

        judged = _count_judgments(db_path)  # this one, and the client test's when it ran first
        assert judged >= 1
        page.get_by_role("tab", name="Leaderboard & router").click()
        # the tab refreshes on select: the counts and both figures include the judgment just saved
        expect(page.locator("#lb-counts")).to_contain_text(f"{judged} judgments", timeout=30_000)
        accuracy, ratings = page.locator("#lb-accuracy"), page.locator("#lb-ratings")
        expect(accuracy).to_contain_text("Accuracy per backend", timeout=30_000)
        expect(ratings).to_contain_text("Bradley-Terry rating", timeout=30_000)
        for name in BACKENDS:
            expect(accuracy).to_contain_text(name)
            expect(ratings).to_contain_text(name)
        page.screenshot(path=str(SCREENSHOTS / "04-leaderboard.png"), full_page=True)
        check_screenshot(SCREENSHOTS / "04-leaderboard.png")
        browser.close()
    store = Store.open(db_path, read_only=True)
    try:
        judgments = list(store.judgment_rows())
    finally:
        store.close()
    # one row per judged backend, all from one judgment, with the verdicts and best answer clicked above
    saved = [row for row in judgments if row.get("reason") == "browser test"]
    assert len({row["judgment_id"] for row in saved}) == 1
    assert {row["backend"]: row["correct"] for row in saved} == {"efficientnet-lite0": 1.0, "gemma3-270m+tags": 0.0}
    assert {row["best"] for row in saved} == {"efficientnet-lite0"}


def test_browser_phone_width_does_not_scroll_sideways_and_the_api_link_is_visible(app_url) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import expect, sync_playwright

    url, _ = app_url
    SCREENSHOTS.mkdir(exist_ok=True)
    width_js = "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(url, wait_until="domcontentloaded")
        phone.wait_for_selector("#run", timeout=60_000)
        assert phone.evaluate(width_js) <= 400, "the page scrolls sideways at 390 px"
        expect(phone.locator("#run")).to_be_visible()
        phone.screenshot(path=str(SCREENSHOTS / "05-phone.png"), full_page=True)
        phone.get_by_role("tab", name="Annotate").click()
        phone.wait_for_timeout(1500)
        assert phone.evaluate(width_js) <= 400, "the Annotate tab scrolls sideways at 390 px"
        phone.screenshot(path=str(SCREENSHOTS / "06-phone-annotate.png"), full_page=True)
        desk = browser.new_page(viewport=VIEWPORT)
        desk.goto(url, wait_until="domcontentloaded")
        desk.wait_for_selector("#run", timeout=60_000)
        link = desk.locator("#rl-api-link")
        expect(link).to_be_visible()
        assert link.get_attribute("href") == "?view=api"
        link.click()  # opens Gradio's API page, which lists the documented endpoints
        expect(desk.get_by_text("/route").first).to_be_visible(timeout=60_000)
        desk.screenshot(path=str(SCREENSHOTS / "07-api-page.png"))
        browser.close()


@pytest.mark.browser
def test_browser_routed_mode_stale_input_and_a_bad_upload(app_url, tmp_path) -> None:
    """Routed mode asks only the pick and shows the saving, "Ask the others too" fills the rest; a
    changed question clears the old card, answers, Save and the labels read from the old question;
    a text file named .jpg is refused at upload, next to the image."""
    from playwright.sync_api import expect

    url, db_path = app_url
    fake = tmp_path / "notes.jpg"
    fake.write_text("a text file, not a photo")
    SCREENSHOTS.mkdir(exist_ok=True)
    with browser_page(url, VIEWPORT) as (_, page):
        page.set_input_files("#image input[type=file]", str(fake))
        expect(page.locator("#image-notice")).to_contain_text("Not an image we can use", timeout=20_000)
        page.set_input_files("#image input[type=file]", str(CAT))
        expect(page.locator("#image-notice")).to_have_text("", timeout=20_000)

        page.fill("#question textarea", "Is this a cat or a dog?")
        page.locator("#routed label").click()
        expect(page.locator("#run")).to_have_text("Ask the router's pick")
        page.click("#run")
        expect(page.locator("#routed-saving")).to_contain_text("Routed: only", timeout=120_000)
        pick = page.locator("#router-card .rl-route-choice").inner_text().split()[0]
        expect(page.locator("#routed-saving")).to_contain_text(pick)
        expect(page.locator(".rl-panel .rl-answer")).to_have_count(1)
        expect(page.locator(".rl-panel .rl-skipped")).to_have_count(1)
        labels = page.locator("#labels textarea, #labels input").first
        expect(labels).to_have_value("cat, dog")
        expect(page.locator("#labels")).to_contain_text("read from the question")
        page.screenshot(path=str(SCREENSHOTS / "05-routed.png"), full_page=True)
        check_screenshot(SCREENSHOTS / "05-routed.png")
        page.click("#ask-others")
        expect(page.locator("#routed-saving")).to_contain_text("Every backend has now answered", timeout=120_000)
        expect(page.locator(".rl-panel .rl-answer")).to_have_count(2)
        expect(page.locator("#save")).to_be_enabled()
        (latest,) = db_rows(db_path, "SELECT id FROM queries WHERE question = 'Is this a cat or a dog?' "
                                   "ORDER BY rowid DESC LIMIT 1")
        answered = db_rows(db_path, "SELECT backend FROM answers WHERE query_id = ?", latest)
        assert len(answered) == 2, "the others' answers were not stored under the routed query"
        # captions in plain words; the task category starts at the router's guess and can be corrected
        expect(page.locator(".rl-panel[data-backend='gemma3-270m+tags'] .rl-caption")).to_contain_text("4-bit")
        expect(page.locator(".rl-panel[data-backend='efficientnet-lite0'] .rl-caption")).to_contain_text("not 4-bit")
        category = page.locator("#category input")
        assert category.input_value(), "the task category is not pre-set to the router's guess"
        category.click()
        page.get_by_role("option", name="counting").click()
        page.locator("#verdict-0 label", has_text="correct").click()
        page.click("#save")
        expect(page.locator("#judge-status")).to_contain_text("Saved", timeout=30_000)
        assert db_rows(db_path, "SELECT category FROM queries WHERE id = ?", latest) == [("counting",)]

        page.fill("#question textarea", "What sound does this animal make?")
        expect(labels).to_have_value("", timeout=10_000)
        expect(page.locator("#router-card")).to_contain_text("changed")
        expect(page.locator(".rl-panel .rl-answer")).to_have_count(0)
        expect(page.locator("#save")).to_be_disabled()
        page.screenshot(path=str(SCREENSHOTS / "06-question-changed.png"), full_page=True)
