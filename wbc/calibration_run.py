"""Fit a model's calibration on the validation split and keep it with the model (at training end, or later)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import torch

from wbc.calibration import DEFAULT_FLAG_RATE, DEFAULT_TARGET_ERROR, Calibration, fit_calibration
from wbc.data import load_split
from wbc.data.datamodule import DecodedImageDataset
from wbc.inference import Predictor, export_metrics, export_model, load_model_from
from wbc.tracking import reopen_run


def calibrate(
    predictor: Predictor,
    valid: DecodedImageDataset,
    target_error: float = DEFAULT_TARGET_ERROR,
    flag_rate: float = DEFAULT_FLAG_RATE,
) -> tuple[Calibration, torch.Tensor]:
    """Fit on ``valid``; return the calibration and the raw logits it was fitted on."""
    logits = torch.from_numpy(predictor.logits_pixels(valid.pixels))
    return fit_calibration(logits, torch.from_numpy(valid.targets), target_error, flag_rate), logits


def calibration_metrics(calibration: Calibration) -> dict[str, float]:
    """What the run records about its calibration (validation split)."""
    metrics = {
        "val_ece": calibration.ece_before,
        "val_ece_calibrated": calibration.ece_after,
        "temperature": calibration.temperature,
        "review_threshold": calibration.review_threshold,
        "review_fraction": 1 - calibration.accepted_fraction,
        "accepted_error": calibration.accepted_error,
        "ood_threshold": calibration.ood_threshold,
    }
    return {name: value for name, value in metrics.items() if value is not None}


def calibrate_run(
    run_id: str, data_dir: str, target_error: float = DEFAULT_TARGET_ERROR, flag_rate: float = DEFAULT_FLAG_RATE,
    int8: bool = False,
) -> Calibration:
    """Calibrate the model logged by training run ``run_id`` and log the calibrated model (with its ONNX
    flavour, and with ``int8`` its int8 quantization) in the same run.

    The run's earlier model stays (and so do registered versions made from it); ``runs:/<id>/model``
    and the next ``wbc register`` use the calibrated one.
    """
    from wbc.serving import log_pyfunc_model

    model, image_size = load_model_from(f"runs:/{run_id}/model")
    valid = load_split(data_dir, "valid", image_size)
    calibration, _ = calibrate(Predictor(model, image_size), valid, target_error, flag_rate)
    with tempfile.TemporaryDirectory() as scratch, reopen_run(run_id):
        export_dir = export_model(model, image_size, Path(scratch) / "model", calibration,
                                  int8=int8, check_images=valid.pixels)
        mlflow.log_metrics(calibration_metrics(calibration) | export_metrics(export_dir))
        log_pyfunc_model(export_dir, example_image=valid.paths[0])
    return calibration
