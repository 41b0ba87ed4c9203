"""Asked while the offline preset still loads: the card says what the question waits for.

Named to come first in file order, so it gets the shared app (``offline_app_launching``) before anything has
waited for the models; run on its own it launches the app itself, with the same effect.
"""

from __future__ import annotations

import pytest

from tests.live_app import ROOT, browser_page, models_loaded, wait_for_models

CAT = ROOT / "data" / "examples" / "chelsea.jpg"
SCREENSHOTS = ROOT / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_a_question_asked_while_the_models_load_says_what_it_waits_for(offline_app_launching) -> None:
    """From the first second, the card says the question waits for models that are still loading (and
    which), instead of the idle "Ask a question" text; the answers come once they are loaded."""
    from playwright.sync_api import expect

    url, db_path = offline_app_launching
    SCREENSHOTS.mkdir(exist_ok=True)
    with browser_page(url, VIEWPORT) as (_, page):
        page.set_input_files("#image input[type=file]", str(CAT))
        page.fill("#question textarea", "What animal is this?")
        if models_loaded(db_path):
            pytest.skip("every model had loaded before the page could ask (nothing left to wait for)")
        page.click("#run")
        expect(page.locator("#router-card")).to_contain_text("Waiting for the models to load", timeout=10_000)
        expect(page.locator("#router-card")).not_to_contain_text("Ask a question")
        page.screenshot(path=str(SCREENSHOTS / "compare-while-loading.png"))
        wait_for_models(db_path)
        expect(page.locator(".rl-panel .rl-answer")).to_have_count(2, timeout=240_000)
        expect(page.locator("#router-waiting")).to_have_count(0)
