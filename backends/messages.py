"""One typed chat-message format with converters to each provider's payload (STYLE.md habit 6).

The UI and the router never build a provider payload. They (or a backend) build a :class:`Prompt` out of
:class:`ChatMessage` objects, whose content is a tuple of :class:`TextPart` and :class:`ImagePart`, and
a backend turns it into what its provider takes:

- :meth:`Prompt.to_openai_messages` -> the OpenAI chat-completions ``messages`` list (vLLM, TGI,
  llama.cpp's server, Ollama, hosted models): images become ``image_url`` parts holding a base64 data URL.
- :meth:`Prompt.to_hf_messages` -> the list that transformers' ``processor.apply_chat_template`` takes:
  images become ``{"type": "image", "image": <PIL.Image>}`` parts.

:func:`vqa_prompt` is the one place the visual-question instruction text lives, so every generative
family asks the same question the same way (and the router's training rows stay comparable).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")

#: Formats an image may be sent in; PNG is lossless and accepted by every OpenAI-compatible server.
IMAGE_FORMATS: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """An RGB image (already normalised by ``backends.images.load_image``)."""

    image: Image.Image = field(repr=False)

    def __repr__(self) -> str:  # never dump pixels into logs
        return f"ImagePart({self.image.width}x{self.image.height} {self.image.mode})"


Part = TextPart | ImagePart


def encode_image(image: Image.Image, fmt: str = "png", max_side: int | None = None) -> bytes:
    """Encode an image to bytes, first downscaling so its longest side is at most ``max_side``."""
    fmt = fmt.lower()
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; choose one of {', '.join(IMAGE_FORMATS)}")
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    if fmt == "png":
        # zlib level 1: about 3.5x faster than Pillow's default (6) for ~10% more bytes (1024 px photo:
        # 120 ms vs 420 ms on a 2-core CPU), the better trade for a request that is waiting
        image.save(buffer, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="WEBP", quality=90)
    return buffer.getvalue()


def image_to_data_url(image: Image.Image, fmt: str = "png", max_side: int | None = None) -> str:
    """``data:image/png;base64,...`` for an image (what OpenAI-compatible servers take in ``image_url``)."""
    data = base64.b64encode(encode_image(image, fmt, max_side)).decode("ascii")
    return f"data:{IMAGE_FORMATS[fmt.lower()]};base64,{data}"


@dataclass(frozen=True)
class ChatMessage:
    """One turn: a role and its content parts, in order."""

    role: Role
    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; choose one of {', '.join(ROLES)}")
        for part in self.parts:
            if not isinstance(part, (TextPart, ImagePart)):
                raise TypeError(f"a message part must be TextPart or ImagePart, not {type(part).__name__}")
        if self.role != "user" and any(isinstance(p, ImagePart) for p in self.parts):
            raise ValueError("only user messages may carry images")

    @classmethod
    def system(cls, text: str) -> ChatMessage:
        return cls("system", (TextPart(text),))

    @classmethod
    def assistant(cls, text: str) -> ChatMessage:
        return cls("assistant", (TextPart(text),))

    @classmethod
    def user(cls, text: str, images: Image.Image | Sequence[Image.Image] | None = None) -> ChatMessage:
        """A user turn; images come before the text (the order LLaVA-style models were trained on)."""
        if images is None:
            image_list: list[Image.Image] = []
        elif isinstance(images, Image.Image):
            image_list = [images]
        else:
            image_list = list(images)
        return cls("user", tuple(ImagePart(im) for im in image_list) + (TextPart(text),))

    @property
    def text(self) -> str:
        return "\n".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def images(self) -> list[Image.Image]:
        return [p.image for p in self.parts if isinstance(p, ImagePart)]

    def without_images(self) -> ChatMessage:
        return ChatMessage(self.role, tuple(p for p in self.parts if isinstance(p, TextPart)))


@dataclass(frozen=True)
class Prompt:
    """An ordered conversation; immutable, so one prompt can be sent to many backends at once."""

    messages: tuple[ChatMessage, ...]

    @classmethod
    def of(cls, *messages: ChatMessage) -> Prompt:
        return cls(tuple(messages))

    @property
    def images(self) -> list[Image.Image]:
        return [image for message in self.messages for image in message.images]

    @property
    def has_images(self) -> bool:
        return bool(self.images)

    def without_images(self) -> Prompt:
        return Prompt(tuple(m.without_images() for m in self.messages))

    def to_openai_messages(self, image_format: str = "png", max_image_side: int | None = None) -> list[dict[str, Any]]:
        """The OpenAI chat-completions ``messages`` list.

        A message with text only is sent as a plain string (what text-only servers and chat templates
        without multi-part support expect); a message with images as a list of parts.
        """
        out: list[dict[str, Any]] = []
        for message in self.messages:
            if not message.images:
                out.append({"role": message.role, "content": message.text})
                continue
            content: list[dict[str, Any]] = []
            for part in message.parts:
                if isinstance(part, ImagePart):
                    url = image_to_data_url(part.image, image_format, max_image_side)
                    content.append({"type": "image_url", "image_url": {"url": url}})
                else:
                    content.append({"type": "text", "text": part.text})
            out.append({"role": message.role, "content": content})
        return out

    def to_hf_messages(self) -> list[dict[str, Any]]:
        """The list transformers' ``processor.apply_chat_template`` takes (images as PIL objects)."""
        out: list[dict[str, Any]] = []
        for message in self.messages:
            content: list[dict[str, Any]] = []
            for part in message.parts:
                if isinstance(part, ImagePart):
                    content.append({"type": "image", "image": part.image})
                else:
                    content.append({"type": "text", "text": part.text})
            out.append({"role": message.role, "content": content})
        return out


def label_instruction(labels: Sequence[str]) -> str:
    """The sentence that asks a generative model to pick one of the candidate labels."""
    options = ", ".join(labels)
    return f"Answer with exactly one of these options and nothing else: {options}."


def vqa_prompt(
    question: str,
    image: Image.Image | None,
    labels: Sequence[str] | None = None,
    system: str | None = None,
) -> Prompt:
    """The prompt every generative backend sends for one visual question.

    With labels, the question is followed by :func:`label_instruction`; without, by a request for a
    short answer (VQA answers are a word or a phrase, and short replies keep latency down).
    """
    question = question.strip()
    if labels:
        text = f"{question}\n{label_instruction(labels)}"
    else:
        text = f"{question}\nAnswer briefly, in a few words."
    messages: list[ChatMessage] = []
    if system:
        messages.append(ChatMessage.system(system))
    messages.append(ChatMessage.user(text, image))
    return Prompt(tuple(messages))
