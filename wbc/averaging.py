"""Weight-space ensembles: one model whose weights are a weighted mean of two fine-tunes of the same
network (WiSE-FT, Wortsman et al. 2022; model soups). Averaging a model with its continuation under
the shift augmentation keeps most of the first's clean accuracy and most of the second's robustness,
at the cost of one model: inference is unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import torch

from wbc.data import load_split
from wbc.inference import load_model_from
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


def average_run(
    first_uri: str,
    second_uri: str,
    weight: float,
    data_dir: str,
    *,
    experiment: str = "wbc",
    output_dir: str = "outputs",
    shiftbench: bool = True,
    onnx: bool = True,
    int8: bool = False,
    progress: bool = True,
) -> tuple[str, LoggedModel]:
    """Average two models into a new run (tagged as a training run, so the registry weighs it like one);
    ``onnx`` and ``int8`` choose the exported flavours as in training."""
    started = time.perf_counter()
    first, image_size = load_model_from(first_uri)
    second, second_size = load_model_from(second_uri)
    if image_size != second_size:
        raise AveragingError(f"cannot average models trained at {image_size} and {second_size} px")
    model = average_weights(first, second, weight)
    valid = load_split(data_dir, "valid", image_size)
    configure_tracking(experiment)
    with mlflow.start_run(tags=run_tags(**{RUN_KIND_TAG: "train", "wbc.averaged": "true"})) as run:
        log_params_once(
            {"arch": model.arch, "mode": "average", "image_size": image_size, "average_of": f"{first_uri} {second_uri}",
             "average_weight": weight, "data_dir": str(Path(data_dir).resolve()), "val_size": len(valid)}
        )
        export_dir = Path(output_dir).resolve() / run.info.run_id / "model"
        logged = log_model_run(model, image_size, valid, export_dir, data_dir=data_dir, shiftbench=shiftbench,
                               onnx=onnx, int8=int8, progress=progress)
        mlflow.log_metric("train_minutes", (time.perf_counter() - started) / 60)
    return run.info.run_id, logged
