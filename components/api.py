"""The programmatic endpoints (gradio_client): /route, /compare, /judge, /stats, returning JSON.

They call the same Runtime as the tabs. Bad input raises ``gr.Error`` with a message the client sees
(never a stack trace). "Use via API" (``?view=api``) and ``Client.view_api()`` list these four only:
:func:`hide_internal_handlers` turns every other event handler of the page "undocumented", and each
endpoint's parameters and result carry a description, a type and a real example (:data:`PARAMETERS`,
:data:`RESULTS`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import gradio as gr

from backends.base import MAX_QUESTION_CHARS
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
        #: api_name -> id of the event handler :func:`build` registered for it (``demo.fns`` key).
        self.fn_ids: dict[str, int] = {}

    def route(self, image: Any, question: str) -> dict[str, Any]:
        """The router's decision for one image and question, before any backend answers: the backend it
        picks, its calibrated chance of being right, every backend's P(correct) and the task category.
        Nothing is recorded."""
        try:
            picture, clean, _ = self.runtime.prepare(image, question, None)
        except InputError as exc:
            raise gr.Error(str(exc)) from exc
        return self.runtime.route(picture, clean)

    def compare(self, image: Any, question: str, labels: str) -> dict[str, Any]:
        """Route, then ask every backend and record the query: {query_id, decision, answers: {backend:
        answer}, labels, notices}. Pass the query_id to /judge. A backend that fails has its error in its
        own answer; the call still succeeds."""
        try:
            return self.runtime.compare_all(image, question, labels, source="api").to_json()
        except InputError as exc:
            raise gr.Error(str(exc)) from exc

    def judge(self, query_id: str, verdicts: str, annotator: str, request: gr.Request | None = None) -> dict[str, Any]:
        """Store one judgment of a /compare query's answers: {saved: n}, the number of verdicts committed
        (0 when the same client_key was stored before). Verdicts are 1/0, true/false or the page's words
        "correct"/"wrong" (null leaves a backend unjudged). Behind --auth the annotator is the logged-in
        user, whatever the caller sends."""
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
        """Accuracy per backend and per task category from the stored judgments, row counts, "best answer"
        votes, the active router and every router version. Takes no input."""
        return self.runtime.stats()


# --- what "Use via API" shows: a description and a real example per parameter, a typed result -------------

#: scikit-image's photo of Chelsea the cat (``data/examples/chelsea.jpg`` is the same photo), public, so the
#: page's snippets run as they are.
EXAMPLE_IMAGE_URL = "https://raw.githubusercontent.com/scikit-image/scikit-image/main/skimage/data/chelsea.png"

#: What a /compare call returns as query_id looks like this (32 hex digits).
EXAMPLE_QUERY_ID = "0f6c1a2e9b8d4c7fa3e5b1d2c4f6a8e0"


def _text_example(value: str) -> str:
    """``value`` as gradio's snippets need it: they put a string example between double quotes without
    escaping it, so a JSON example must carry its own escapes (``{\\"a\\": 1}``) to come out as valid
    Python, JavaScript and curl JSON."""
    return json.dumps(value)[1:-1]


def verdicts_example(backends: list[str]) -> str:
    """A /judge verdicts example naming this app's backends: the first "correct", the others "wrong"."""
    names = backends or ["clip", "llava"]
    return json.dumps({name: "correct" if i == 0 else "wrong" for i, name in enumerate(names[:3])})


#: parameter -> (description shown under it on the API page, example used in the page's snippets).
#: ``verdicts``' example names the running app's backends (see :func:`build`).
PARAMETERS: dict[str, tuple[str, Any]] = {
    "image": (
        "The photo to ask about: a local path or a public URL, sent with handle_file(). PNG, JPEG, GIF, WebP,"
        " BMP or TIFF; it is downscaled before the models see it.",
        {"path": EXAMPLE_IMAGE_URL, "url": EXAMPLE_IMAGE_URL, "orig_name": "chelsea.png",
         "meta": {"_type": "gradio.FileData"}},
    ),
    "question": (
        f"The question about the photo (at most {MAX_QUESTION_CHARS:,} characters are used). Options it lists,"
        ' as in "Is this a cat or a dog?", become the candidate labels when labels is empty.',
        "Is this a cat or a dog?",
    ),
    "labels": (
        "Candidate answers separated by commas, which the vlm backends rank; empty: taken from the question.",
        "cat, dog, rocket, coffee",
    ),
    "query_id": ("The query_id a /compare call returned.", EXAMPLE_QUERY_ID),
    "verdicts": (
        'A JSON object mapping backends to verdicts: "correct"/"wrong", 1/0 or true/false (null or "skip"'
        ' leaves a backend unjudged); or {"verdicts": {...}, "best": backend | "tie" | "all_wrong",'
        ' "true_answer": ..., "reason": ..., "client_key": ...}, where a repeated client_key is stored once.',
        '{"clip": "correct", "llava": "wrong"}',
    ),
    "annotator": ("Who judged, stored with the judgment (ignored behind --auth: the logged-in user is).", "alice"),
}

_STR, _NUM, _INT = {"type": "string"}, {"type": "number"}, {"type": "integer"}


def _maybe(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _per(schema: dict[str, Any]) -> dict[str, Any]:
    """An object keyed by name (backend, category) with ``schema`` values."""
    return {"type": "object", "additionalProperties": schema}


def _fields(description: str, **fields: tuple[dict[str, Any], str]) -> dict[str, Any]:
    return {
        "type": "object", "description": description,
        "properties": {name: {**schema, "description": text} for name, (schema, text) in fields.items()},
    }


_DECISION = _fields(
    "the router's decision",
    choice=(_STR, "backend picked"),
    confidence=(_maybe(_NUM), "its calibrated P(correct); null under the bare category rule"),
    probabilities=(_maybe(_per(_NUM)), "P(correct) per backend"),
    utilities=(_maybe(_per(_NUM)), "P(correct) - lambda x relative cost, per backend"),
    category=(_maybe(_STR), "predicted task category"),
    version=(_STR, "router version that decided"),
    router_kind=(_STR, "kind of router"),
    lambda_cost=(_NUM, "cost weight used"),
    latency_ms=(_NUM, "time the decision took"),
    fallback=(_maybe(_STR), "why another rule decided, if one did"),
    note=(_maybe(_STR), "how the scores were reached, if notable"),
)
_ANSWER = _fields(
    "one backend's answer",
    text=(_STR, "the answer"),
    label_scores=(_maybe({"type": "array", "items": {"type": "array", "items": {"anyOf": [_STR, _NUM]}}}),
                  "[label, score] pairs, best first"),
    latency_s=(_NUM, "seconds it took"),
    error=(_maybe(_STR), "why it failed; null when it answered"),
)
_ACCURACY = _fields("accuracy", n=(_INT, "judged answers"), correct=(_NUM, "correct ones"),
                    accuracy=(_NUM, "correct / n"))

#: api_name -> (label of its result on the API page, JSON schema of the result).
RESULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "route": ("decision: the router's pick before any backend answers", _DECISION),
    "compare": ("comparison: the recorded query, the decision and every backend's answer", _fields(
        "the recorded comparison",
        query_id=(_STR, "pass it to /judge"),
        decision=(_DECISION, "the router's decision"),
        answers=(_per(_ANSWER), "backend -> its answer"),
        labels=({"type": "array", "items": _STR}, "candidate labels used"),
        notices=({"type": "array", "items": _STR}, "what was changed in the input, if anything"),
    )),
    "judge": ("saved: how many verdicts were committed", _fields(
        "the stored judgment", saved=(_INT, "verdicts committed (0: this client_key was stored before)"),
    )),
    "stats": ("stats: accuracy from judgments, counts and router versions", _fields(
        "accuracy and counts",
        preset=(_STR, "the app's preset"),
        router=(_per({}), "the active router (kind, version, notice)"),
        source=(_STR, "which pairs were counted"),
        counts=(_per(_INT), "rows per table"),
        backends=(_per(_ACCURACY), "accuracy per backend (and best-answer votes)"),
        categories=(_per(_per(_ACCURACY)), "category -> backend -> accuracy"),
        best_other=(_per(_INT), "judgments whose best was tie / all_wrong"),
        router_versions=({"type": "array", "items": _per({})}, "every trained router version"),
    )),
}


def describe(component: Any, *, description: str | None = None, example: Any = None,
             schema: dict[str, Any] | None = None) -> Any:
    """Give ``component`` the words, example and type "Use via API" shows for it.

    Gradio builds the page from each component's ``api_info()`` (an input's ``additional_description`` is
    the text under that parameter; a result's ``properties`` and their descriptions make its type) and
    ``example_payload()`` (the value in the page's snippets). Wrapped on the instance, as
    :func:`components.image_input.checked_image` does, so the component stays a plain gradio one."""
    base_info = component.api_info
    if schema is not None:
        component.api_info = lambda: schema  # type: ignore[method-assign]
    elif description is not None:
        component.api_info = lambda: {**base_info(), "additional_description": description}  # type: ignore[method-assign]
    if example is not None:
        component.example_payload = lambda: example  # type: ignore[method-assign]
    return component


def build(runtime: Runtime) -> Api:
    """Hidden components wired to the named endpoints (shown under "Use via API")."""
    api = Api(runtime)
    examples = {**{name: example for name, (_, example) in PARAMETERS.items()},
                "verdicts": verdicts_example([b.name for b in runtime.backends])}

    def param(component: Any, name: str) -> Any:
        example = examples[name]
        return describe(component, description=PARAMETERS[name][0],
                        example=_text_example(example) if isinstance(example, str) else example)

    with gr.Column(visible=False):
        image = param(checked_image(type="filepath", image_mode=None, label="image"), "image")
        question = param(gr.Textbox(label="question"), "question")
        labels = param(gr.Textbox(label="labels"), "labels")
        query_id = param(gr.Textbox(label="query_id"), "query_id")
        verdicts = param(gr.Textbox(label="verdicts"), "verdicts")
        annotator = param(gr.Textbox(label="annotator"), "annotator")
        results = {
            name: describe(gr.JSON(label=label), schema=schema)
            for name, (label, schema) in RESULTS.items()
        }
        buttons = {name: gr.Button(name) for name in RESULTS}
    limit = runtime.config.max_concurrent_compares
    endpoints = {
        "route": (api.route, [image, question], 4),
        "compare": (api.compare, [image, question, labels], limit),
        "judge": (api.judge, [query_id, verdicts, annotator], 8),
        "stats": (api.stats, None, 4),
    }
    for name, (fn, inputs, concurrency) in endpoints.items():
        dependency = buttons[name].click(
            fn, inputs, results[name], api_name=name, concurrency_id=name, concurrency_limit=concurrency,
        )
        api.fn_ids[name] = dependency["id"]
    return api


def hide_internal_handlers(demo: gr.Blocks, api: Api) -> list[str]:
    """Leave only the endpoints :func:`build` registered on "Use via API" and ``Client.view_api()``.

    Gradio 6 names every event handler after its function and makes it "public", so the page listed
    dozens of internal handlers (``/lambda``, ``/refresh_3``, ...). Call once, after the whole UI is built
    (``app.build_app``): every other public handler becomes "undocumented" — off the API page, off
    ``view_api()`` and off the recorded run history, but still callable, so the page's own events keep
    working. ("private" would also drop them from ``/info?all_endpoints=true`` and make gradio_client
    refuse them; the page does not need that, and gr.load would lose them.)

    Returns the api_names it hid. Raises RuntimeError when another handler took a documented name first
    (gradio then renamed ours ``/stats_1``): the API would silently move."""
    for name, fn_id in api.fn_ids.items():
        taken = demo.fns[fn_id].api_name
        if taken != name:
            raise RuntimeError(f"/{name} was registered as /{taken}: another event handler took the name first")
    documented = set(api.fn_ids.values())
    hidden = []
    for fn_id, fn in demo.fns.items():
        if fn_id not in documented and fn.api_visibility == "public":
            fn.api_visibility = "undocumented"
            hidden.append(str(fn.api_name))
    demo.config = demo.get_config_file()  # what the page and the client read was computed at the end of `with`
    return hidden


def whoami(request: gr.Request) -> Any:
    """The logged-in user's name (with --auth) fills the annotator box and locks it."""
    user = getattr(request, "username", None)
    return gr.update(value=user, interactive=False) if user else gr.skip()
