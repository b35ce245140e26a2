"""The record each architecture carries: what travels with its weights (input normalisation, default size)
and the names of the parts the training modes freeze and unfreeze, so no other module hard-codes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)



@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    """``builder(num_classes=..., pretrained=...)`` returns the bare network (normalisation not included)."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    """Default training and inference size in pixels (square)."""
    head: tuple[str, ...]
    """Module names (in the bare network) of the new classifier head."""
    last_block: tuple[str, ...]
    """Module names unfrozen, beside the head, in phase 2 of ``finetune`` with ``unfreeze=last``."""
    has_pretrained: bool
    description: str
    cam_layer: str = ""
    """Module name whose activations Grad-CAM explains (the last convolutional feature map)."""
    stages: tuple[tuple[str, ...], ...] = ()
    """The backbone's stages from the input on (the stem first), as module names: ``freeze_stages=N``
    keeps the first N frozen in every phase of ``finetune``."""
