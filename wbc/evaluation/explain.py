"""Grad-CAM heatmaps (Selvaraju et al. 2017) with captum's ``LayerGradCam``: where in the cell the
network looked for the class it predicted. The explained layer is each architecture's ``cam_layer``."""

from __future__ import annotations

import io

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from PIL import Image

from wbc.models import Classifier


class GradCam:
    def __init__(self, model: Classifier) -> None:
        self.model = model
        layer = dict(model.net.named_modules())[model.spec.cam_layer]
        self.cam = LayerGradCam(model, layer)

    def heatmaps(self, images: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        """(N, H, W) maps in [0, 1] for uint8 images (N, 3, H, W) and the classes ``targets``."""
        inputs = images.float().div(255.0)
        with torch.enable_grad():
            attributions = self.cam.attribute(inputs, target=targets.tolist(), relu_attributions=True)
        maps = LayerAttribution.interpolate(attributions.detach(), tuple(images.shape[-2:]), interpolate_mode="bilinear")
        maps = maps[:, 0]
        peak = maps.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
        return (maps / peak).clamp(0, 1).numpy()


def overlay_png(image: torch.Tensor, heatmap: np.ndarray, alpha: float = 0.45) -> bytes:
    """The image (3, H, W) uint8 with ``heatmap`` (H, W) in [0, 1] blended over it (jet colours), as PNG bytes."""
    from matplotlib import colormaps

    colours = colormaps["jet"](heatmap)[..., :3]
    base = image.permute(1, 2, 0).numpy().astype(np.float32) / 255.0
    blended = (1 - alpha) * base + alpha * colours
    return _png((blended * 255).round().astype(np.uint8))


def image_png(image: np.ndarray | torch.Tensor) -> bytes:
    """The image, uint8 (3, H, W), as PNG bytes."""
    return _png(np.ascontiguousarray(np.asarray(image).transpose(1, 2, 0)))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
