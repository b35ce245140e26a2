"""Training augmentation of decoded uint8 images (3, S, S), with torchvision.transforms.v2.

- ``standard``: flips, 90-degree turns, light colour jitter;
- ``zoom``: + the cell at another magnification (0.7-1.5x on 70 % of images, :data:`STAIN_ZOOM`): the few-shot
  fine-tune's augmentation of a lab's cells (:data:`wbc.training.recipes.FEW_SHOT_AUGMENTATION`);
- ``robust``: + the lab-to-lab shifts of :mod:`wbc.data.shifts` now and then;
- ``stain``: + strong stain and colour jitter (HED, hue, saturation, contrast, gamma, greyscale), zoom and blur:
  the variant that held up best on another lab's cells (benchmarks/RESULTS.md, "Other labs");
- ``stain-randconv``: ``stain``, then random convolutions (:class:`RandomConvolution`) on half the images.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from wbc.data.settings import AUGMENTATIONS, DEFAULT_AUGMENTATION
from wbc.data.shifts import log_uniform, magnify, robust_augmentation, stain


class RandomRot90(torch.nn.Module):
    """Rotate by a random multiple of 90 degrees (cells have no orientation)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.rot90(image, int(torch.randint(4, ())), dims=(-2, -1))


class RandomStain(torch.nn.Module):
    """With probability ``p``, :func:`wbc.data.shifts.stain` at ``strength``: each haematoxylin/eosin/DAB channel
    scaled by ``1 + U(-strength, strength)`` and shifted by ``U(-strength/10, strength/10)`` (HED jitter,
    Tellez et al. 2019, Med. Image Anal. 58)."""

    def __init__(self, strength: float, p: float) -> None:
        super().__init__()
        self.strength, self.p = strength, p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return stain(image, self.strength) if torch.rand(()) < self.p else image


class RandomGamma(torch.nn.Module):
    """Gamma ``exp(U(-spread, spread))``: a camera's or a stain's other tone curve."""

    def __init__(self, spread: float) -> None:
        super().__init__()
        self.spread = spread

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.adjust_gamma(image, float(torch.empty(()).uniform_(-self.spread, self.spread).exp()))


class RandomZoom(torch.nn.Module):
    """With probability ``p``, :func:`wbc.data.shifts.magnify` at a zoom drawn log-uniformly from ``[low, high]``:
    the cell at another magnification, padded with the smear's background when shrunk."""

    def __init__(self, low: float, high: float, p: float) -> None:
        super().__init__()
        self.low, self.high, self.p = low, high, p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        return magnify(image, log_uniform(self.low, self.high))


class RandomConvolution(torch.nn.Module):
    """With probability ``p``, RandConv (Xu et al. 2021, "Robust and generalizable visual representation learning via
    random convolutions", ICLR): a 3-to-3-channel convolution with random weights (kernel size drawn from
    ``kernel_sizes``, weights N(0, 1 / (3 k^2)), zero padding), its output standardised to the image's own mean and
    spread per channel, mixed with the image at a share drawn from U(0, 1). It keeps shapes and scrambles colour and
    local texture, the cues that differ between labs. uint8 (3, S, S) in and out."""

    def __init__(self, p: float = 0.5, kernel_sizes: tuple[int, ...] = (1, 3, 5, 7)) -> None:
        super().__init__()
        self.p, self.kernel_sizes = p, kernel_sizes

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        size = self.kernel_sizes[int(torch.randint(len(self.kernel_sizes), ()))]
        weight = torch.randn(3, 3, size, size) / (3 * size * size) ** 0.5
        x = image.float().unsqueeze(0) / 255
        y = torch.nn.functional.conv2d(x, weight, padding=size // 2)
        y = (y - y.mean(dim=(2, 3), keepdim=True)) / (y.std(dim=(2, 3), keepdim=True) + 1e-6)
        y = y * x.std(dim=(2, 3), keepdim=True) + x.mean(dim=(2, 3), keepdim=True)
        share = torch.rand(())
        mixed = share * x + (1 - share) * y
        return (mixed.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(0)


STAIN_ZOOM = {"low": 0.7, "high": 1.5, "p": 0.7}
"""The zoom of the ``stain`` and ``zoom`` augmentations: 0.7-1.5x on 70 % of images (the GPU sweep's ``zoom``
setting)."""


def stain_augmentation() -> list[torch.nn.Module]:
    """Strong stain and colour jitter with zoom and blur: the ``stain-strong+zoom`` variant of
    ``benchmarks/other_lab_sweep.py`` with wbc's own HED jitter and zoom (centred and padded with the background,
    where the sweep's also shifted the cell by up to 5 % and padded by reflection)."""
    return [
        RandomZoom(**STAIN_ZOOM),
        RandomStain(0.5, p=0.8),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.5, hue=0.05),
        RandomGamma(0.3),
        v2.RandomApply([v2.GaussianBlur(kernel_size=13, sigma=(0.3, 2.0))], p=0.3),
        v2.RandomGrayscale(p=0.1),
    ]


def train_augmentation(kind: str = DEFAULT_AUGMENTATION) -> v2.Compose | None:
    """Training transforms of ``kind`` (one of :data:`AUGMENTATIONS`, described above); ``none`` = None."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if kind == "none":
        return None
    if kind in ("stain", "stain-randconv"):
        randconv = [RandomConvolution()] if kind == "stain-randconv" else []
        return v2.Compose([*stain_augmentation(), *randconv, v2.RandomHorizontalFlip(), RandomRot90()])
    shifts = []
    if kind == "robust":
        shifts = robust_augmentation()
    elif kind == "zoom":
        shifts = [RandomZoom(**STAIN_ZOOM)]
    return v2.Compose(
        [
            *shifts,
            v2.RandomHorizontalFlip(),
            RandomRot90(),
            v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
        ]
    )
