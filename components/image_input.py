"""The image upload box: gradio's Image, with decoding failures turned into clear messages."""

from __future__ import annotations

from typing import Any

import gradio as gr


def image_error_message(exc: BaseException) -> str:
    """What Pillow raised while gradio opened an upload, as a sentence for the person."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "the image is too large to decode safely (decompression bomb); please send a smaller image"
    if isinstance(exc, UnidentifiedImageError):
        return "this file is not an image we can read (PNG, JPEG, GIF, WebP, BMP, TIFF)"
    return f"the image is damaged or truncated ({str(exc)[:200]})"


def checked_image(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` whose decoding failures reach the person as a clear ``gr.Error``.

    Gradio opens every upload with Pillow before the handler runs; a text file named .png, a
    truncated JPEG or a decompression bomb then fails inside gradio and, with ``show_error=False``,
    the person only sees "Error". Pass ``image_mode=None`` so gradio hands the file on unconverted
    and ``backends.images.load_image`` does the (pixel-capped, 16-bit-aware) conversion. (A wrapper
    on the instance, not a subclass: gradio writes a .pyi file next to any module defining one.)
    """
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def checked(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception as exc:
            raise gr.Error(image_error_message(exc)) from exc

    image.preprocess = checked  # type: ignore[method-assign]
    return image
