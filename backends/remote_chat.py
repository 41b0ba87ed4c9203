"""The OpenAI chat-completions protocol as the remote family reads it: replies, model lists, refusals.

Pure functions over parsed JSON (no HTTP: that is :mod:`backends.remote_http`), so each shape a server
may send is testable without one. Servers differ in small ways, and these functions accept the
variants seen in practice: a reply whose content is a list of parts, a ``/models`` list under ``data``
or ``models``, and the many wordings of "this model takes no images".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from backends.base import BackendError
from backends.messages import image_to_data_url
from backends.remote_http import HTTPReply, one_line, server_reported_seconds

#: Most ``top_logprobs`` the OpenAI protocol allows.
MAX_TOP_LOGPROBS = 20

#: How vLLM, llama.cpp, OpenAI and others say that their model takes no images.
TEXT_ONLY = re.compile(
    r"not (?:a )?multi-?modal"
    r"|(?:image|vision|multi-?modal)[\w\s()'-]{0,40}(?:not supported|unsupported|not enabled|not allowed)"
    r"|(?:not|n't|cannot|can't|only) (?:support|accept|handle|process)s?[\w\s-]{0,30}(?:image|vision|multi-?modal)"
    r"|at most 0 image"
    r"|missing data required for image"
    r"|image_url is only supported"
    r"|mmproj",
    re.IGNORECASE,
)
#: An error about ``logprobs``: the server takes none, so the request is made again without.
LOGPROBS_REJECTED = re.compile(r"logprob", re.IGNORECASE)


@dataclass
class ChatResult:
    """One successful chat-completions call, with where the time went."""

    text: str
    model: str
    finish_reason: str | None
    usage: dict[str, Any]
    logprobs: Any
    #: Whole call: slot wait, every attempt and backoff (what the panel waits for, minus prompt building).
    total_s: float
    #: Round trip of the attempt that succeeded.
    http_s: float
    #: What the server reported for itself, None when it reports nothing.
    server_s: float | None
    attempts: int
    #: Building the payload (image PNG + base64) before sending.
    encode_s: float = 0.0


def parse_chat_reply(
    reply: HTTPReply, *, attempts: int, model: str, server: str, scrub: Callable[[str], str] = str
) -> ChatResult:
    """The :class:`ChatResult` in a chat-completions reply from ``server``; a one-line BackendError if none."""

    def malformed(why: str) -> BackendError:
        return BackendError(f"the server at {server} sent a malformed chat-completions reply ({why})")

    data = reply.data
    if not isinstance(data, Mapping):
        raise malformed(f"a JSON {type(data).__name__}, not an object")
    if "error" in data and "choices" not in data:
        detail = data["error"].get("message") if isinstance(data["error"], Mapping) else data["error"]
        raise BackendError(scrub(f"the server at {server} reported an error: {one_line(str(detail), 200)}"))
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise malformed("no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise malformed("no message in the first choice")
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping) and part.get("type") == "text"
        )
    elif content is not None and not isinstance(content, str):
        raise malformed(f"message content is a {type(content).__name__}")
    usage = data.get("usage") if isinstance(data.get("usage"), Mapping) else {}
    return ChatResult(
        text=(content or "").strip(),
        model=str(data.get("model") or model),
        finish_reason=choice.get("finish_reason"),
        usage=dict(usage),
        logprobs=choice.get("logprobs"),
        total_s=reply.total_s,
        http_s=reply.http_s,
        server_s=server_reported_seconds(data, reply.response.headers),
        attempts=attempts,
    )


def served_models(data: Any) -> list[str]:
    """Model names in a ``/models`` reply (OpenAI's ``data``, Ollama's ``models``, or a bare list)."""
    if isinstance(data, Mapping):
        items = data.get("data", data.get("models", []))
    else:
        items = data
    if not isinstance(items, list):
        return []
    ids: list[str] = []
    for item in items:
        if isinstance(item, Mapping):
            ident = item.get("id") or item.get("name") or item.get("model")
            if ident:
                ids.append(str(ident))
        elif isinstance(item, str):
            ids.append(item)
    return ids


def payload_has_image(payload: Mapping[str, Any]) -> bool:
    for message in payload.get("messages", []) or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list) and any(
            isinstance(part, Mapping) and part.get("type") == "image_url" for part in content
        ):
            return True
    return False


def refuses_images(detail: str, payload: Mapping[str, Any] | None) -> bool:
    """A request with an image that the server refused for want of vision: retrying cannot help."""
    return payload is not None and payload_has_image(payload) and bool(TEXT_ONLY.search(detail))


def explain_image_refusal(status: int, detail: str) -> str | None:
    """The panel message for an error that says the model takes no images, else None."""
    if not TEXT_ONLY.search(detail):
        return None
    return (
        f"the server's model does not accept images (HTTP {status}: {detail}); point this backend "
        "at a vision model, or set send_image = false to ask it without the image"
    )


def vision_probe_payload(model: str, with_image: bool, image_format: str = "png") -> dict[str, Any]:
    """A one-token question, with or without a 32x32 image; both send a list of parts, so only the image differs."""
    content: list[dict[str, Any]] = [{"type": "text", "text": "What colour is this image?"}]
    if with_image:
        url = image_to_data_url(Image.new("RGB", (32, 32), (200, 30, 30)), image_format)
        content = [{"type": "image_url", "image_url": {"url": url}}, *content]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 1, "temperature": 0.0}


def prompt_tokens(data: Any) -> int | None:
    """``usage.prompt_tokens`` of a reply, None when the server reports none."""
    usage = data.get("usage") if isinstance(data, Mapping) else None
    tokens = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
    return int(tokens) if isinstance(tokens, (int, float)) else None
