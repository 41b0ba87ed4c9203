"""Drive a running RouteLens page in Debian's headless Chromium and save screenshots.

    python scripts/screenshot.py --url http://127.0.0.1:7860 --out screenshots/ [--ask IMAGE QUESTION]
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    parser.add_argument("--ask", nargs=2, metavar=("IMAGE", "QUESTION"))
    parser.add_argument("--tab", default=None)
    parser.add_argument("--wait", type=float, default=30.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(args.url, wait_until="domcontentloaded")
        page.wait_for_selector("#run", timeout=30_000)
        page.screenshot(path=str(args.out / "start.png"), full_page=True)
        if args.ask:
            page.set_input_files("#image input[type=file]", args.ask[0])
            page.fill("#question textarea", args.ask[1])
            page.click("#run")
            page.wait_for_function(
                "() => document.querySelectorAll('.rl-spinner').length === 0 && document.querySelector('#router-card .rl-route-choice')",
                timeout=args.wait * 1000,
            )
            page.screenshot(path=str(args.out / "answered.png"), full_page=True)
        if args.tab:
            page.get_by_role("tab", name=args.tab).click()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out / f"tab-{args.tab.split()[0].lower()}.png"), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
