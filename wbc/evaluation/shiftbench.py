"""``wbc shiftbench``: the validation split under seeded lab-to-lab shifts (:mod:`wbc.data.shifts`).

For each shift family and severity: accuracy, macro-F1 and how often the out-of-distribution flag
fires (the model's calibrated energy threshold, and for comparison a maximum-softmax threshold set
the same way: at most 5 % of clean validation images flagged). The summary metrics are
``val_shift_acc`` (mean accuracy over every shifted condition) and ``val_robust_acc`` (the mean of
clean and shifted accuracy): the registry's selection metric for ``wbc main``.

Real shift: each labelled folder of another lab's cells (by default ``<data dir>/other-lab`` when it is there) is a
row of its own (``shift`` = ``lab``, ``strength`` = the folder's name), scored among the classes it holds, with the
error rate among the cells the flag takes and leaves. It is far too small to select on, so it never enters
``val_shift_acc`` or ``val_robust_acc``; its mean accuracy and flag rate are logged as ``real_shift_acc`` and
``real_shift_flagged``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wbc import defaults
from wbc.data import load_folder, load_split
from wbc.data.shifts import SEVERITIES, SHIFTS, apply_shift
from wbc.evaluation.calibration import DEFAULT_FLAG_RATE, calibrate
from wbc.evaluation.reports import Evaluation, FlagSummary
from wbc.inference import Predictor
from wbc.inference.calibration import is_blank

CLEAN_METRIC = "val_clean_acc"
"""Accuracy on the clean validation images, as scored by the benchmark."""
SELECTION_METRIC = defaults.SELECTION_METRIC
BENCHMARK_METRICS = (CLEAN_METRIC, "val_shift_acc", "val_shift_f1", SELECTION_METRIC, "val_shift_flagged")
"""What :meth:`ShiftBenchResult.metrics` logs (and with real-shift rows, :data:`REAL_SHIFT_METRICS`)."""
REAL_SHIFT = "lab"
"""The ``shift`` of a real-shift row (another lab's labelled cells)."""
REAL_SHIFT_METRICS = ("real_shift_acc", "real_shift_flagged")
STANDARD_SEED = 0
"""The standard benchmark: this seed, the whole validation split, one view per image."""


@dataclass
class ShiftBenchResult:
    table: pd.DataFrame
    """One row per condition: shift, severity, strength, images, accuracy, macro_f1, flagged, flagged_msp, error_flagged,
    error_unflagged (the error rate among the cells the out-of-distribution flag takes and leaves; NaN where none)."""
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
        """The synthetic conditions."""
        return synthetic_rows(self.table)

    @property
    def real(self) -> pd.DataFrame:
        """The real-shift rows: other labs' labelled cells."""
        return self.table[self.table["shift"] == REAL_SHIFT]

    def metrics(self) -> dict[str, float]:
        shifted_acc = float(self.shifted["accuracy"].mean())
        values = (self.clean_accuracy, shifted_acc, float(self.shifted["macro_f1"].mean()), (self.clean_accuracy + shifted_acc) / 2,
                  float(self.shifted["flagged"].mean()))
        metrics = dict(zip(BENCHMARK_METRICS, values))
        if len(self.real):
            metrics |= dict(zip(REAL_SHIFT_METRICS, (float(self.real["accuracy"].mean()), float(self.real["flagged"].mean()))))
        return metrics

    def summary(self) -> str:
        view = self.table.copy()
        for column in ("accuracy", "macro_f1", "flagged", "flagged_msp", "error_flagged", "error_unflagged"):
            view[column] = (100 * view[column]).map("{:.1f}".format)
        lines = [view.to_string(index=False, na_rep="-")]
        if len(self.real):
            lines.append(f"{REAL_SHIFT} rows: another lab's labelled cells, scored among the classes each folder holds; "
                         "not part of val_shift_acc")
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
    labs: list[str | Path] | None = None,
) -> ShiftBenchResult:
    """Score ``predictor`` on the validation split of ``data_dir``, clean and under each shift and severity (the
    shifts seeded with ``seed + severity``), and on each labelled folder of ``labs`` (None: ``<data_dir>/other-lab``
    when it is there; see :func:`default_labs`); without a calibration the model is calibrated on the clean images
    first. Raises :class:`~wbc.data.DatasetError` for a missing or misnamed folder."""
    valid = load_split(data_dir, "valid", predictor.image_size, limit_per_class=limit_per_class, cache_dir=cache_dir)
    clean = torch.from_numpy(np.array(valid.pixels))
    targets = valid.targets
    source = "model"
    if predictor.active_calibration is None:  # no calibration, or with TTA none fitted on mean views
        fitted, _ = calibrate(predictor, valid, tta=predictor.tta)
        predictor.calibration = fitted if predictor.calibration is None else replace(predictor.calibration, tta=fitted.tta)
        source = "fitted here"
    calibration = predictor.active_calibration
    clean_scores = predictor.score_pixels(clean)
    msp_threshold = float(np.quantile(clean_scores.probabilities.max(axis=1), DEFAULT_FLAG_RATE, method="lower"))

    def row(shift: str, severity: int, strength, scores, pixels, labels=targets, restricted: bool = False) -> dict:
        evaluation = Evaluation.from_scores(labels, scores.probabilities)
        if restricted:  # among the classes the set holds
            accuracy, macro_f1 = evaluation.present_accuracy, evaluation.present_macro_f1
            present = np.asarray(evaluation.present_classes)
            predicted = present[scores.probabilities[:, present].argmax(axis=1)]
        else:
            accuracy, macro_f1, predicted = evaluation.accuracy, evaluation.macro_f1, scores.probabilities.argmax(axis=1)
        in_distribution = np.asarray(calibration.in_distribution(scores.in_distribution_score), bool) & ~is_blank(pixels)
        review = np.asarray(calibration.needs_review(scores.probabilities.max(axis=1)), bool)
        flags = FlagSummary.from_flags(predicted == labels, in_distribution, review)
        return {
            "shift": shift,
            "severity": severity,
            "strength": strength,
            "images": len(labels),
            "accuracy": accuracy,
            "macro_f1": macro_f1,
            "flagged": flags.out_of_distribution,
            "flagged_msp": float((scores.probabilities.max(axis=1) < msp_threshold).mean()),
            "error_flagged": np.nan if flags.error_flagged is None else flags.error_flagged,
            "error_unflagged": np.nan if flags.error_unflagged is None else flags.error_unflagged,
        }

    rows = [row("none", 0, "", clean_scores, clean)]
    conditions = [(name, severity) for name in shifts for severity in severities]
    for index, (name, severity) in enumerate(conditions, 1):
        shifted = apply_shift(clean, name, severity, seed=seed + severity)
        rows.append(row(name, severity, SHIFTS[name].severities[severity - 1], predictor.score_pixels(shifted), shifted))
        if progress:
            print(
                f"\rshiftbench {index}/{len(conditions)}: {name} severity {severity}: "
                f"accuracy {rows[-1]['accuracy']:.4f}",
                end="\n" if index == len(conditions) else "",
                flush=True,
            )
    for folder in default_labs(data_dir) if labs is None else labs:
        lab = load_folder(folder, predictor.image_size, cache_dir=cache_dir)
        pixels = torch.from_numpy(np.array(lab.pixels))
        rows.append(row(REAL_SHIFT, 0, Path(folder).resolve().name, predictor.score_pixels(pixels), pixels, lab.targets,
                        restricted=True))
    return ShiftBenchResult(pd.DataFrame(rows), source, predictor.runtime, seed=seed, images=len(valid),
                            limited=limit_per_class > 0)


def synthetic_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the synthetic shifts: neither the clean row nor the real-shift (other lab) rows."""
    return table[~table["shift"].isin(["none", REAL_SHIFT])]


def default_labs(data_dir: str | Path) -> list[Path]:
    """``<data_dir>/other-lab`` (:data:`wbc.defaults.OTHER_LAB`) when it is a folder, else nothing."""
    folder = Path(data_dir) / defaults.OTHER_LAB
    return [folder] if folder.is_dir() else []


def shiftbench_figure(table: pd.DataFrame, title: str = ""):
    """Accuracy and flag rate against severity, one line per shift."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    clean = table[table["shift"] == "none"].iloc[0]
    for name, group in synthetic_rows(table).groupby("shift", sort=False):
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
