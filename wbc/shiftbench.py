"""``wbc shiftbench``: the validation split under seeded lab-to-lab shifts (:mod:`wbc.data.shifts`).

For each shift family and severity: accuracy, macro-F1 and how often the out-of-distribution flag
fires (the model's calibrated energy threshold, and for comparison a maximum-softmax threshold set
the same way: at most 5 % of clean validation images flagged). The summary metrics are
``val_shift_acc`` (mean accuracy over every shifted condition) and ``val_robust_acc`` (the mean of
clean and shifted accuracy): the registry's selection metric for ``wbc main``.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from wbc.calibration import DEFAULT_FLAG_RATE
from wbc.calibration_run import calibrate
from wbc.data import load_split
from wbc.data.shifts import SEVERITIES, SHIFTS, apply_shift
from wbc.evaluate import Evaluation
from wbc.inference import Predictor
from wbc.model_registry import CLEAN_METRIC, DEFAULT_METRIC
from wbc.tracking import RUN_KIND_TAG, configure_tracking, log_params_once, run_tags

log = logging.getLogger(__name__)

SELECTION_METRIC = DEFAULT_METRIC
"""``val_robust_acc``: what this benchmark adds to a training run and the registry selects on."""


@dataclass
class ShiftBenchResult:
    table: pd.DataFrame
    """One row per condition: shift, severity, strength, accuracy, macro_f1, flagged, flagged_msp."""
    calibration_source: str
    """``model`` (the model's stored calibration) or ``fitted here`` (the model had none)."""
    runtime: str = "torch"
    """What ran the network: ``onnx`` (ONNX Runtime) or ``torch``."""

    @property
    def clean_accuracy(self) -> float:
        return float(self.table.loc[self.table["shift"] == "none", "accuracy"].iloc[0])

    @property
    def shifted(self) -> pd.DataFrame:
        return self.table[self.table["shift"] != "none"]

    def metrics(self) -> dict[str, float]:
        shifted_acc = float(self.shifted["accuracy"].mean())
        return {
            CLEAN_METRIC: self.clean_accuracy,
            "val_shift_acc": shifted_acc,
            "val_shift_f1": float(self.shifted["macro_f1"].mean()),
            SELECTION_METRIC: (self.clean_accuracy + shifted_acc) / 2,
            "val_shift_flagged": float(self.shifted["flagged"].mean()),
        }

    def summary(self) -> str:
        view = self.table.copy()
        for column in ("accuracy", "macro_f1", "flagged", "flagged_msp"):
            view[column] = (100 * view[column]).map("{:.1f}".format)
        lines = [view.to_string(index=False)]
        lines += [f"{name} {value:.4f}" for name, value in self.metrics().items()]
        return "\n".join(lines)


def run_shiftbench(
    predictor: Predictor,
    data_dir: str,
    *,
    shifts: tuple[str, ...] = tuple(SHIFTS),
    severities: tuple[int, ...] = SEVERITIES,
    seed: int = 0,
    limit_per_class: int = 0,
    progress: bool = True,
) -> ShiftBenchResult:
    valid = load_split(data_dir, "valid", predictor.image_size, limit_per_class=limit_per_class)
    clean = torch.from_numpy(np.array(valid.pixels))
    targets = valid.targets
    source = "model"
    if predictor.calibration is None:
        predictor.calibration, _ = calibrate(predictor, valid)
        source = "fitted here"
    calibration = predictor.calibration
    clean_scores = predictor.score_pixels(clean)
    msp_threshold = float(np.quantile(clean_scores.probabilities.max(axis=1), DEFAULT_FLAG_RATE, method="lower"))

    def row(shift: str, severity: int, strength, scores) -> dict:
        evaluation = Evaluation.from_predictions(targets, scores.probabilities.argmax(axis=1))
        return {
            "shift": shift,
            "severity": severity,
            "strength": strength,
            "accuracy": evaluation.accuracy,
            "macro_f1": evaluation.macro_f1,
            "flagged": float((~calibration.in_distribution(scores.in_distribution_score)).mean()),
            "flagged_msp": float((scores.probabilities.max(axis=1) < msp_threshold).mean()),
        }

    rows = [row("none", 0, "", clean_scores)]
    conditions = [(name, severity) for name in shifts for severity in severities]
    for index, (name, severity) in enumerate(conditions, 1):
        shifted = apply_shift(clean, name, severity, seed=seed + severity)
        rows.append(row(name, severity, SHIFTS[name].severities[severity - 1], predictor.score_pixels(shifted)))
        if progress:
            print(
                f"\rshiftbench {index}/{len(conditions)}: {name} severity {severity}: "
                f"accuracy {rows[-1]['accuracy']:.4f}",
                end="\n" if index == len(conditions) else "",
                flush=True,
            )
    return ShiftBenchResult(pd.DataFrame(rows), source, predictor.runtime)


def shiftbench_figure(table: pd.DataFrame, title: str = ""):
    """Accuracy and flag rate against severity, one line per shift."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    clean = table[table["shift"] == "none"].iloc[0]
    for name, group in table[table["shift"] != "none"].groupby("shift", sort=False):
        severities = [0, *group["severity"]]
        left.plot(severities, [clean["accuracy"], *group["accuracy"]], marker="o", label=name)
        right.plot(severities, [clean["flagged"], *group["flagged"]], marker="o", label=name)
    left.set(xlabel="severity", ylabel="accuracy (valid)", title="accuracy under shift")
    right.set(xlabel="severity", ylabel="share flagged out-of-distribution", title="OOD flag rate")
    for axis in (left, right):
        axis.set_xticks([0, *SEVERITIES])
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def source_run_id(model: str) -> str | None:
    """The training run behind an MLflow model URI (``runs:/``, ``models:/name@alias``, ``models:/name/N``, ``models:/m-...``)."""
    client = mlflow.MlflowClient()
    if model.startswith("runs:/"):
        return model[len("runs:/"):].split("/")[0]
    if not model.startswith("models:/"):
        return None
    reference = model[len("models:/"):].strip("/")
    if reference.startswith("m-"):
        return client.get_logged_model(reference).source_run_id
    if "@" in reference:
        name, _, alias = reference.partition("@")
        return client.get_model_version_by_alias(name, alias).run_id
    name, _, version = reference.rpartition("/")
    return client.get_model_version(name, version).run_id


def log_shiftbench_here(result: ShiftBenchResult, title: str = "") -> None:
    """Log the summary metrics, ``shiftbench.csv`` and ``shiftbench.png`` into the active run."""
    import matplotlib.pyplot as plt

    mlflow.log_metrics(result.metrics())
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "shiftbench.csv"
        result.table.to_csv(path, index=False)
        mlflow.log_artifact(str(path))
    figure = shiftbench_figure(result.table, title=title)
    mlflow.log_figure(figure, "shiftbench.png")
    plt.close(figure)


def log_shiftbench(
    result: ShiftBenchResult, model: str, data_dir: str, experiment: str, seed: int, tta: bool, full: bool = True
) -> str:
    """A run of its own (``wbc.kind=shiftbench``) with the table and chart. When the benchmark was the
    standard one (all of valid, seed 0, no TTA), its summary metrics also go to the model's training run,
    where the registry reads ``val_robust_acc``."""
    configure_tracking(experiment)
    with mlflow.start_run(tags=run_tags(**{RUN_KIND_TAG: "shiftbench"})) as run:
        log_params_once(
            {"model_uri": model, "data_dir": str(Path(data_dir).resolve()), "seed": seed, "tta": tta,
             "calibration": result.calibration_source, "conditions": int(result.table.shape[0]), "runtime": result.runtime}
        )
        log_shiftbench_here(result, title=model)
    if tta or seed != 0 or not full:
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
    return run.info.run_id
