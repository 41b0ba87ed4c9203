"""Every odd image a person may upload becomes usable RGB, or a clear ImageError."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from backends.images import MAX_SIDE, MIN_SIDE, ImageError, load_image


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (40, 30), 128),
        Image.new("RGBA", (40, 30), (255, 0, 0, 0)),
        Image.new("LA", (40, 30), (10, 200)),
        Image.new("P", (40, 30), 3),
        Image.new("CMYK", (40, 30), (0, 255, 0, 0)),
        Image.new("1", (40, 30), 1),
        Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50, mode="I;16"),
        Image.new("I", (40, 30), 70000),
        Image.new("F", (40, 30), 0.5),
    ],
    ids=lambda im: im.mode,
)
def test_any_mode_becomes_rgb(image: Image.Image) -> None:
    out = load_image(image)
    assert out.mode == "RGB"
    assert min(out.size) >= MIN_SIDE


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (40, 30), (255, 0, 0, 0)),
        Image.new("P", (40, 30), 3),
        Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50, mode="I;16"),
        Image.new("RGB", (4000, 2000), (1, 2, 3)),
        Image.new("L", (5, 3), 9),
    ],
    ids=["RGBA", "P", "I;16", "large", "tiny"],
)
def test_loading_a_loaded_image_changes_nothing(image: Image.Image) -> None:
    """data.images.image_key relies on it: the app's image and the file it came from get one key."""
    once = load_image(image)
    twice = load_image(once)
    assert (twice.mode, twice.size, twice.tobytes()) == (once.mode, once.size, once.tobytes())


def test_transparent_pixels_become_white() -> None:
    out = load_image(Image.new("RGBA", (40, 40), (255, 0, 0, 0)))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_keeps_contrast() -> None:
    array = np.zeros((40, 40), dtype=np.uint16)
    array[:, 20:] = 65535
    out = load_image(Image.fromarray(array, mode="I;16"))
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((39, 0)) == (255, 255, 255)


def test_one_pixel_image_is_upscaled() -> None:
    out = load_image(_png_bytes(Image.new("RGB", (1, 1), (9, 9, 9))))
    assert out.size == (MIN_SIDE, MIN_SIDE)
    assert out.getpixel((5, 5)) == (9, 9, 9)


def test_large_image_is_downscaled_keeping_aspect() -> None:
    out = load_image(Image.new("RGB", (4000, 2000)))
    assert out.size == (MAX_SIDE, MAX_SIDE // 2)


def test_exif_rotation_is_applied() -> None:
    image = Image.new("RGB", (60, 40), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _png_bytes(image, format="JPEG", exif=exif.tobytes())
    assert load_image(data).size == (40, 60)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = load_image(buffer.getvalue())
    r, g, _ = out.getpixel((10, 10))
    assert r > 200 and g < 50


def test_text_file_is_refused_clearly() -> None:
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"hello, I am a text file named cat.png")


def test_truncated_jpeg_is_refused_clearly() -> None:
    data = _png_bytes(Image.effect_noise((200, 200), 50).convert("RGB"), format="JPEG")
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(data[: len(data) // 3])


def test_empty_input_is_refused() -> None:
    with pytest.raises(ImageError):
        load_image(b"")
    with pytest.raises(ImageError, match="add an image"):
        load_image(None)


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares width x height pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageError, match="too large"):
        load_image(_bomb_png(30000, 30000))


def test_missing_file_is_refused(tmp_path) -> None:
    with pytest.raises(ImageError, match="no such image"):
        load_image(tmp_path / "nope.png")
