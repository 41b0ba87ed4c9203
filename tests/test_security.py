"""Who gets in, and what they can reach: the launched app behind --auth (slow; two tests drive Chromium).

One app is launched for the module with two accounts. Unauthenticated requests to the page's config,
the API, uploads and files are refused; a login works and becomes the annotator name; two people using
the app at once never see each other's question, router card or answers; uploads over 25 MB are
refused; no file outside what the app itself created is served; the passwords never reach the log.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.live_app import CHROMIUM, CHROMIUM_ARGS, ROOT, VISION_ONLY_PRESET, launched_app

pytestmark = pytest.mark.slow

CAT = ROOT / "data" / "examples" / "chelsea.jpg"
ROCKET = ROOT / "data" / "examples" / "rocket.jpg"
ALICE = ("alice", "Al1ce-s3cret-pw")
BOB = ("bob", "b0b-0ther-pw!")
PASSWORDS = [ALICE[1], BOB[1]]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("secure")
    preset = folder / "vision-only.toml"
    preset.write_text(VISION_ONLY_PRESET)
    db_path = folder / "routelens.sqlite"
    auth = ",".join(f"{user}:{password}" for user, password in (ALICE, BOB))
    with launched_app(db_path, preset=str(preset), extra=["--auth", auth]) as url:
        yield url, db_path
    # after the app stopped: the whole log, start-up to shutdown, never shows a password
    log = (folder / "app.log").read_text(errors="replace")
    for password in PASSWORDS:
        assert password not in log, "a password reached the app's log"


@contextmanager
def _http(url: str, *, login: tuple[str, str] | None = None) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=url, timeout=30, follow_redirects=False) as client:
        if login is not None:
            response = client.post("/login", data={"username": login[0], "password": login[1]})
            assert response.status_code == 200, response.text
        yield client


# ------------------------------------------------------------------------------------------ who gets in
def test_unauthenticated_requests_are_refused(app) -> None:
    url, db_path = app
    with _http(url) as anonymous:
        for path in ("/config", "/gradio_api/info", "/gradio_api/file=" + str(CAT), "/gradio_api/login_check"):
            assert anonymous.get(path).status_code == 401, path
        upload = anonymous.post("/gradio_api/upload", files={"files": ("cat.jpg", CAT.read_bytes(), "image/jpeg")})
        assert upload.status_code == 401
        call = anonymous.post("/gradio_api/call/stats", json={"data": []})
        assert call.status_code == 401
        join = anonymous.post("/gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x"})
        assert join.status_code == 401
        # the login page only: no layout, no components, no text of the app. (gradio 6.31 does embed
        # the API description in it -- endpoint names and the backends' names -- see docs/robustness.md)
        page = anonymous.get("/")
        assert page.status_code == 200 and '"auth_required":true' in page.text
        config = json.loads(page.text.split("window.gradio_config = ", 1)[1].split(";</script>", 1)[0])
        assert config["components"] == [] and config["dependencies"] == []
        assert "Which vision model" not in page.text and "rl-header" not in page.text
        wrong = anonymous.post("/login", data={"username": ALICE[0], "password": "not-it"})
        assert wrong.status_code == 400
        assert anonymous.post("/login", data={"username": "mallory", "password": ALICE[1]}).status_code == 400


def test_gradio_client_needs_the_login_and_works_with_it(app) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    url, _ = app
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(url, verbose=False)
    with pytest.raises(ValueError, match="Could not login to"):  # the login answers 400, not 401
        Client(url, auth=(ALICE[0], "wrong"), verbose=False)
    stats = Client(url, auth=ALICE, verbose=False).predict(api_name="/stats")
    assert "counts" in stats


def test_the_annotator_is_the_logged_in_user_whatever_the_client_sends(app) -> None:
    from gradio_client import Client, handle_file

    url, db_path = app
    client = Client(url, auth=ALICE, verbose=False)
    result = client.predict(handle_file(str(CAT)), "Is this a cat or a dog?", "", api_name="/compare")
    payload = {"verdicts": {"efficientnet-lite0": 1}, "client_key": "security-annotator"}
    assert client.predict(result["query_id"], json.dumps(payload), "mallory", api_name="/judge") == {"saved": 1}
    raw = sqlite3.connect(db_path)
    try:
        annotator = raw.execute("SELECT annotator FROM judgments WHERE client_key = 'security-annotator'").fetchone()[0]
    finally:
        raw.close()
    assert annotator == ALICE[0]


# ------------------------------------------------------------------------------------------ uploads and files
def test_uploads_over_25_mb_are_refused(app, tmp_path) -> None:
    url, _ = app
    big = tmp_path / "big.png"
    with open(big, "wb") as handle:  # a PNG signature then 26 MB of padding: size is all that matters
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.truncate(26 * 2**20)
    with _http(url, login=ALICE) as client:
        with open(big, "rb") as handle:
            refused = client.post("/gradio_api/upload", files={"files": ("big.png", handle, "image/png")})
        assert refused.status_code == 413, refused.text
        assert "maximum allowed size" in refused.text
        accepted = client.post("/gradio_api/upload", files={"files": ("cat.jpg", CAT.read_bytes(), "image/jpeg")})
        assert accepted.status_code == 200
        uploaded = accepted.json()[0]
        # what was uploaded is served back to a logged-in user (so the refusals below are not trivial)
        assert client.get(f"/gradio_api/file={uploaded}").status_code == 200
    from gradio_client import Client, handle_file

    # gradio_client reads the limit from the app's config and refuses before sending anything
    with pytest.raises(ValueError, match="exceeds the maximum file size of 26214400 bytes"):
        Client(url, auth=ALICE, verbose=False).predict(handle_file(str(big)), "What is this?", "", api_name="/compare")


def test_only_files_the_app_created_are_served(app) -> None:
    url, db_path = app
    secret_paths = [
        "/etc/passwd",
        str(db_path),
        str(db_path.parent / "app.log"),
        str(ROOT / "app.py"),
        "app.py",
        "../../../../etc/passwd",
        "/tmp/gradio/../../etc/passwd",
        str(db_path.parent / "images"),
    ]
    from gradio_client import Client, handle_file

    Client(url, auth=ALICE, verbose=False).predict(handle_file(str(CAT)), "What is this?", "", api_name="/compare")
    images = sorted((db_path.parent / "images").rglob("*.png"))
    assert images, "the compare above stores its image"
    secret_paths.append(str(images[0]))  # a stored image: only reachable through the app's own views
    with _http(url, login=ALICE) as client:
        for path in secret_paths:
            for form in (path, urllib.parse.quote(path, safe="")):
                response = client.get(f"/gradio_api/file={form}")
                assert response.status_code in (403, 404), (path, response.status_code)
                assert "root:" not in response.text and "SQLite format" not in response.text


# ------------------------------------------------------------------------------------------ two people at once
def _login(browser, url: str, account: tuple[str, str]):
    context = browser.new_context(viewport={"width": 1300, "height": 950})
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("input[type=password]", timeout=60_000)
    page.locator("input[type=text], input:not([type])").first.fill(account[0])
    page.locator("input[type=password]").fill(account[1])
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#run", timeout=60_000)
    return context, page


@pytest.mark.browser
def test_two_people_at_once_never_see_each_others_state(app) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    url, db_path = app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            anonymous = browser.new_context().new_page()
            anonymous.goto(url, wait_until="domcontentloaded")
            anonymous.wait_for_selector("input[type=password]", timeout=60_000)
            assert anonymous.locator("#run").count() == 0

            alice_context, alice = _login(browser, url, ALICE)
            bob_context, bob = _login(browser, url, BOB)
            # the annotator box is filled from the login and locked
            alice.wait_for_function("() => document.querySelector('#annotator textarea, #annotator input').value === 'alice'")
            bob.wait_for_function("() => document.querySelector('#annotator textarea, #annotator input').value === 'bob'")
            assert alice.locator("#annotator textarea, #annotator input").first.is_disabled()

            alice.set_input_files("#image input[type=file]", str(CAT))
            alice.fill("#question textarea", "Is this a cat or a dog?")
            alice.click("#run")
            alice.wait_for_selector("#router-card .rl-route-choice", timeout=120_000)
            alice.wait_for_selector(".rl-panel .rl-answer", timeout=120_000)
            assert "cat" in alice.locator(".rl-panel .rl-answer").first.inner_text()

            # bob's page, open the whole time, shows none of it
            bob.wait_for_timeout(1000)
            assert bob.locator("#router-card .rl-route-choice").count() == 0
            assert "Ask a question" in bob.locator("#router-card").inner_text()
            assert bob.locator(".rl-panel .rl-answer").count() == 0
            assert bob.locator("#question textarea").input_value() == ""
            assert "cat" not in bob.locator(".rl-panel").first.inner_text()

            # bob asks something else; alice still sees her own answer
            bob.set_input_files("#image input[type=file]", str(ROCKET))
            bob.fill("#question textarea", "Is this a rocket or an airplane?")
            bob.click("#run")
            bob.wait_for_selector(".rl-panel .rl-answer", timeout=120_000)
            alice.wait_for_timeout(500)
            assert "cat" in alice.locator(".rl-panel .rl-answer").first.inner_text()
            assert alice.locator("#question textarea").input_value() == "Is this a cat or a dog?"

            # alice's judgment, saved from her page, is stored under her login
            alice.locator("#verdict-0 label", has_text="correct").click()
            alice.fill("#reason textarea", "two-sessions test")
            alice.click("#save")
            alice.wait_for_selector("#judge-status :text('Saved')", timeout=30_000)
            assert bob.locator("#judge-status :text('Saved')").count() == 0
            alice_context.close()
            bob_context.close()
        finally:
            browser.close()
    raw = sqlite3.connect(db_path)
    try:
        rows = raw.execute("SELECT annotator FROM judgments WHERE reason = 'two-sessions test'").fetchall()
    finally:
        raw.close()
    assert rows == [("alice",)]
