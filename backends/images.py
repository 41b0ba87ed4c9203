"""Turn whatever a person uploads into a safe RGB image every backend can take.

Handles grayscale, RGBA/LA/palette (composited on white), 16-bit, CMYK, EXIF rotation, animated
images (first frame), 1x1 images (upscaled to a minimum side) and very large images (downscaled),
and refuses decompression bombs and files that are not images with a clear :class:`ImageError`.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Longest side kept; bigger images are downscaled (models see 224-448 px anyway).
MAX_SIDE = 1536
#: Shortest side: smaller images are upscaled so every preprocessing pipeline accepts them.
MIN_SIDE = 32
#: Pixels Pillow may decode before we call it a decompression bomb (about 8k x 8k).
MAX_PIXELS = 64_000_000
#: Bytes accepted for one upload.
MAX_BYTES = 25 * 2**20


class ImageError(ValueError):
    """The input is not an image we can use; the message says why, fit to show a person."""


def _decode(source: str | Path | bytes | BinaryIO) -> Image.Image:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"no such image file: {path.name}")
        if path.stat().st_size > MAX_BYTES:
            raise ImageError(f"the image file is larger than {MAX_BYTES // 2**20} MB")
        data = path.read_bytes()
    elif isinstance(source, bytes):
        data = source
    else:
        data = source.read()
    if not data:
        raise ImageError("the image file is empty")
    if len(data) > MAX_BYTES:
        raise ImageError(f"the image file is larger than {MAX_BYTES // 2**20} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(
                    f"the image declares {image.width}x{image.height} pixels, more than we decode "
                    f"({MAX_PIXELS // 1_000_000} megapixels); please send a smaller image"
                )
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("the image is too large to decode safely (decompression bomb)") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("this file is not an image we can read (PNG, JPEG, GIF, WebP, BMP, TIFF)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"the image is damaged or truncated ({exc})") from exc
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB (alpha composited on white, 16-bit rescaled)."""
    if getattr(image, "is_animated", False):
        image.seek(0)
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
        mode = "L"
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_size(image: Image.Image) -> Image.Image:
    """Downscale very large images and upscale tiny ones, keeping the aspect ratio."""
    width, height = image.size
    longest, shortest = max(width, height), min(width, height)
    if longest > MAX_SIDE:
        scale = MAX_SIDE / longest
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
    elif shortest < MIN_SIDE:
        scale = MIN_SIDE / shortest
        new = (min(MAX_SIDE, round(width * scale)), min(MAX_SIDE, round(height * scale)))
        image = image.resize(new, Image.Resampling.NEAREST if longest < 8 else Image.Resampling.BICUBIC)
    return image


def load_image(source: str | Path | bytes | BinaryIO | Image.Image) -> Image.Image:
    """Decode (when needed), normalise and size-cap an image. Raises :class:`ImageError`."""
    if source is None:
        raise ImageError("please add an image first")
    if isinstance(source, Image.Image):
        if source.width * source.height > MAX_PIXELS:
            raise ImageError("the image is too large to process")
        image = source
    elif isinstance(source, np.ndarray):
        image = Image.fromarray(source)
    else:
        image = _decode(source)
    try:
        return fit_size(to_rgb(image))
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"the image could not be converted ({exc})") from exc
