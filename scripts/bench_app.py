"""Time from `make run` to an interactive page, and to the first and all answers in the browser.

    python scripts/bench_app.py [--preset offline] [--port 7860] [--json out.json]

Starts `make run` with a fresh data folder, polls until the page serves, then drives Debian's headless
Chromium: uploads a photo, asks, and times the first filled panel and the last one. Asks twice: right
after start (models may still be loading) and once more when warm.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
FIRST_ANSWER = "() => document.querySelectorAll('.rl-panel .rl-answer, .rl-panel .rl-error').length >= 1"
ALL_DONE = "() => document.querySelectorAll('.rl-spinner').length === 0 && document.querySelectorAll('.rl-panel .rl-answer, .rl-panel .rl-error').length >= {n}"


def ask(page, image: Path, question: str, n_panels: int) -> tuple[float, float]:
    page.set_input_files("#image input[type=file]", str(image))
    page.fill("#question textarea", question)
    page.wait_for_timeout(300)
    start = time.perf_counter()
    page.click("#run")
    page.wait_for_function("() => document.querySelectorAll('.rl-spinner').length > 0", timeout=30_000)
    page.wait_for_function(FIRST_ANSWER, timeout=600_000)
    first = time.perf_counter() - start
    page.wait_for_function(ALL_DONE.replace("{n}", str(n_panels)), timeout=600_000)
    return first, time.perf_counter() - start


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="offline")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="routelens-bench-")
    env = dict(os.environ, ROUTELENS_DATA_DIR=data_dir, PRESET=args.preset, GRADIO_SERVER_PORT=str(args.port))
    url = f"http://127.0.0.1:{args.port}"
    start = time.perf_counter()
    proc = subprocess.Popen(["make", "run", f"PRESET={args.preset}", f"PORT={args.port}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        page_s = time.perf_counter() - start
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#run", timeout=60_000)
            interactive_s = time.perf_counter() - start
            n = page.locator(".rl-panel").count()
            image = ROOT / "data" / "examples" / "chelsea.jpg"
            cold = ask(page, image, "Is this a cat or a dog?", n)
            warm = ask(page, ROOT / "data" / "examples" / "coffee.jpg", "What is in the cup?", n)
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    print(f"preset {args.preset}: page served {page_s:.1f} s after `make run`, interactive (controls rendered) {interactive_s:.1f} s")
    print(f"first question right after start: first answer {cold[0]:.2f} s, all answers {cold[1]:.2f} s")
    print(f"a later question (models loaded):   first answer {warm[0]:.2f} s, all answers {warm[1]:.2f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "preset": args.preset, "panels": n, "page_served_s": page_s, "interactive_s": interactive_s,
            "first_question": {"first_answer_s": cold[0], "all_answers_s": cold[1]},
            "later_question": {"first_answer_s": warm[0], "all_answers_s": warm[1]},
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
