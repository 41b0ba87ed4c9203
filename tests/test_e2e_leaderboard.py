"""End to end on the real offline preset, in headless Chromium: the Leaderboard & router tab marks a rejected
retrain attempt off the line of versions, and its export downloads plain CSV files with no server path."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import uuid
from pathlib import Path

import pytest

from tests.live_app import CHROMIUM, CHROMIUM_ARGS, ROOT, check_screenshot

CAT = ROOT / "data" / "examples" / "chelsea.jpg"
SCREENSHOTS = ROOT / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}
SHA256 = re.compile(r"^[0-9a-f]{64}$")

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _judgments(db_path: Path) -> int:
    raw = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return raw.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
    finally:
        raw.close()


def _ensure_a_judgment(url: str, db_path: Path) -> None:
    """One judged question (through the API) unless another test left some: the export has rows to check."""
    if _judgments(db_path):
        return
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    result = client.predict(handle_file(str(CAT)), "Is this a cat or a dog?", "", api_name="/compare")
    verdicts = {name: 1 if (answer.get("text") or "") == "cat" else 0 for name, answer in result["answers"].items()}
    assert client.predict(result["query_id"], json.dumps(verdicts), "e2e-leaderboard", api_name="/judge")["saved"] >= 1


def _record_rejected_attempt(db_path: Path) -> str:
    """A retrain attempt that was not promoted, as the lifecycle records one: the active version's files and
    card with lower held-out accuracy and ``promotion.promoted`` false (never active, so routing is unchanged)."""
    from data.store import Store

    store = Store.open(db_path)
    try:
        active = store.active_router()
        assert active is not None, "the offline preset builds a first router at start"
        card = dict(active["card"])
        name = f"e2e-rejected-{uuid.uuid4().hex[:6]}"
        metrics = dict(card.get("metrics") or {})
        metrics["routed_accuracy"] = max(0.0, float(metrics.get("routed_accuracy") or 0.5) - 0.05)
        card.update(version=name, metrics=metrics, promotion={
            "promoted": False, "reason": "e2e: routed accuracy on the same held-out queries fell by 0.05, so it was not promoted"})
        store.record_router_version(name, active["path"], card, active=False)
    finally:
        store.close()
    return name


def _download(page, tmp_path: Path, table: str) -> tuple[str, str]:
    """Prepare ``table`` as CSV and download it by clicking the link in the download box: (file name, text)."""
    page.locator("#lb-tables label", has_text=table).click()
    page.locator("#lb-format label", has_text="csv").click()
    page.click("#lb-export")
    link = page.locator("#lb-download a[download]").first
    link.wait_for(timeout=30_000)
    page.wait_for_function(f"() => document.querySelector('#lb-export-status')?.innerText.includes('{table.split()[-1]}')",
                           timeout=30_000)
    with page.expect_download(timeout=30_000) as info:
        page.locator("#lb-download a[download]").first.click()
    download = info.value
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    return download.suggested_filename, target.read_text(encoding="utf-8")


def test_leaderboard_marks_rejected_attempts_and_exports_plain_csv(offline_app, tmp_path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import expect, sync_playwright

    url, db_path = offline_app
    _ensure_a_judgment(url, db_path)
    rejected = _record_rejected_attempt(db_path)
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("tab", name="Leaderboard & router").click()
        versions = page.locator("#lb-versions")
        # the rejected attempt is its own legend entry, not a point on the versions' line
        expect(versions).to_contain_text("rejected (not promoted)", timeout=30_000)
        expect(versions).to_contain_text("1 rejected attempt", timeout=30_000)
        expect(page.locator("#lb-learning")).to_contain_text("rejected (not promoted)")
        expect(page.locator("#lb-version")).to_be_visible()

        server_dirs = [str(db_path.parent), str(ROOT), "/tmp/"]
        for table, name in (("judgments", "routelens-judgments.csv"), ("performance pairs", "routelens-pairs.csv")):
            filename, text = _download(page, tmp_path, table)
            assert filename == name  # a CSV, named for its table, no folder in the name
            rows = list(csv.DictReader(io.StringIO(text)))
            assert rows, f"{name} has no rows"
            assert "image" not in rows[0] and all(SHA256.match(row["image_sha256"] or "") for row in rows), name
            for row in rows:
                for column, value in row.items():
                    assert not (value or "").startswith("/"), (name, column, value)
                    assert not any(folder in (value or "") for folder in server_dirs), (name, column, value)
            shown = page.locator("#lb-download").inner_text() + page.locator("#lb-export-status").inner_text()
            assert name in shown and not any(folder in shown for folder in server_dirs), shown
        assert rejected not in text  # the export is judgments and pairs, not router versions

        page.locator("#lb-versions").scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOTS / "leaderboard.png"), full_page=True)
        check_screenshot(SCREENSHOTS / "leaderboard.png", width=VIEWPORT["width"], min_height=VIEWPORT["height"])
        browser.close()
