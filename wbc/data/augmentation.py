"""Training augmentation of decoded uint8 images (3, S, S): flips, 90-degree turns, light colour jitter,
and for ``robust`` the lab-to-lab shifts of :mod:`wbc.data.shifts` (torchvision.transforms.v2)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from wbc.data.settings import AUGMENTATIONS, DEFAULT_AUGMENTATION
from wbc.data.shifts import robust_augmentation


class RandomRot90(torch.nn.Module):
    """Rotate by a random multiple of 90 degrees (cells have no orientation)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.rot90(image, int(torch.randint(4, ())), dims=(-2, -1))


def train_augmentation(kind: str = DEFAULT_AUGMENTATION) -> v2.Compose | None:
    """Training transforms: ``standard`` = flips, 90-degree rotations and light colour jitter;
    ``robust`` adds the lab-to-lab shifts of :mod:`wbc.data.shifts` (zoom, stain, light, blur,
    resolution, JPEG) now and then; ``none`` = no augmentation."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if kind == "none":
        return None
    shifts = robust_augmentation() if kind == "robust" else []
    return v2.Compose(
        [
            *shifts,
            v2.RandomHorizontalFlip(),
            RandomRot90(),
            v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
        ]
    )
