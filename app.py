"""RouteLens: ask every vision model at once, see which one the router would pick, judge the answers.

    python app.py --preset auto|offline|cpu|gpu|FILE --db PATH --host 127.0.0.1 --port 7860 [--share] [--auth USER:PASS] [--no-bootstrap]

``build_app(runtime)`` returns the Blocks app without launching it (tests build it); nothing happens
at import time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.runtime import AppConfig, Runtime

log = logging.getLogger("routelens")

#: Biggest upload accepted by the server (images are downscaled anyway).
MAX_UPLOAD = "25mb"

INTRO = """
<div id="rl-header"><h1>🔎 RouteLens</h1><span class="tag">Which vision model should answer this question?</span><a class="rl-api-link" id="rl-api-link" href="?view=api" target="_blank" rel="noopener">Use via API ↗</a></div>

Upload an image and ask a question. **Every backend answers side by side**: CLIP-style models (**vlm**: an image
encoder that ranks labels) and LLaVA-style models (**vlm+llm**: a vision encoder feeding a language model). A small
**router** predicts, before any of them answers, which one is most likely to be right. Following
[Cooper et al. (2024)](https://arxiv.org/abs/2410.14690), plain VLMs tend to win on object and scene recognition, VLM+LLMs
on reasoning and outside knowledge. Judge the answers: every judgment is stored and retrains the router.
"""

ABOUT = """
### How it works
1. **Route** — the router embeds the question (MiniLM) and the image, predicts each backend's chance of a correct
   answer, and picks by expected utility: *P(correct) − λ × relative cost*. Confidence is that calibrated probability.
2. **Answer** — every backend answers concurrently; each panel fills as soon as its model finishes. A backend that
   fails or times out shows its error in its own panel only.
3. **Judge** — mark each answer correct or wrong and pick the best. Judgments are committed to SQLite before the page
   says *saved*; the Leaderboard tab turns them into accuracy per category, Bradley-Terry ratings and a retrained router.

### Programmatic API
`gradio_client.Client(url)` then `/route` (image, question), `/compare` (image, question, labels),
`/judge` (query_id, verdicts JSON, annotator), `/stats` (). See the "Use via API" link at the top of the page (or open `?view=api`).

### Licences
EfficientNet-Lite0 weights: Apache-2.0 · MiniLM (all-MiniLM-L6-v2): Apache-2.0 · Gemma 3 270M: Gemma Terms of Use ·
CLIP (OpenAI): MIT · LAION OpenCLIP: MIT · SigLIP: Apache-2.0 · LLaVA-1.5: Llama 2 Community License ·
Qwen2-VL: Apache-2.0 · SmolVLM: Apache-2.0 · easy-VQA: MIT.
"""



def build_app(runtime: Runtime) -> Any:
    """The whole Blocks app for one runtime; call ``launch(**components.theme.launch_kwargs())``."""
    import gradio as gr

    from components import api, status_bar
    from components.annotate_tab import AnnotateView, remember_name
    from components.compare_tab import CompareView
    from components.leaderboard_tab import LeaderboardView
    from components.study_panel import StudyPanel

    compare = CompareView(runtime)
    annotate = AnnotateView(runtime)
    leaderboard = LeaderboardView(runtime)
    study = StudyPanel(runtime)
    with gr.Blocks(title="RouteLens — route visual questions to the right model", analytics_enabled=False) as demo:
        gr.Markdown(INTRO, elem_id="rl-intro")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                status = status_bar.build(runtime)
            with gr.Column(scale=1, min_width=220):
                annotator = gr.Textbox(
                    label="Your name (stored with your judgments)", placeholder="anonymous", max_lines=1,
                    elem_id="annotator",
                )
                remember_name(annotator)  # the name comes back after a reload (outside the tabs: see its doc)
        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                compare.build(annotator)
            with gr.Tab("Annotate", id="annotate"):
                annotate.build(annotator)
            with gr.Tab("Leaderboard & router", id="leaderboard") as leaderboard_tab:
                refresh, outputs = leaderboard.build()
                study_outputs = study.build(annotator).refresh_outputs
            with gr.Tab("About", id="about"):
                gr.Markdown(ABOUT)
        leaderboard_tab.select(leaderboard.refresh, None, outputs)
        leaderboard_tab.select(study.refresh, study.inputs, study_outputs)
        refresh.click(study.refresh, study.inputs, study_outputs)
        endpoints = api.build(runtime)

        demo.load(api.whoami, None, [annotator], queue=False)
        demo.load(compare.idle_panels, None, compare.bodies, queue=False)
        status_bar.wire(demo, status, runtime)
    api.hide_internal_handlers(demo, endpoints)  # after `with`: load events attach on exit
    return demo


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    """``USER:PASS`` (several separated by commas), else ROUTELENS_AUTH from the environment."""
    value = value or os.environ.get("ROUTELENS_AUTH")
    if not value:
        return None
    pairs = []
    for entry in value.split(","):
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise SystemExit("--auth takes USER:PASS (several separated by commas)")
        pairs.append((user.strip(), password))
    return pairs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="RouteLens web app")
    parser.add_argument("--preset", default=os.environ.get("ROUTELENS_PRESET", "auto"), help="auto, offline, cpu, gpu or a preset .toml file")
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: $ROUTELENS_DATA_DIR/routelens.sqlite, else var/routelens.sqlite)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also serve through a temporary public gradio.live link")
    parser.add_argument("--auth", default=None, help="USER:PASS required to open the app (or ROUTELENS_AUTH)")
    parser.add_argument("--no-quantize", action="store_true", help="load models in full precision instead of 4-bit")
    parser.add_argument("--lambda-cost", type=float, default=0.0, help="default cost weight of the router's choice")
    parser.add_argument("--no-bootstrap", action="store_true",
                        help="on a preset's first start with no router and no shipped pairs, do not build a first router in the background")
    parser.add_argument("--api-key-env", default=None, metavar="NAME",
                        help="environment variable holding the key of /v1/chat/completions (default ROUTELENS_API_KEY)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    from backends.presets import PresetError
    from components.openai_api import ExposureError, OpenAIEndpoint, check_exposure
    from components.theme import launch_kwargs

    key_env = args.api_key_env or "ROUTELENS_API_KEY"
    api_key = os.environ.get(key_env) or None
    if args.api_key_env and not api_key:
        print(f"error: --api-key-env {key_env}: that variable is not set", file=sys.stderr)
        return 2
    try:
        check_exposure(args.host, api_key)
    except ExposureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = AppConfig(
        preset=args.preset, db_path=args.db, quantize=not args.no_quantize, default_lambda=args.lambda_cost,
        bootstrap=not args.no_bootstrap,
    )
    try:
        runtime = Runtime(config)
    except PresetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("%s", runtime.preset.reason)
    runtime.start_loading()
    demo = build_app(runtime)
    demo.queue(default_concurrency_limit=4, max_size=64)
    auth = parse_auth(args.auth)
    # The share tunnel arrives from loopback: without a key the endpoint stays closed there.
    closed = "this server is shared publicly and has no API key; set ROUTELENS_API_KEY" if args.share else None
    endpoint = OpenAIEndpoint(runtime, api_key=api_key, closed_reason=closed)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=auth,
        auth_message="RouteLens annotation: sign in with the credentials you were given." if auth else None,
        max_file_size=MAX_UPLOAD,
        allowed_paths=[],
        show_error=False,
        # FastAPI takes routes at construction: /v1 exists before Gradio's routes, and launch keeps share/auth.
        app_kwargs={"routes": endpoint.routes()},
        **launch_kwargs(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
