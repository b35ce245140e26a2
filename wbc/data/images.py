"""Decode one image file (any mode, any size) into the model's input: a square uint8 RGB array.

This is the only preprocessing in the project: the decoded-image cache, evaluation,
`wbc predict` and the served model all call :func:`decode_image`, so their inputs match.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wbc.errors import WBCError

MAX_IMAGE_BYTES = 16 * 1024 * 1024
"""Largest encoded image accepted (a cell crop is ~30 KB)."""
MAX_IMAGE_PIXELS = 25_000_000
"""Largest decoded image accepted (5000 x 5000); guards against decompression bombs."""

ImageSource = str | os.PathLike | bytes


class ImageDecodeError(WBCError, ValueError):
    """An input could not be read as an image; the message names the input and the reason."""


def _describe(source: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return str(source)


def _read_bytes(source: ImageSource, label: str) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as error:
            raise ImageDecodeError(f"{label}: cannot read file ({error.strerror or error})") from None
        if size > MAX_IMAGE_BYTES:
            raise ImageDecodeError(f"{label}: file is {size} bytes, over the {MAX_IMAGE_BYTES}-byte limit")
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ImageDecodeError(f"{label}: cannot read file ({error.strerror or error})") from None
    if not data:
        raise ImageDecodeError(f"{label}: empty file (0 bytes), not an image")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageDecodeError(f"{label}: image is {len(data)} bytes, over the {MAX_IMAGE_BYTES}-byte limit")
    return data


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert grayscale, 16-bit, palette, alpha and CMYK images to 8-bit RGB."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > 255:
            values = values / 257.0
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image_array(source: ImageSource, size: int | None, *, name: str | None = None) -> np.ndarray:
    """Decode ``source`` (a path or encoded bytes) to a ``(size, size, 3)`` uint8 RGB array.

    The largest centred square is cropped and resized to ``size`` (the cell is centred in
    its crop). JPEGs are decoded at a reduced scale when that is enough for ``size``.
    ``size=None`` keeps the full image, uncropped.
    Raises :class:`ImageDecodeError` naming the input for anything that is not a readable image.
    """
    label = _describe(source, name)
    data = _read_bytes(source, label)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageDecodeError(
                    f"{label}: image is {width}x{height} pixels, over the {MAX_IMAGE_PIXELS}-pixel limit"
                )
            if image.format == "JPEG" and size is not None:
                image.draft("RGB", (size, size))
            image.load()
            rgb = _to_rgb(image)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{label}: not an image file (expected JPEG or PNG)") from None
    except Image.DecompressionBombError:
        raise ImageDecodeError(f"{label}: image dimensions exceed the decompression-bomb limit") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"{label}: corrupt or truncated image ({error})") from None
    if size is None:
        return np.array(rgb, dtype=np.uint8)
    square = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BILINEAR)
    return np.array(square, dtype=np.uint8)


def decode_image(source: ImageSource, size: int, *, name: str | None = None):
    """Like :func:`decode_image_array`, as a ``(3, size, size)`` uint8 torch tensor."""
    import torch

    # numpy copies on this thread; torch's permute().contiguous() would wake its OpenMP pool, whose
    # spinning threads then slow ONNX Runtime's threads in the same process (served models).
    return torch.from_numpy(np.ascontiguousarray(decode_image_array(source, size, name=name).transpose(2, 0, 1)))
