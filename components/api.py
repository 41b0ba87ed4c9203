"""The programmatic endpoints (gradio_client): /route, /compare, /judge, /stats, returning JSON.

They call the same Runtime as the tabs. Bad input raises ``gr.Error`` with a message the client sees
(never a stack trace).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import gradio as gr

from components.image_input import checked_image
from components.runtime import InputError, Runtime

log = logging.getLogger("routelens")

MAX_VERDICTS_JSON = 20_000


#: Verdict words /judge accepts (the page's words and their plain forms), case-insensitive.
VERDICT_WORDS: dict[str, float | None] = {
    "correct": 1.0, "wrong": 0.0, "1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0, "skip": None, "": None,
}
ACCEPTED_VERDICTS = 'correct, wrong, 1, 0, true, false (or null / "skip" to leave a backend unjudged)'


def parse_verdict(value: Any, backend: str) -> float | bool | None:
    """One verdict as sent: 1/0, true/false, a number in [0, 1], or a word of :data:`VERDICT_WORDS`
    ("✓ correct" and "✗ wrong", the page's labels, too). Raises ValueError saying what is accepted."""
    if value is None or isinstance(value, (bool, int, float)):
        return value  # the store checks the range
    if isinstance(value, str):
        word = value.strip().lstrip("✓✗– ").strip().casefold()
        if word in VERDICT_WORDS:
            return VERDICT_WORDS[word]
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise ValueError(f"verdict for {backend!r} must be one of {ACCEPTED_VERDICTS}; got {shown!r}")
    raise ValueError(f"verdict for {backend!r} must be one of {ACCEPTED_VERDICTS}; got {type(value).__name__}")


def parse_verdicts(text: str | dict[str, Any]) -> dict[str, Any]:
    """``{"backend": 1|0|true|false|"correct"|"wrong"|null, ...}`` or ``{"verdicts": {...}, "best": ...,
    "true_answer": ..., "reason": ..., "client_key": ...}``; raises ValueError with a clear message."""
    if isinstance(text, dict):
        data = text
    else:
        if not text or len(text) > MAX_VERDICTS_JSON:
            raise ValueError("verdicts must be a JSON object of at most 20,000 characters")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"verdicts are not valid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise ValueError('verdicts must be a JSON object such as {"clip": "correct", "llava": "wrong"}')
    if "verdicts" in data:
        extra = {k: data.get(k) for k in ("best", "true_answer", "reason", "client_key")}
        verdicts = data["verdicts"]
    else:
        extra, verdicts = {}, data
    if not isinstance(verdicts, dict):
        raise ValueError(f"verdicts must map backend names to {ACCEPTED_VERDICTS}")
    return {"verdicts": {name: parse_verdict(value, str(name)) for name, value in verdicts.items()}, **extra}


class Api:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def route(self, image: Any, question: str) -> dict[str, Any]:
        """The router's decision for one image and question, before any backend answers."""
        try:
            picture, clean, _ = self.runtime.prepare(image, question, None)
        except InputError as exc:
            raise gr.Error(str(exc)) from exc
        return self.runtime.route(picture, clean)

    def compare(self, image: Any, question: str, labels: str) -> dict[str, Any]:
        """Route, run every backend, record: {query_id, decision, answers: {backend: answer}}."""
        try:
            return self.runtime.compare_all(image, question, labels, source="api").to_json()
        except InputError as exc:
            raise gr.Error(str(exc)) from exc

    def judge(self, query_id: str, verdicts: str, annotator: str, request: gr.Request | None = None) -> dict[str, Any]:
        """Store one judgment; {saved: n} (0 when the same client_key was stored before).

        Verdicts: 1/0, true/false or the page's words "correct"/"wrong" (null leaves a backend unjudged).

        Behind ``--auth`` the annotator is the logged-in user, whatever the caller sends."""
        user = getattr(request, "username", None) if request is not None else None
        try:
            parsed = parse_verdicts(verdicts)
            saved = self.runtime.judge(
                (query_id or "").strip(), parsed["verdicts"], best=parsed.get("best"),
                true_answer=parsed.get("true_answer"), reason=parsed.get("reason"),
                annotator=user or annotator or "api", client_key=parsed.get("client_key"),
            )
        except ValueError as exc:
            raise gr.Error(f"not saved: {exc}") from exc
        except Exception as exc:  # JudgmentNotSaved and the like
            log.error("judgment not saved: %s", exc)
            raise gr.Error(f"not saved: {exc}") from exc
        return {"saved": saved}

    def stats(self) -> dict[str, Any]:
        """Per-backend and per-category accuracy from judgments, counts and router versions."""
        return self.runtime.stats()


def build(runtime: Runtime) -> Api:
    """Hidden components wired to the named endpoints (shown under "Use via API")."""
    api = Api(runtime)
    with gr.Column(visible=False):
        image = checked_image(type="filepath", image_mode=None, label="image")
        question = gr.Textbox(label="question")
        labels = gr.Textbox(label="labels")
        query_id = gr.Textbox(label="query_id")
        verdicts = gr.Textbox(label="verdicts")
        annotator = gr.Textbox(label="annotator")
        result = gr.JSON(label="result")
        buttons = {name: gr.Button(name) for name in ("route", "compare", "judge", "stats")}
    limit = runtime.config.max_concurrent_compares
    endpoints = {
        "route": (api.route, [image, question], 4),
        "compare": (api.compare, [image, question, labels], limit),
        "judge": (api.judge, [query_id, verdicts, annotator], 8),
        "stats": (api.stats, None, 4),
    }
    for name, (fn, inputs, concurrency) in endpoints.items():
        buttons[name].click(fn, inputs, result, api_name=name, concurrency_id=name, concurrency_limit=concurrency)
    return api


def whoami(request: gr.Request) -> Any:
    """The logged-in user's name (with --auth) fills the annotator box and locks it."""
    user = getattr(request, "username", None)
    return gr.update(value=user, interactive=False) if user else gr.skip()
