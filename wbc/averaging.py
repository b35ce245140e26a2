"""Weight-space ensembles: one model whose weights are a weighted mean of two fine-tunes of the same
network (WiSE-FT, Wortsman et al. 2022; model soups). Averaging a model with its continuation under
the shift augmentation keeps most of the first's clean accuracy and most of the second's robustness,
at the cost of one model: inference is unchanged.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Sequence

import mlflow
import numpy as np
import torch

from wbc.data import load_split
from wbc.inference import Predictor, load_model_from
from wbc.model_logging import LoggedModel, log_model_run
from wbc.models import Classifier
from wbc.tracking import RUN_KIND_TAG, configure_tracking, log_params_once, run_tags


class AveragingError(ValueError):
    pass


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


def average_run(
    first_uri: str,
    second_uri: str,
    weight: float | Sequence[float],
    data_dir: str,
    *,
    min_accuracy: float = 0.0,
    limit_per_class: int = 0,
    experiment: str = "wbc",
    output_dir: str = "outputs",
    shiftbench: bool = True,
    onnx: bool = True,
    int8: bool = False,
    progress: bool = True,
) -> tuple[str, LoggedModel]:
    """Average two models into a new run (tagged as a training run, so the registry weighs it like one);
    ``onnx`` and ``int8`` choose the exported flavours as in training. Given several weights (shares of the
    second model), the run keeps the first that scores at least ``min_accuracy`` on valid
    (:func:`fitted_weight`)."""
    started = time.perf_counter()
    first, image_size = load_model_from(first_uri)
    second, second_size = load_model_from(second_uri)
    if image_size != second_size:
        raise AveragingError(f"cannot average models trained at {image_size} and {second_size} px")
    valid = load_split(data_dir, "valid", image_size, limit_per_class=limit_per_class)
    tried = {}
    if isinstance(weight, (int, float)):
        weight = float(weight)
    else:
        weight, tried = fitted_weight(first, second, weight, image_size, valid, min_accuracy)
    model = average_weights(first, second, weight)
    configure_tracking(experiment)
    with mlflow.start_run(tags=run_tags(**{RUN_KIND_TAG: "train", "wbc.averaged": "true"})) as run:
        log_params_once(
            {"arch": model.arch, "mode": "average", "image_size": image_size, "average_of": f"{first_uri} {second_uri}",
             "average_weight": weight, "data_dir": str(Path(data_dir).resolve()), "val_size": len(valid),
             "limit_per_class": limit_per_class}
            | ({"average_weights_tried": " ".join(f"{w:g}:{a:.6f}" for w, a in tried.items()),
                "average_min_accuracy": round(min_accuracy, 6)} if tried else {})
        )
        export_dir = Path(output_dir).resolve() / run.info.run_id / "model"
        logged = log_model_run(model, image_size, valid, export_dir, data_dir=data_dir, shiftbench=shiftbench,
                               onnx=onnx, int8=int8, limit_per_class=limit_per_class, progress=progress)
        mlflow.log_metric("train_minutes", (time.perf_counter() - started) / 60)
    return run.info.run_id, logged
