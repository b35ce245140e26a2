"""What differs between labs, as image transforms: magnification, focus, JPEG, resolution, stain, light.

Each family is one function ``(image uint8 (3, S, S), strength, generator) -> image``; the shifted
benchmark (:mod:`wbc.evaluation.shiftbench`) applies them at fixed, seeded severities, and the ``robust``
training augmentation (:func:`robust_augmentation`) draws them at random from wider ranges.
Strengths are expressed relative to a 160-pixel image, so they mean the same at any image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from skimage.color import hed2rgb, rgb2hed
from torchvision.transforms.v2 import functional as F

REFERENCE_SIZE = 160


def _border_colour(image: torch.Tensor) -> torch.Tensor:
    """Median colour of the outermost pixels: the smear's background around the cell."""
    border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)
    return border.median(dim=1).values


def magnify(image: torch.Tensor, zoom: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The cell ``zoom`` times its size: zoom > 1 crops the centre and enlarges it, zoom < 1 shrinks
    the image and pads it back with the background colour (as a wider field of view would show)."""
    size = image.shape[-1]
    if zoom >= 1:
        crop = max(8, round(size / zoom))
        return F.resize(F.center_crop(image, [crop, crop]), [size, size], antialias=True)
    inner = max(8, round(size * zoom))
    small = F.resize(image, [inner, inner], antialias=True)
    canvas = _border_colour(image).view(3, 1, 1).expand(3, size, size).clone()
    offset = (size - inner) // 2
    canvas[:, offset : offset + inner, offset : offset + inner] = small
    return canvas


def blur(image: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Out of focus: Gaussian blur of ``sigma`` pixels (at 160 px)."""
    sigma = sigma * image.shape[-1] / REFERENCE_SIZE
    if sigma <= 0:
        return image
    kernel = 2 * math.ceil(3 * sigma) + 1
    return F.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


def jpeg(image: torch.Tensor, quality: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Saved as JPEG at ``quality`` (1-100)."""
    return F.jpeg(image, int(round(min(max(quality, 1), 100))))


def lower_resolution(image: torch.Tensor, factor: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A coarser camera: shrink by ``factor``, then enlarge back (bilinear)."""
    size = image.shape[-1]
    small = max(4, round(size / factor))
    return F.resize(F.resize(image, [small, small], antialias=True), [size, size], antialias=False)


def stain(image: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Another stain batch or protocol: each haematoxylin/eosin/DAB channel (scikit-image's
    ``rgb2hed``) scaled by ``1 + a`` and shifted by ``b``, ``a ~ U(-s, s)``, ``b ~ U(-s/10, s/10)``."""
    draws = (torch.rand(2, 3, generator=generator) * 2 - 1) * strength
    rgb = image.permute(1, 2, 0).numpy().astype(np.float64) / 255.0
    hed = rgb2hed(rgb)
    hed = hed * (1 + draws[0].numpy()) + draws[1].numpy() / 10
    out = np.clip(hed2rgb(hed), 0, 1)
    return torch.from_numpy((out * 255.0 + 0.5).astype(np.uint8)).permute(2, 0, 1).contiguous()


def brightness(image: torch.Tensor, change: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brighter or darker illumination: brightness times ``1 + change`` (the sign drawn at random)."""
    sign = 1 if torch.rand((), generator=generator) < 0.5 else -1
    return F.adjust_brightness(image, max(0.0, 1 + sign * change))


@dataclass(frozen=True)
class Shift:
    name: str
    transform: Callable[[torch.Tensor, float, torch.Generator | None], torch.Tensor]
    severities: tuple[float, ...]
    """Strength at severity 1, 2, 3 (the benchmark's levels)."""
    training_range: tuple[float, float]
    """Strengths the robust augmentation draws from (uniformly, or log-uniformly for zoom)."""
    unit: str


SHIFTS: dict[str, Shift] = {
    shift.name: shift
    for shift in (
        Shift("zoom_out", magnify, (0.85, 0.7, 0.6), (0.65, 1.0), "x cell size"),
        Shift("zoom_in", magnify, (1.3, 1.8, 2.5), (1.0, 2.0), "x cell size"),
        Shift("blur", blur, (1.0, 2.0, 3.0), (0.3, 2.5), "sigma px"),
        Shift("jpeg", jpeg, (50, 20, 8), (10, 90), "quality"),
        Shift("resolution", lower_resolution, (2.0, 3.0, 4.0), (1.5, 4.0), "x fewer pixels"),
        Shift("stain", stain, (0.15, 0.3, 0.5), (0.0, 0.4), "HED jitter"),
        Shift("brightness", brightness, (0.15, 0.3, 0.45), (0.0, 0.35), "+- fraction"),
    )
}
SEVERITIES = (1, 2, 3)


def apply_shift(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """``images`` (N, 3, S, S) uint8 under shift ``name`` at ``severity`` (1-3), reproducibly from ``seed``."""
    shift = SHIFTS[name]
    strength = shift.severities[severity - 1]
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([shift.transform(image, strength, generator) for image in images])


class RandomShift(torch.nn.Module):
    """With probability ``p``, one shift family at a random strength from its training range."""

    def __init__(self, name: str, p: float) -> None:
        super().__init__()
        self.shift = SHIFTS[name]
        self.p = p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        low, high = self.shift.training_range
        strength = log_uniform(low, high) if self.shift.transform is magnify else float(torch.empty(()).uniform_(low, high))
        return self.shift.transform(image, strength, None)


def log_uniform(low: float, high: float) -> float:
    """A draw from ``[low, high]`` uniform in log scale (from torch's generator): as likely to halve as to double,
    the way a zoom is drawn."""
    return math.exp(float(torch.empty(()).uniform_(math.log(low), math.log(high))))


def robust_augmentation() -> list[torch.nn.Module]:
    """The lab-to-lab shifts, each applied now and then, for training that survives them."""
    # about 30 % of images pass untouched (a first setting that shifted 90 % cost 0.6 points of clean accuracy)
    return [
        RandomShift("zoom_out", 0.15),
        RandomShift("zoom_in", 0.15),
        RandomShift("stain", 0.3),
        RandomShift("brightness", 0.2),
        RandomShift("blur", 0.1),
        RandomShift("resolution", 0.1),
        RandomShift("jpeg", 0.1),
    ]
