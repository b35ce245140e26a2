"""Scores, per-class report and confusion matrix for a set of predictions, written as files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from wbc.classes import CLASS_NAMES

REPORT_FILES = ("confusion_matrix.csv", "confusion_matrix.png", "classification_report.json", "per_class.csv")


@dataclass
class Evaluation:
    accuracy: float
    macro_f1: float
    report: dict
    confusion: np.ndarray

    @classmethod
    def from_predictions(cls, targets: np.ndarray, predicted: np.ndarray) -> "Evaluation":
        labels = list(range(len(CLASS_NAMES)))
        return cls(
            accuracy=float(accuracy_score(targets, predicted)),
            macro_f1=float(f1_score(targets, predicted, labels=labels, average="macro", zero_division=0)),
            report=classification_report(
                targets, predicted, labels=labels, target_names=list(CLASS_NAMES), output_dict=True, zero_division=0
            ),
            confusion=confusion_matrix(targets, predicted, labels=labels),
        )

    def per_class_table(self) -> pd.DataFrame:
        rows = [
            {"class": name, **{k: self.report[name][k] for k in ("precision", "recall", "f1-score", "support")}}
            for name in CLASS_NAMES
        ]
        return pd.DataFrame(rows)

    def confusion_figure(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import seaborn as sns

        counts = self.confusion
        normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        figure, axes = plt.subplots(1, 2, figsize=(16, 6.5))
        for axis, values, title, fmt in (
            (axes[0], counts, "counts", "d"),
            (axes[1], normalised, "row-normalised (recall)", ".2f"),
        ):
            sns.heatmap(
                values, annot=True, fmt=fmt, cmap="Blues", xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
                cbar=False, ax=axis,
            )
            axis.set_xlabel("predicted")
            axis.set_ylabel("true")
            axis.set_title(f"Confusion matrix, {title}")
        figure.suptitle(f"accuracy {self.accuracy:.4f}   macro-F1 {self.macro_f1:.4f}")
        figure.tight_layout()
        return figure

    def write(self, directory: str | Path) -> list[Path]:
        """Write :data:`REPORT_FILES` into ``directory``; return their paths."""
        import matplotlib.pyplot as plt

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(self.confusion, index=CLASS_NAMES, columns=CLASS_NAMES).rename_axis("true \\ predicted").to_csv(
            directory / "confusion_matrix.csv"
        )
        figure = self.confusion_figure()
        figure.savefig(directory / "confusion_matrix.png", dpi=100)
        plt.close(figure)
        (directory / "classification_report.json").write_text(json.dumps(self.report, indent=2))
        self.per_class_table().to_csv(directory / "per_class.csv", index=False)
        return [directory / name for name in REPORT_FILES]

    def summary(self) -> str:
        table = self.per_class_table().to_string(index=False, float_format=lambda v: f"{v:.4f}")
        return f"accuracy {self.accuracy:.4f}  macro-F1 {self.macro_f1:.4f}\n{table}"
