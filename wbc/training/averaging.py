"""Weight-space ensembles: one model whose weights are a weighted mean of two fine-tunes of the same
network (WiSE-FT, Wortsman et al. 2022; model soups). Averaging a model with its continuation under
the shift augmentation keeps most of the first's clean accuracy and most of the second's robustness,
at the cost of one model: inference is unchanged.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch

from wbc.errors import WBCError
from wbc.inference import Predictor
from wbc.models import Classifier


class AveragingError(WBCError, ValueError):
    """Two models cannot be averaged (other architectures or sizes), or the weight is out of range."""


def average_weights(first: Classifier, second: Classifier, weight: float) -> Classifier:
    """``first`` with every floating-point tensor replaced by ``(1 - weight) * first + weight * second``
    (integer buffers such as batch-norm counters are kept from ``first``)."""
    if first.arch != second.arch:
        raise AveragingError(f"cannot average a {first.arch} with a {second.arch}: the architectures differ")
    if not 0 <= weight <= 1:
        raise AveragingError(f"weight={weight} is invalid: expected a number from 0 to 1")
    theirs = second.state_dict()
    mixed = {
        name: torch.lerp(tensor.float(), theirs[name].float(), weight).to(tensor.dtype) if tensor.is_floating_point() else tensor
        for name, tensor in first.state_dict().items()
    }
    first.load_state_dict(mixed)
    return first


def fitted_weight(
    first: Classifier, second: Classifier, weights: Sequence[float], image_size: int, valid, min_accuracy: float
) -> tuple[float, dict[float, float]]:
    """The first of ``weights`` whose average scores at least ``min_accuracy`` on ``valid`` (one view, as
    ``best_val_acc``), else the most accurate one; with the accuracy of each weight tried."""
    tried: dict[float, float] = {}
    for weight in weights:
        model = average_weights(copy.deepcopy(first), second, weight)
        predicted = Predictor(model, image_size).logits_pixels(valid.pixels).argmax(axis=1)
        tried[weight] = float(np.mean(predicted == np.asarray(valid.targets)))
        if tried[weight] >= min_accuracy - 1e-9:
            return weight, tried
    return max(tried, key=tried.get), tried
