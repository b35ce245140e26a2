"""Fit a model's calibration on the validation split and keep it with the model (at training end, or later)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow

from wbc.data import load_split
from wbc.evaluation.calibration import DEFAULT_FLAG_RATE, DEFAULT_TARGET_ERROR, Calibration, calibrate, calibration_metrics
from wbc.inference import Predictor, export_metrics, export_model, load_model_from
from wbc.serving.pyfunc import log_pyfunc_model
from wbc.tracking.runs import reopen_run


def calibrate_run(
    run_id: str, data_dir: str, target_error: float = DEFAULT_TARGET_ERROR, flag_rate: float = DEFAULT_FLAG_RATE,
    int8: bool = False,
    cache_dir: str | None = None,
) -> Calibration:
    """Calibrate the model logged by training run ``run_id`` and log the calibrated model (with its ONNX
    flavour, and with ``int8`` its int8 quantization) in the same run.

    The run's earlier model stays (and so do registered versions made from it); ``runs:/<id>/model``
    and the next ``wbc register`` use the calibrated one.
    """
    model, image_size = load_model_from(f"runs:/{run_id}/model")
    valid = load_split(data_dir, "valid", image_size, cache_dir=cache_dir)
    calibration, _ = calibrate(Predictor(model, image_size), valid, target_error, flag_rate)
    with tempfile.TemporaryDirectory() as scratch, reopen_run(run_id):
        export_dir = export_model(model, image_size, Path(scratch) / "model", calibration,
                                  int8=int8, check_images=valid.pixels)
        mlflow.log_metrics(calibration_metrics(calibration) | export_metrics(export_dir))
        log_pyfunc_model(export_dir, example_image=valid.paths[0])
    return calibration
