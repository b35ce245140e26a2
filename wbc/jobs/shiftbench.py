"""``wbc shiftbench``: the shifted validation benchmark of a model as a run of its own (table and chart); the
standard benchmark also records its metrics on the model's training run, where the registry reads them."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow

from wbc.evaluation.shiftbench import ShiftBenchResult
from wbc.tracking.model_logging import log_shiftbench_here
from wbc.tracking.registry import source_run_id, version_params
from wbc.tracking.runs import BENCHMARK_TAG, RUN_KIND_TAG, benchmark_tag, configure_tracking, log_params_once, run_tags

log = logging.getLogger(__name__)


def log_shiftbench(result: ShiftBenchResult, model: str, data_dir: str, experiment: str, tta: bool) -> str:
    """A run of its own (``wbc.kind=shiftbench``) with the table and chart. When the benchmark was the
    standard one (all of valid, seed 0, no TTA), its summary metrics also go to the model's training run,
    where the registry reads ``val_robust_acc``."""
    configure_tracking(experiment)
    with mlflow.start_run(run_name=f"shiftbench {model}", tags=run_tags(**{RUN_KIND_TAG: "shiftbench"})) as run:
        log_params_once(
            version_params(model) | {"model_uri": model, "data_dir": str(Path(data_dir).resolve()), "seed": result.seed, "tta": tta,
             "calibration": result.calibration_source, "conditions": int(result.shifted.shape[0]), "runtime": result.runtime,
             "labs": ",".join(result.real["strength"].astype(str))}
        )
        log_shiftbench_here(result, title=model)
    if tta or not result.standard:
        return run.info.run_id
    training_run = None
    try:
        training_run = source_run_id(model)
    except mlflow.exceptions.MlflowException as error:
        log.warning("%s: cannot find its training run (%s)", model, error)
    if training_run:
        client = mlflow.MlflowClient()
        for name, value in result.metrics().items():
            client.log_metric(training_run, name, value)
        client.set_tag(training_run, BENCHMARK_TAG, benchmark_tag(result))
    return run.info.run_id
