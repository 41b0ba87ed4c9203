"""Content-addressed image files: ``<root>/ab/<sha256>.png``.

The name of a stored file is the sha256 of its PNG bytes, computed here; nothing a user sends (a file
name, a path, an id) ever becomes part of a path. :func:`path_for` accepts only 64 hex digits.
Files are written to a temporary name, fsynced, then renamed, so a crash never leaves a half-written
image under its final name.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from data.atomic import write_atomic

_SHA256 = re.compile(r"[0-9a-f]{64}")

#: Modes PNG stores as they are; anything else is converted first.
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}


@dataclass(frozen=True)
class EncodedImage:
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


def encode_png(image: Image.Image) -> EncodedImage:
    """PNG-encode ``image`` deterministically, without its metadata (EXIF, text chunks, ICC).

    Metadata is dropped because uploads can carry private data (EXIF GPS) and because it would
    give identical pixels different hashes. Transparency of palette images is kept.
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image, got {type(image).__name__}")
    if image.mode not in _PNG_MODES:
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    clean = image.copy()
    transparency = image.info.get("transparency")
    clean.info = {} if transparency is None else {"transparency": transparency}
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=6)
    data = buffer.getvalue()
    return EncodedImage(hashlib.sha256(data).hexdigest(), data, clean.width, clean.height, clean.mode)


def path_for(root: Path, sha256: str) -> Path:
    """Where the image with this hash lives under ``root`` (validates the hash)."""
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
