"""One identity per photo, and the store's content-addressed image files ``<root>/ab/<key>.png``.

:func:`image_key` is the key of a photo everywhere: the store's ``images.sha256`` (and so
``queries.image_sha256``), ``image_sha256`` in the pairs the eval runner writes, and
``EvalItem.image_sha256`` of every dataset reader. It is the sha256 of the decoded pixels after the
normalisation the app applies to every input (:func:`normalise`), so it does not depend on how the
photo was encoded: a JPEG file, the PIL image the app made of it, and the PNG the store wrote of that
image all get one key, and a photo judged in the app falls on the same side of a train/held-out split
as the same photo in a benchmark. (Decoding a lossy file is deterministic for one Pillow build; a
different JPEG decoder may give other pixels and so another key.)

Nothing a user sends (a file name, a path, an id) ever becomes part of a path: :func:`path_for`
accepts only 64 hex digits. Files are written to a temporary name, fsynced, then renamed, so a crash
never leaves a half-written image under its final name.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from backends.images import MIN_SIDE, load_image
from data.atomic import write_atomic

_SHA256 = re.compile(r"[0-9a-f]{64}")

#: What :func:`image_key` and :func:`normalise` accept: what ``backends.images.load_image`` accepts.
ImageSource = Image.Image | str | Path | bytes | BinaryIO


@dataclass(frozen=True)
class EncodedImage:
    """A normalised image ready for the store: its key, its PNG bytes, and what the images table records."""

    sha256: str
    data: bytes
    width: int
    height: int
    mode: str


def check_sha256(sha256: object) -> str:
    """Return ``sha256`` lower-cased if it is 64 hex digits, else raise ValueError."""
    if not isinstance(sha256, str):
        raise ValueError(f"image sha256 must be a string of 64 hex digits, got {type(sha256).__name__}")
    value = sha256.lower()
    if not _SHA256.fullmatch(value):
        shown = sha256 if len(sha256) <= 80 else sha256[:77] + "..."
        raise ValueError(f"image sha256 must be 64 hex digits, got {shown!r}")
    return value


def normalise(source: ImageSource) -> Image.Image:
    """The image the app works on: ``backends.images.load_image`` (EXIF rotation, RGB, size limits).

    Normalising a normalised image changes nothing, so keys agree whichever step a caller starts from.
    One pass of ``load_image`` is not quite that: a very long image downscaled to ``MAX_SIDE`` can be
    left with a short side under ``MIN_SIDE``, which a second pass upscales; that second pass is done
    here. Raises ``backends.images.ImageError`` (a ValueError) for what is not a usable image.
    """
    image = load_image(source)
    if min(image.size) < MIN_SIDE:
        image = load_image(image)
    return image


def pixel_key(image: Image.Image) -> str:
    """sha256 of ``"{mode}:{width}x{height}:"`` and the raw pixel bytes of ``image`` exactly as it is."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode("ascii"))
    digest.update(image.tobytes())
    return digest.hexdigest()


def image_key(source: ImageSource) -> str:
    """The identity of a photo (64 hex digits): :func:`pixel_key` of :func:`normalise` ``(source)``.

    ``source`` is a path, the file's bytes, or a PIL image (raw or already normalised). Raises
    ``backends.images.ImageError`` (a ValueError) when it is not an image ``load_image`` accepts.
    """
    return pixel_key(normalise(source))


def encode_png(image: Image.Image) -> EncodedImage:
    """Normalise ``image`` and PNG-encode it without metadata (EXIF, text chunks, ICC); key included.

    The pixels stored are the normalised ones, so the file decodes back to the same key. Metadata is
    dropped because uploads can carry private data (EXIF GPS).
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image, got {type(image).__name__}")
    normal = normalise(image)
    clean = normal.copy()
    clean.info = {}
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=6)
    return EncodedImage(pixel_key(clean), buffer.getvalue(), clean.width, clean.height, clean.mode)


def path_for(root: Path, sha256: str) -> Path:
    """Where the image with this key lives under ``root`` (validates the key)."""
    sha = check_sha256(sha256)
    return root / sha[:2] / f"{sha}.png"


def store_png(root: Path, encoded: EncodedImage) -> Path:
    """Put ``encoded`` at its content address under ``root``; idempotent. Returns the path.

    An existing file of the right size is trusted; one of another size (a torn copy, say) is rewritten.
    """
    path = path_for(root, encoded.sha256)
    try:
        if path.stat().st_size == len(encoded.data):
            return path
    except FileNotFoundError:
        pass
    write_atomic(path, encoded.data)
    return path
