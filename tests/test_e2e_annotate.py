"""End to end on the real offline preset, in headless Chromium at 1440 x 1000: the Annotate tab's keys set
values directly (1-9 select a backend, c / w / s set its verdict, a marks all wrong), Enter saves "all
wrong" without an error, the item fits on one screen, a reload keeps the name and resumes the item the
annotator was on (not the one skipped), and Undo changes a saved judgment as a new row."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.live_app import CHROMIUM, CHROMIUM_ARGS, ROOT, db_rows

SCREENSHOTS = ROOT / "screenshots"
VIEWPORT = {"width": 1440, "height": 1000}
NAME_BOX = "#annotator textarea, #annotator input"

pytestmark = [pytest.mark.slow, pytest.mark.browser]




def _checked(page, group: str) -> str | None:
    """The value of the radio checked in ``group`` (an element id), or None."""
    return page.evaluate(
        "(id) => { const i = document.querySelector('#' + id + ' input[type=radio]:checked'); return i ? i.value : null; }",
        group)


def _question(page) -> str:
    return page.locator("#ann-question [data-testid=markdown]").inner_text()


def _loaded(page, previous: str | None = None) -> str:
    """Wait until an item's answers are all in (Save enabled again: saving, skipping and undoing disable it
    at once), a new item when ``previous`` is given; returns its question."""
    page.wait_for_function(
        "(q) => { const text = document.querySelector('#ann-question [data-testid=markdown]').innerText; "
        "return text.trim() && text !== q && !document.querySelector('#ann-save').disabled; }",
        arg=previous, timeout=180_000)
    return _question(page)


def _open(page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#run", timeout=60_000)


def _no_error(page) -> None:
    assert page.locator(".toast-body, [data-testid=toast-body]").count() == 0, "an error pop-up showed"
    assert page.locator("#ann-judge-status").inner_text().strip() != "Error"


def test_annotate_keys_layout_resume_and_undo(offline_app) -> None:
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    url, db_path = offline_app
    name = f"keys-{uuid.uuid4().hex[:8]}"
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            _open(page, url)
            page.fill(NAME_BOX, name)
            page.get_by_role("tab", name="Annotate").click()
            page.click("#ann-start")
            expect(page.locator("#ann-message")).to_contain_text(f"New session for {name}", timeout=60_000)
            first = _loaded(page)
            verdicts = page.locator("[id^=ann-verdict-]")
            last = f"ann-verdict-{verdicts.count() - 1}"

            # the whole item on one screen, without scrolling
            for selector in ("#ann-image", "#ann-question", "#ann-panel-0", f"#{last}", "#ann-best", "#ann-save"):
                box = page.locator(selector).bounding_box()
                assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT["height"], (selector, box)

            # keys set values directly: 2 selects backend 2 (outlined), w then c: wrong -> correct in one press
            page.keyboard.press("2")
            outline = "(s) => getComputedStyle(document.querySelector(s)).outlineStyle"
            assert page.evaluate(outline, "#ann-panel-1 .rl-panel") != "none"
            assert page.evaluate(outline, "#ann-panel-0 .rl-panel") == "none"
            page.keyboard.press("w")
            assert _checked(page, "ann-verdict-1").endswith("wrong")
            before = _checked(page, "ann-verdict-0")
            page.keyboard.press("c")
            assert _checked(page, "ann-verdict-1").endswith("correct") and _checked(page, "ann-verdict-0") == before
            page.keyboard.press("1")
            page.keyboard.press("s")
            # the key handler sets the radio and the page re-renders it: wait for the value, up to 5 s
            page.wait_for_function(
                "(id) => { const i = document.querySelector('#' + id + ' input[type=radio]:checked');"
                " return i && i.value.endsWith('skip'); }", arg="ann-verdict-0", timeout=5000)
            assert _checked(page, "ann-verdict-0").endswith("skip")
            page.wait_for_timeout(300)  # the radios' styles follow their values a frame later
            page.screenshot(path=str(SCREENSHOTS / "annotate-keys.png"))
            # ignored while typing in a text box
            page.click("#ann-reason textarea")
            page.keyboard.type("wca")
            assert _checked(page, "ann-verdict-0").endswith("skip") and _checked(page, "ann-best") is None
            page.keyboard.press("Escape")  # leaves the text box: the keys work again

            # a: every verdict wrong and best = all wrong in one press; Enter saves it, no error
            page.keyboard.press("a")
            assert [_checked(page, f"ann-verdict-{i}") for i in range(verdicts.count())] == ["✗ wrong"] * verdicts.count()
            assert _checked(page, "ann-best") == "all_wrong"
            page.keyboard.press("Enter")
            expect(page.locator("#ann-judge-status")).to_contain_text("Saved", timeout=30_000)
            _no_error(page)
            saved = db_rows(db_path, "SELECT id, best, reason FROM judgments WHERE annotator = ?", [name])
            assert [(best, reason) for _, best, reason in saved] == [("all_wrong", "wca")]
            assert db_rows(db_path, "SELECT correct FROM verdicts WHERE judgment_id = ?", [saved[0][0]]) == [(0.0,)] * verdicts.count()

            # skip the next item; a reload keeps the name and resumes the item she is on, not the skipped one
            second = _loaded(page, first)
            page.keyboard.press("n")
            third = _loaded(page, second)
            page.reload(wait_until="domcontentloaded")
            page.wait_for_selector("#run", timeout=60_000)
            expect(page.locator(NAME_BOX)).to_have_value(name, timeout=10_000)
            page.get_by_role("tab", name="Annotate").click()
            page.click("#ann-start")
            expect(page.locator("#ann-message")).to_contain_text("resuming", timeout=60_000)
            assert _loaded(page) == third != second

            # u: back to the judged item with its judgment; a contradiction is a message, not an error pop-up
            page.locator("#ann-question").click()
            page.keyboard.press("u")
            assert _loaded(page, third) == first
            expect(page.locator("#ann-reference")).to_contain_text("changing your saved judgment")
            assert _checked(page, "ann-best") == "all_wrong" and _checked(page, last) == "✗ wrong"
            page.keyboard.press("1")
            page.keyboard.press("c")
            page.keyboard.press("Enter")
            expect(page.locator("#ann-judge-status")).to_contain_text("Not saved", timeout=30_000)
            _no_error(page)
            assert _question(page) == first  # the item stays
            page.keyboard.press("t")
            page.keyboard.press("Enter")
            expect(page.locator("#ann-judge-status")).to_contain_text("replaces your earlier judgment", timeout=30_000)
            assert _loaded(page, first) == third  # back to the item she was on
        finally:
            browser.close()
    rows = db_rows(db_path, "SELECT id, best, replaced_by FROM judgments WHERE annotator = ? ORDER BY id", [name])
    assert [(best, replaced) for _, best, replaced in rows] == [("all_wrong", rows[1][0]), ("tie", None)]
