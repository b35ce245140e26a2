"""``wbc main``: the whole job as one function, :func:`run_main`; the command line only prints what it returns.

Stage 1 trains the documented recipe (:data:`~wbc.training.recipes.MAIN_RECIPE`); stage 2 continues it with the
lab-to-lab shift augmentation; stage 3 averages their weights (as much of stage 2 as keeps valid accuracy within
the champion rule's 0.3 points of the better stage); then the best run of the experiment on clean + shifted accuracy
(``val_robust_acc``) is registered as champion. Every stage and the registration stay in one experiment: under
``mlflow run --experiment-name X`` that is X.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace

import mlflow

from wbc.jobs.average import AveragedRun, average_run
from wbc.jobs.train import TrainResult, resumable_run, run_name, train
from wbc.tracking.registry import DEFAULT_METRIC, Registration, clean_accuracy_floor, register_best
from wbc.tracking.runs import configure_tracking, project_run_experiment
from wbc.training.config import ConfigError, TrainConfig, check_ranges
from wbc.training.recipes import ROBUST_AVERAGE_WEIGHTS, ROBUST_STAGE, MainSettings, stage1_minutes, stage2_minutes

log = logging.getLogger(__name__)


@dataclass
class MainResult:
    experiment: str
    stage1: TrainResult
    stage2: TrainResult | None
    """None when stage 2 was skipped (``robust_epochs=0``, or too little time left)."""
    averaged: AveragedRun | None
    registration: Registration


def run_main(config: TrainConfig, settings: MainSettings | None = None, *,
             echo: Callable[[str], None] | None = None) -> MainResult | None:
    """Run the three stages and register the champion; ``echo`` receives each announcement and each stage's
    summary as it happens (default: the log). Returns None on the non-zero ranks of a multi-process run.

    ``config.resume`` continues stage 1 only. Raises :class:`ConfigError` before any work for settings the job
    cannot keep (``shiftbench=False``: the champion is chosen on the benchmark's metric).
    """
    settings = settings or MainSettings()
    echo = echo or log.info
    if not config.shiftbench:
        raise ConfigError("shiftbench=False: wbc main ranks its stages on val_robust_acc, which the shifted benchmark "
                          "measures; drop --no-shiftbench (for a quick model without it: wbc train --no-shiftbench)")
    config = config.validate()
    if config.resume:
        resumable_run(config)  # before anything is announced
    check_ranges(settings)
    configure_tracking(config.experiment)
    experiment = project_run_experiment() or config.experiment
    config = replace(config, experiment=experiment)
    robust_epochs, time_budget = settings.robust_epochs, settings.time_budget

    started = time.monotonic()
    if time_budget and not config.max_time:
        config = replace(config, max_time=stage1_minutes(time_budget, robust_epochs))
        echo(f"time budget {time_budget:g} min: stage 1 trains for at most {config.max_time:.1f} min")
    echo(f"stage 1: {run_name(config)}, {config.epochs} epoch{'s' * (config.epochs != 1)}"
         + (f", continuing run {config.resume}" if config.resume else ""))
    first = train(replace(config, run_name=config.run_name or f"main stage 1: {run_name(config)}"))
    if first is None:
        return None
    echo(first.summary())
    stage2_cap = None
    if robust_epochs and time_budget:
        elapsed = (time.monotonic() - started) / 60
        stage2_cap = stage2_minutes(time_budget, elapsed, max(elapsed - first.train_minutes, 0.0))
        if stage2_cap is None:
            echo(f"stages 2 and 3 skipped: {elapsed:.1f} of the {time_budget:g} min budget used by stage 1, too little "
                 "left for another stage and its evaluation (--time-budget 0 for no limit)")
            robust_epochs = 0
    second = averaged = None
    if robust_epochs:
        echo(f"stage 2: {robust_epochs} epoch{'s' * (robust_epochs != 1)} from run {first.run_id} with --augment {ROBUST_STAGE['augment']}"
             + (f", training for at most {stage2_cap:.1f} min" if stage2_cap else ""))
        # stage 2 continues what stage 1 really was (a resumed stage 1 ran with the settings its run logged)
        stage1 = config.from_logged_params(mlflow.MlflowClient().get_run(first.run_id).data.params)
        stage2_config = replace(stage1, **ROBUST_STAGE, epochs=robust_epochs, init_from=f"runs:/{first.run_id}/model",
                                teachers=(), resume=None, run_name=None, max_time=stage2_cap or config.max_time)
        with _outside_project_run():  # under `mlflow run`, stage 1 was the project's run; stage 2 gets its own
            second = train(replace(stage2_config, run_name=f"main stage 2: {run_name(stage2_config)}"))
        if second is None:
            return None
        echo(second.summary())
        min_accuracy = clean_accuracy_floor([first.best_val_acc, second.best_val_acc])
        echo(f"stage 3: weight average of stage 1 and stage 2, with the first of {', '.join(map(str, ROBUST_AVERAGE_WEIGHTS))} "
             f"on stage 2 that keeps valid accuracy at or above {min_accuracy:.4f}")
        with _outside_project_run():
            averaged = average_run(
                f"runs:/{first.run_id}/model", f"runs:/{second.run_id}/model", ROBUST_AVERAGE_WEIGHTS, config.data_dir,
                min_accuracy=min_accuracy, limit_per_class=config.limit_per_class, experiment=experiment,
                output_dir=config.output_dir, onnx=config.onnx, int8=config.int8, cache_dir=config.cache_dir,
                run_name=f"main stage 3: average of stages 1 and 2 ({run_name(config)})", progress=config.progress,
            )
        echo(averaged.summary())
    registration = register_best(experiment=experiment, metric=DEFAULT_METRIC)
    return MainResult(experiment, first, second, averaged, registration)


@contextmanager
def _outside_project_run():
    """Without ``$MLFLOW_RUN_ID``: a run started inside is a new one, not the run ``mlflow run`` made (restored after)."""
    project_run = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        yield
    finally:
        if project_run is not None:
            os.environ["MLFLOW_RUN_ID"] = project_run
