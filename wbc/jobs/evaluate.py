"""``wbc evaluate``: score a trained model on one split, write the reports, log them to MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow

from wbc import defaults
from wbc.data import BarcelonaDataset, load_split
from wbc.evaluation.reports import Evaluation
from wbc.inference import Predictor
from wbc.tracking.runs import RUN_KIND_TAG, configure_tracking, log_params_once, run_tags


def evaluate_model(
    model: str,
    data_dir: str,
    split: str = "valid",
    *,
    output_dir: str | Path = defaults.EVALUATION_DIR,
    batch_size: int = defaults.SCORING_BATCH,
    track: bool = True,
    experiment: str = defaults.EXPERIMENT,
    tta: bool = False,
    runtime: str = "auto",
    cache_dir: str | None = None,
) -> tuple[Evaluation, list[Path]]:
    """Score ``model`` on ``split``; write the reports (:data:`~wbc.evaluation.reports.REPORT_FILES`) into
    ``output_dir``; with ``track``, log them and the scores as a run of kind ``evaluate``. Returns the scores and
    the files written."""
    BarcelonaDataset(data_dir, split)  # missing data fails before the model loads
    predictor = Predictor.load(model, batch_size=batch_size, tta=tta, runtime=runtime)
    dataset = load_split(data_dir, split, predictor.image_size, cache_dir=cache_dir)
    probabilities = predictor.predict_pixels(dataset.pixels)
    evaluation = Evaluation.from_predictions(dataset.targets, probabilities.argmax(axis=1))
    files = evaluation.write(output_dir)
    if track:
        configure_tracking(experiment)
        with mlflow.start_run(run_name=f"evaluate {model} on {split}", tags=run_tags(**{RUN_KIND_TAG: "evaluate"})):
            log_params_once(
                {"model_uri": model, "split": split, "data_dir": str(Path(data_dir).resolve()), "size": len(dataset), "tta": tta,
                 "runtime": predictor.runtime}
            )
            mlflow.log_metrics({f"{split}_acc": evaluation.accuracy, f"{split}_f1": evaluation.macro_f1})
            for path in files:  # only what this evaluation wrote, whatever else the folder holds
                mlflow.log_artifact(str(path))
    return evaluation, files
