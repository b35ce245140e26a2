"""Decode one image file (any mode, any size) into the model's input: a square uint8 RGB array.

This is the only preprocessing in the project: the decoded-image cache, evaluation,
`wbc predict` and the served model all call :func:`decode_image_array`, so their inputs match
(:func:`decode_image` is the same as a torch tensor).
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
FIELD_MAX_PIXELS = 50_000_000
"""Largest smear field accepted (a 48-megapixel phone photo, 8000 x 6000): a field is read whole, a cell image is
cut to its centre; both stay below Pillow's own decompression-bomb warning (89 megapixels)."""

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


ACCEPTED_FORMATS = "JPEG, PNG, TIFF, BMP, GIF, WebP and the other formats Pillow reads"


def _eight_bit(values: np.ndarray, label: str, *, floating: bool) -> np.ndarray:
    """Grey levels of any depth as 0-255, scaled by the range the data really occupies: integers by the smallest bit
    depth that holds their maximum (8, or 10, 12, 14, 16 bits in a 16-bit container), floats in [0, 1] by 255 and
    floats in [0, 255] as they are. Raises :class:`ImageDecodeError` for anything else (negative, not finite, over
    16 bits) rather than scoring a blank or saturated image as a cell."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageDecodeError(f"{label}: the image holds NaN or infinite values")
    low, high = float(values.min(initial=0)), float(values.max(initial=0))
    if low < 0:
        raise ImageDecodeError(f"{label}: negative grey levels (down to {low:g}): expected values from 0")
    if floating and high <= 1.0:
        return values * 255.0
    if high <= 255:
        return values
    if high > 65535:
        raise ImageDecodeError(f"{label}: grey levels up to {high:g}: expected at most 16 bits (65535)")
    bits = int(np.ceil(np.log2(high + 1)))
    return values * (255.0 / (2**bits - 1))


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    """Convert grayscale of any depth, palette, alpha and CMYK images to 8-bit RGB."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = _eight_bit(np.asarray(image), label, floating=image.mode == "F")
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), mode="L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image_array(source: ImageSource, size: int | None, *, name: str | None = None,
                       max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode ``source`` (a path or encoded bytes) to a ``(size, size, 3)`` uint8 RGB array.

    The largest centred square is cropped and resized to ``size`` (the cell is centred in
    its crop). JPEGs are decoded at a reduced scale when that is enough for ``size``.
    ``size=None`` keeps the full image, uncropped. An image of more than ``max_pixels`` is refused.
    Raises :class:`ImageDecodeError` naming the input for anything that is not a readable image.
    """
    label = _describe(source, name)
    data = _read_bytes(source, label)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"{label}: image is {width}x{height} pixels, over the {max_pixels}-pixel limit"
                )
            pages = _page_count(image)
            if pages > 1:
                raise ImageDecodeError(f"{label}: {pages} images in one file (a multi-page TIFF or an animation): "
                                       "send one image per row (wbc predict and the web page score each page)")
            if image.format == "JPEG" and size is not None:
                image.draft("RGB", (size, size))
            image.load()
            upright = ImageOps.exif_transpose(image)  # the EXIF Orientation a camera wrote, as every viewer honours it
            rgb = _to_rgb(upright, label)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{label}: not an image file (accepted: {ACCEPTED_FORMATS})") from None
    except Image.DecompressionBombError:
        raise ImageDecodeError(f"{label}: image dimensions exceed the decompression-bomb limit") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"{label}: corrupt or truncated image ({error})") from None
    if size is None:
        return np.array(rgb, dtype=np.uint8)
    square = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BILINEAR)
    return np.array(square, dtype=np.uint8)


def _page_count(image: Image.Image) -> int:
    """Images the file holds: pages of a TIFF, frames of an animation. An MPO (a camera's JPEG with its preview
    or depth image appended) is one picture: its first frame."""
    return 1 if image.format == "MPO" else getattr(image, "n_frames", 1)


def split_pages(source: ImageSource, name: str) -> list[tuple[str, ImageSource]]:
    """``[(name, source)]`` for a file of one image (or one that cannot be read: decoding it names the problem);
    for a multi-page TIFF or an animated GIF/PNG/WebP, one ``("<name>#<page>", single-page TIFF bytes)`` per page,
    pages counted from 1, each page's pixels and mode kept as stored (TIFF holds 16-bit and float pages too)."""
    try:
        with Image.open(source if not isinstance(source, bytes) else io.BytesIO(source)) as image:
            pages = _page_count(image)
            if pages <= 1:
                return [(name, source)]
            split = []
            for page in range(pages):
                image.seek(page)
                if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:
                    return [(name, source)]  # the decoder refuses it, naming the size
                buffer = io.BytesIO()
                image.copy().save(buffer, "TIFF")
                split.append((f"{name}#{page + 1}", buffer.getvalue()))
            return split
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return [(name, source)]


def decode_image(source: ImageSource, size: int, *, name: str | None = None):
    """Like :func:`decode_image_array`, as a ``(3, size, size)`` uint8 torch tensor."""
    import torch

    # numpy copies on this thread; torch's permute().contiguous() would wake its OpenMP pool, whose
    # spinning threads then slow ONNX Runtime's threads in the same process (served models).
    return torch.from_numpy(np.ascontiguousarray(decode_image_array(source, size, name=name).transpose(2, 0, 1)))
