"""What every run that produces a model logs: valid metrics and reports, calibration, the shifted
benchmark, and the servable model (used by training runs and by weight-averaged models)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from wbc.calibration_run import calibrate, calibration_metrics
from wbc.data.datamodule import DecodedImageDataset
from wbc.evaluate import Evaluation
from wbc.inference import Predictor, export_metrics, export_model
from wbc.models import Classifier


@dataclass
class LoggedModel:
    evaluation: Evaluation
    shiftbench: object | None
    """The :class:`wbc.shiftbench.ShiftBenchResult`, when the benchmark ran."""


def log_model_run(
    model: Classifier,
    image_size: int,
    valid: DecodedImageDataset,
    export_dir: str | Path,
    *,
    data_dir: str,
    shiftbench: bool = True,
    onnx: bool = True,
    int8: bool = False,
    seed: int = 0,
    limit_per_class: int = 0,
    progress: bool = True,
) -> LoggedModel:
    """Into the active run: calibrate on ``valid``, log accuracy / macro-F1 / calibration metrics and the
    reports, export the calibrated model to ``export_dir`` (with ``onnx``, also its ONNX flavour, checked on all
    of ``valid``, and with ``int8`` its int8 quantization), run the shifted benchmark on the exported model
    (ONNX Runtime when it has that flavour) and log the model as pyfunc."""
    from wbc.serving import log_pyfunc_model

    calibration, logits = calibrate(Predictor(model, image_size), valid)
    evaluation = Evaluation.from_predictions(valid.targets, logits.argmax(dim=1).numpy())
    mlflow.log_metrics({"best_val_acc": evaluation.accuracy, "best_val_f1": evaluation.macro_f1} | calibration_metrics(calibration))
    with tempfile.TemporaryDirectory() as scratch_dir:
        evaluation.write(scratch_dir)
        mlflow.log_artifacts(scratch_dir)
    export_model(model, image_size, export_dir, calibration, onnx=onnx, int8=int8, check_images=valid.pixels)
    mlflow.log_metrics(export_metrics(export_dir))
    bench = None
    if shiftbench:
        from wbc.shiftbench import log_shiftbench_here, run_shiftbench

        # scored as it will be served: through the ONNX flavour when there is one (faster on CPU)
        bench = run_shiftbench(Predictor.load(export_dir), data_dir, seed=seed, limit_per_class=limit_per_class, progress=progress)
        log_shiftbench_here(bench)
    log_pyfunc_model(export_dir, example_image=valid.paths[0])
    return LoggedModel(evaluation, bench)
