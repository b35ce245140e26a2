"""``wbc shiftbench``: the validation split under seeded lab-to-lab shifts (:mod:`wbc.data.shifts`).

For each shift family and severity: accuracy, macro-F1 and how often the out-of-distribution flag
fires (the model's calibrated energy threshold, and for comparison a maximum-softmax threshold set
the same way: at most 5 % of clean validation images flagged). The summary metrics are
``val_shift_acc`` (mean accuracy over every shifted condition) and ``val_robust_acc`` (the mean of
clean and shifted accuracy): the registry's selection metric for ``wbc main``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from wbc import defaults
from wbc.data import load_split
from wbc.data.shifts import SEVERITIES, SHIFTS, apply_shift
from wbc.evaluation.calibration import DEFAULT_FLAG_RATE, calibrate
from wbc.evaluation.reports import Evaluation
from wbc.inference import Predictor

CLEAN_METRIC = "val_clean_acc"
"""Accuracy on the clean validation images, as scored by the benchmark."""
SELECTION_METRIC = defaults.SELECTION_METRIC
BENCHMARK_METRICS = (CLEAN_METRIC, "val_shift_acc", "val_shift_f1", SELECTION_METRIC, "val_shift_flagged")
"""What :meth:`ShiftBenchResult.metrics` logs."""
STANDARD_SEED = 0
"""The standard benchmark: this seed, the whole validation split, one view per image."""


@dataclass
class ShiftBenchResult:
    table: pd.DataFrame
    """One row per condition: shift, severity, strength, accuracy, macro_f1, flagged, flagged_msp."""
    calibration_source: str
    """``model`` (the model's stored calibration) or ``fitted here`` (the model had none)."""
    runtime: str = "torch"
    """What ran the network: ``onnx`` (ONNX Runtime) or ``torch``."""
    seed: int = 0
    """The shifts' seed (``STANDARD_SEED`` for the benchmark the registry ranks on)."""
    images: int = 0
    """How many validation images it scored."""
    limited: bool = False
    """True when it scored only part of the validation split (``limit_per_class``)."""

    @property
    def standard(self) -> bool:
        """Whether this is the standard benchmark: the registry compares runs on it alone."""
        return self.seed == STANDARD_SEED and not self.limited

    @property
    def clean_accuracy(self) -> float:
        return float(self.table.loc[self.table["shift"] == "none", "accuracy"].iloc[0])

    @property
    def shifted(self) -> pd.DataFrame:
        return self.table[self.table["shift"] != "none"]

    def metrics(self) -> dict[str, float]:
        shifted_acc = float(self.shifted["accuracy"].mean())
        values = (self.clean_accuracy, shifted_acc, float(self.shifted["macro_f1"].mean()), (self.clean_accuracy + shifted_acc) / 2,
                  float(self.shifted["flagged"].mean()))
        return dict(zip(BENCHMARK_METRICS, values))

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
    seed: int = STANDARD_SEED,
    limit_per_class: int = 0,
    cache_dir: str | None = None,
    progress: bool = True,
) -> ShiftBenchResult:
    """Score ``predictor`` on the validation split of ``data_dir``, clean and under each shift and severity (the
    shifts seeded with ``seed + severity``); without a calibration the model is calibrated on the clean images first."""
    valid = load_split(data_dir, "valid", predictor.image_size, limit_per_class=limit_per_class, cache_dir=cache_dir)
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
    return ShiftBenchResult(pd.DataFrame(rows), source, predictor.runtime, seed=seed, images=len(valid),
                            limited=limit_per_class > 0)


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
