"""Adapting a trained model to a lab's own images without labels: batch-norm statistics re-estimated on them
(AdaBN, Li et al. 2016), with PyTorch's own ``torch.optim.swa_utils.update_bn``. Batch-norm statistics are a main
cause of the collapse of a one-lab model on another lab's cells (Tsutsui et al. 2023)."""

from __future__ import annotations

import numpy as np
import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

from wbc.models import Classifier


def batch_norm_layers(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]


def reestimate_batch_norm(model: Classifier, pixels: np.ndarray, batch_size: int = 32) -> int:
    """Replace every batch-norm layer's running mean and variance by the statistics of ``pixels`` (uint8 (N, 3, S, S),
    the lab's images at the model's size), averaged over all of them; the weights stay. Returns the number of layers.
    The model is left in eval mode."""
    if len(pixels) == 0:
        raise ValueError("no images to re-estimate batch-norm statistics on")
    images = torch.from_numpy(np.asarray(pixels))
    # each batch counts once in the average: a short last batch is left out when there are full ones
    loader = DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=False, drop_last=len(images) > batch_size)
    with torch.inference_mode(False):
        update_bn(loader, model)
    model.eval()
    return len(batch_norm_layers(model))
