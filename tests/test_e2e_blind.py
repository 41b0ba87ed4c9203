"""End to end on the real offline preset, in headless Chromium: a blind judgment on Compare (names hidden
before saving, shown after), and a 3-annotator Annotate session judged by two people in two browser contexts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.live_app import CHROMIUM, CHROMIUM_ARGS, ROOT, db_rows

CAT = ROOT / "data" / "examples" / "chelsea.jpg"
SCREENSHOTS = ROOT / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}
BACKENDS = ["efficientnet-lite0", "gemma3-270m+tags"]

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def app_url(offline_app):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    return offline_app




def test_blind_compare_hides_the_names_until_the_judgment_is_saved(app_url) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, db_path = app_url
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("#run", timeout=60_000)
        page.fill("#annotator textarea, #annotator input", "blind-e2e")
        page.locator("#blind input[type=checkbox]").check()
        page.set_input_files("#image input[type=file]", str(CAT))
        page.fill("#question textarea", "Is this a cat or a dog?")
        page.click("#run")
        # blind: every answer appears at once, when the last one is in
        page.wait_for_function("() => document.querySelectorAll('.rl-panel .rl-answer').length === 2", timeout=240_000)
        panels = page.locator(".rl-panel")
        assert sorted(panels.evaluate_all("els => els.map(e => e.dataset.backend)")) == ["Model A", "Model B"]
        shown = " ".join([panels.nth(0).inner_text(), panels.nth(1).inner_text(), page.locator("#best").inner_text(),
                          page.locator("#router-card").inner_text()])
        for name in BACKENDS + ["efficientnet", "gemma", "vlm+llm", "router pick"]:
            assert name not in shown.lower(), name
        assert page.locator(".rl-panel.rl-picked").count() == 0
        expect(page.locator("#router-card")).to_contain_text("shown after you save")
        expect(page.locator("#best")).to_contain_text("Model A")
        page.screenshot(path=str(SCREENSHOTS / "05-blind-before-save.png"), full_page=True)

        page.locator("#verdict-0 label", has_text="correct").click()
        page.locator("#verdict-1 label", has_text="wrong").click()
        page.fill("#reason textarea", "blind browser test")
        page.click("#save")
        expect(page.locator("#judge-status")).to_contain_text("Revealed", timeout=30_000)
        status = page.locator("#judge-status").inner_text()
        assert "Saved 2 verdict(s)" in status and all(name in status for name in BACKENDS)
        revealed = " ".join(panels.nth(i).inner_text() for i in range(2))
        assert all(name in revealed for name in BACKENDS)
        assert sorted(panels.evaluate_all("els => els.map(e => e.dataset.backend)")) == sorted(BACKENDS)
        expect(page.locator(".rl-panel.rl-picked")).to_have_count(1)
        expect(page.locator(".rl-panel.rl-picked")).to_contain_text("router pick")
        expect(page.locator("#router-card")).to_contain_text("Router pick")
        expect(page.locator("#best")).to_contain_text("Model A · ")
        page.screenshot(path=str(SCREENSHOTS / "06-blind-after-save.png"), full_page=True)
        browser.close()
    assert db_rows(db_path, "SELECT blind FROM judgments WHERE reason = 'blind browser test'") == [(1,)]


def _open_annotate(browser, url: str, name: str):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#run", timeout=60_000)
    page.fill("#annotator textarea, #annotator input", name)
    page.get_by_role("tab", name="Annotate").click()
    page.wait_for_selector("#ann-start", state="visible", timeout=30_000)
    return context, page


def _answered(page) -> None:
    page.wait_for_function(
        "() => document.querySelectorAll('#annotate-root .rl-panel .rl-answer').length === 2", timeout=300_000)


def test_a_three_annotator_session_judged_in_two_browser_contexts(app_url) -> None:
    from playwright.sync_api import expect, sync_playwright

    from data.agreement import report
    from data.store import Store

    url, db_path = app_url
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ana_context, ana = _open_annotate(browser, url, "ana")
            ana.get_by_text("New session settings").click()
            ana.locator("#ann-k input").click()
            ana.get_by_role("option", name="3", exact=True).click()
            assert ana.locator("#ann-blind input[type=checkbox]").is_checked()  # blind by default for sessions
            ana.fill("#ann-guidelines-text textarea", "Judge the **main** object only.")
            ana.click("#ann-start")
            expect(ana.locator("#ann-message")).to_contain_text("Each item goes to 3 annotators", timeout=60_000)
            _answered(ana)
            expect(ana.locator("#ann-guidelines")).to_be_visible()
            ana.get_by_text("Guidelines (this session's, version 1)").click()
            expect(ana.locator("#ann-guidelines-body")).to_contain_text("main object only")
            assert not any(name in ana.locator("#annotate-root .rl-panel").first.inner_text() for name in BACKENDS)
            question = ana.locator("#ann-question").inner_text()

            ben_context, ben = _open_annotate(browser, url, "ben")
            ben.locator("#ann-session input").click()
            ben.locator("li[data-testid=dropdown-option]", has_text="Join ana's session").click()
            ben.click("#ann-start")
            expect(ben.locator("#ann-message")).to_contain_text("Joined ana's session", timeout=60_000)
            _answered(ben)
            assert ben.locator("#ann-question").inner_text() == question  # the same item
            ben.screenshot(path=str(SCREENSHOTS / "07-session-second-annotator.png"), full_page=True)

            for page in (ana, ben):  # the verdicts are pre-filled from the reference answer: save them
                page.click("#ann-save")
                expect(page.locator("#ann-judge-status")).to_contain_text("Saved (blind)", timeout=30_000)
                expect(page.locator("#ann-judge-status")).to_contain_text("Revealed")
            expect(ben.locator("#ann-progress-text")).to_contain_text("you: 1 judged", timeout=30_000)
            expect(ben.locator("#ann-progress-text")).to_contain_text("0 / 10 items complete, each by 3 annotators")
            expect(ben.locator("#ann-progress-text")).to_contain_text("2 / 30 judgments")
            ana_context.close()
            ben_context.close()
        finally:
            browser.close()
    # the database is shared with the other page tests: only ana's and ben's judgments are this test's
    rows = db_rows(db_path, "SELECT j.annotator, j.query_id, j.blind, j.guidelines_id, s.k FROM judgments j "
                          "JOIN sessions s ON s.id = j.session_id WHERE j.annotator IN ('ana', 'ben') ORDER BY j.id")
    assert [(r[0], r[2], r[4]) for r in rows] == [("ana", 1, 3), ("ben", 1, 3)]
    assert rows[0][1] == rows[1][1] and rows[0][3] == rows[1][3] is not None  # one query, one guidelines version
    with Store.open(db_path, read_only=True) as store:
        result = report(store)
    assert result["items"] >= 1 and set(result["annotators"]) >= {"ana", "ben"}
