"""Launch the real app (``python app.py``) as a child process on a free loopback port, for e2e tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageStat

ROOT = Path(__file__).resolve().parent.parent

#: Debian's chromium, driven by playwright (never `playwright install`: it downloads a browser).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]

#: A preset with one light real backend, for launched-app tests that need no LLM.
VISION_ONLY_PRESET = """
name = "vision-only"
description = "EfficientNet-Lite0 only: a light real backend for launched-app tests"
[[backends]]
name = "efficientnet-lite0"
family = "offline_vision"
cost = 0.05
timeout_s = 60
"""


def check_screenshot(path: Path, *, width: int, min_height: int) -> None:
    """A real PNG of a whole page: ``width`` wide, at least ``min_height`` high, and not blank (a page of one
    colour, or a near-empty one, has few distinct colours and almost no contrast)."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width == width and image.height >= min_height, (path.name, image.size)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        contrast = ImageStat.Stat(image.convert("L")).stddev[0]
    assert colours is not None and len(colours) > 100, f"{path.name} looks blank ({len(colours or [])} colours)"
    assert contrast > 10, f"{path.name} has no contrast (grey stddev {contrast:.1f})"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def models_loaded(db_path: Path) -> bool:
    """The app launched on ``db_path`` has loaded every backend and its router (its log says so)."""
    return "router:" in (db_path.parent / "app.log").read_text().lower()


def wait_for_models(db_path: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not models_loaded(db_path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the models did not load in {timeout_s} s")
        time.sleep(1)


@contextmanager
def launched_app(db_path: Path, *, preset: str = "offline", extra: list[str] | None = None, timeout_s: float = 600,
                 wait_for_models_to_load: bool = True) -> Iterator[str]:
    """Yield the app's URL once it answers HTTP and (unless told not to) every backend has finished loading."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    log_path = db_path.parent / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--preset", preset, "--db", str(db_path), "--port", str(port), *(extra or [])],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the app exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the app did not start in {timeout_s} s:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(1)
        while wait_for_models_to_load and "router:" not in log_path.read_text().lower() and time.monotonic() < deadline:
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def db_rows(db_path: Path, sql: str, params: tuple | list = ()) -> list[tuple]:
    """Rows of one query on a (launched app's) SQLite file, on a connection of its own."""
    import sqlite3

    raw = sqlite3.connect(db_path)
    try:
        return raw.execute(sql, params).fetchall()
    finally:
        raw.close()


@contextmanager
def browser_page(url: str, viewport: dict[str, int]) -> Iterator[tuple[object, object]]:
    """(browser, page): headless Chromium on the app's start page, its form on screen. Skips the test when
    Debian's chromium is not installed."""
    import pytest

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#run", timeout=60_000)
            yield browser, page
        finally:
            browser.close()
