"""What every run that produces a model logs: valid metrics and reports, calibration, the shifted
benchmark, and the servable model (training runs, weight-averaged models, ``wbc shiftbench``)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from wbc.data.splits import DecodedImageDataset
from wbc.evaluation.calibration import calibrate, calibration_metrics
from wbc.evaluation.reports import Evaluation
from wbc.evaluation.shiftbench import ShiftBenchResult, run_shiftbench, shiftbench_figure
from wbc.inference import Predictor, export_metrics, export_model
from wbc.models import Classifier
from wbc.serving.pyfunc import log_pyfunc_model
from wbc.tracking.runs import BENCHMARK_TAG, benchmark_tag


@dataclass
class LoggedModel:
    evaluation: Evaluation
    shiftbench: ShiftBenchResult | None
    """The shifted benchmark, when it ran."""


def log_model_run(
    model: Classifier,
    image_size: int,
    valid: DecodedImageDataset,
    export_dir: str | Path,
    *,
    data_dir: str,
    shiftbench: bool = True,
    tta_thresholds: bool = True,
    onnx: bool = True,
    int8: bool = False,
    cache_dir: str | None = None,
    progress: bool = True,
) -> LoggedModel:
    """Into the active run: calibrate on ``valid`` (with ``tta_thresholds``, also the part ``--tta`` uses), log accuracy / macro-F1 / calibration metrics and the
    reports, export the calibrated model to ``export_dir`` (with ``onnx``, also its ONNX flavour, checked on all
    of ``valid``, and with ``int8`` its int8 quantization), run the shifted benchmark on the exported model
    (ONNX Runtime when it has that flavour) and log the model as pyfunc.

    The benchmark is always the standard one (seed 0, the whole validation split, whatever ``valid`` holds),
    so the registry's metric compares across runs."""
    calibration, logits = calibrate(Predictor(model, image_size), valid, tta=tta_thresholds)
    evaluation = Evaluation.from_predictions(valid.targets, logits.argmax(dim=1).numpy())
    mlflow.log_metrics({"best_val_acc": evaluation.accuracy, "best_val_f1": evaluation.macro_f1} | calibration_metrics(calibration))
    with tempfile.TemporaryDirectory() as scratch_dir:
        evaluation.write(scratch_dir)
        mlflow.log_artifacts(scratch_dir)
    export_model(model, image_size, export_dir, calibration, onnx=onnx, int8=int8, check_images=valid.pixels)
    mlflow.log_metrics(export_metrics(export_dir))
    bench = None
    if shiftbench:
        # scored as it will be served: through the ONNX flavour when there is one (faster on CPU)
        bench = run_shiftbench(Predictor.load(export_dir), data_dir, cache_dir=cache_dir, progress=progress)
        log_shiftbench_here(bench)
    log_pyfunc_model(export_dir, example_image=valid.paths[0])
    return LoggedModel(evaluation, bench)


def log_shiftbench_here(result: ShiftBenchResult, title: str = "") -> None:
    """Log the summary metrics, ``shiftbench.csv`` and ``shiftbench.png`` into the active run."""
    import matplotlib.pyplot as plt

    mlflow.log_metrics(result.metrics())
    mlflow.set_tag(BENCHMARK_TAG, benchmark_tag(result))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "shiftbench.csv"
        result.table.to_csv(path, index=False)
        mlflow.log_artifact(str(path))
    figure = shiftbench_figure(result.table, title=title)
    mlflow.log_figure(figure, "shiftbench.png")
    plt.close(figure)
