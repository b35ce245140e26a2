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
class FlagSummary:
    """How the model's flags fell on a labelled set: shares of cells flagged, and the error rate on each side."""

    out_of_distribution: float
    """Share of cells flagged as unfamiliar to the model (out of distribution)."""
    review: float
    """Share of cells whose calibrated confidence is below the review threshold."""
    error_flagged: float | None
    """Error rate among the cells flagged out-of-distribution (None: none flagged)."""
    error_unflagged: float | None
    """Error rate among the cells not flagged (None: all flagged). Honest flags keep this low and the other high."""
    accepted: float
    """Share of cells with neither flag: the answers a lab can take as they are."""
    error_accepted: float | None
    """Error rate among the accepted cells (None: none accepted)."""

    @classmethod
    def from_flags(cls, correct: np.ndarray, in_distribution: np.ndarray, review: np.ndarray) -> "FlagSummary":
        flagged = ~in_distribution
        accepted = in_distribution & ~review
        return cls(
            out_of_distribution=float(flagged.mean()),
            review=float(review.mean()),
            error_flagged=float((~correct[flagged]).mean()) if flagged.any() else None,
            error_unflagged=float((~correct[~flagged]).mean()) if (~flagged).any() else None,
            accepted=float(accepted.mean()),
            error_accepted=float((~correct[accepted]).mean()) if accepted.any() else None,
        )


@dataclass
class Evaluation:
    accuracy: float
    macro_f1: float
    report: dict
    confusion: np.ndarray
    present_classes: list[int] | None = None
    """The classes the labelled set holds (when scored from probabilities)."""
    present_accuracy: float | None = None
    """Accuracy when the model may only answer one of :attr:`present_classes` (a lab without, say, platelets)."""
    present_macro_f1: float | None = None
    flags: FlagSummary | None = None

    @classmethod
    def from_predictions(cls, targets: np.ndarray, predicted: np.ndarray) -> "Evaluation":
        """From true and predicted class indices (int (N,)). The macro-F1 averages over the classes the set holds or
        the model answered (scikit-learn's default labels): a class neither held nor answered has no F1 to count,
        so a lab's folder of five classes is not capped at 5/8; a class answered but not held counts, at 0."""
        labels = list(range(len(CLASS_NAMES)))
        scored = sorted(set(np.asarray(targets).tolist()) | set(np.asarray(predicted).tolist()))
        return cls(
            accuracy=float(accuracy_score(targets, predicted)),
            macro_f1=float(f1_score(targets, predicted, labels=scored, average="macro", zero_division=0)),
            report=classification_report(
                targets, predicted, labels=labels, target_names=list(CLASS_NAMES), output_dict=True, zero_division=0
            ),
            confusion=confusion_matrix(targets, predicted, labels=labels),
        )

    @classmethod
    def from_scores(cls, targets: np.ndarray, probabilities: np.ndarray, in_distribution: np.ndarray | None = None,
                    review: np.ndarray | None = None) -> "Evaluation":
        """From (N, 8) class probabilities: the eight-class scores, the scores restricted to the classes ``targets``
        holds (the argmax over those classes only), and with the flags (bool (N,), as
        :meth:`~wbc.inference.Predictor.flags` gives them; not summed where one is unknown) how they fell."""
        targets = np.asarray(targets)
        evaluation = cls.from_predictions(targets, probabilities.argmax(axis=1))
        present = sorted(set(targets.tolist()))
        restricted = np.asarray(present)[probabilities[:, present].argmax(axis=1)]
        evaluation.present_classes = present
        evaluation.present_accuracy = float(accuracy_score(targets, restricted))
        evaluation.present_macro_f1 = float(f1_score(targets, restricted, labels=present, average="macro", zero_division=0))
        if in_distribution is not None and review is not None and None not in list(in_distribution) + list(review):
            correct = probabilities.argmax(axis=1) == targets  # what the lab is answered: one of the eight
            evaluation.flags = FlagSummary.from_flags(correct, np.asarray(in_distribution, bool), np.asarray(review, bool))
        return evaluation

    def metrics(self, prefix: str) -> dict[str, float]:
        """What a run logs: ``<prefix>_acc`` and ``_f1`` over the eight classes; ``_acc_present`` and ``_f1_present``
        over the classes present; ``_flagged``, ``_review``, ``_error_flagged``, ``_error_unflagged``, ``_accepted``,
        ``_error_accepted`` from the flags."""
        values = {"acc": self.accuracy, "f1": self.macro_f1, "acc_present": self.present_accuracy,
                  "f1_present": self.present_macro_f1}
        if self.flags is not None:
            values |= {"flagged": self.flags.out_of_distribution, "review": self.flags.review,
                       "error_flagged": self.flags.error_flagged, "error_unflagged": self.flags.error_unflagged,
                       "accepted": self.flags.accepted, "error_accepted": self.flags.error_accepted}
        return {f"{prefix}_{name}": value for name, value in values.items() if value is not None}

    def per_class_table(self) -> pd.DataFrame:
        rows = [
            {"class": name, **{k: self.report[name][k] for k in ("precision", "recall", "f1-score")},
             "support": int(self.report[name]["support"])}
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
        lines = [f"accuracy {self.accuracy:.4f}  macro-F1 {self.macro_f1:.4f}"]
        if self.present_classes is not None and len(self.present_classes) < len(CLASS_NAMES):
            names = ", ".join(CLASS_NAMES[index] for index in self.present_classes)
            lines.append(f"among the classes present ({names}): accuracy {self.present_accuracy:.4f}  "
                         f"macro-F1 {self.present_macro_f1:.4f}")
        if self.flags is not None:
            lines.append(self.flags_summary())
        return "\n".join(lines + [table])

    def flags_summary(self) -> str:
        """How the flags fell, one line: shares flagged, to review and accepted, with the error rate among each."""
        flags = self.flags
        return (f"flagged out-of-distribution {100 * flags.out_of_distribution:.1f} % (error among them "
                f"{_percent(flags.error_flagged)}, among the rest {_percent(flags.error_unflagged)}); "
                f"to review {100 * flags.review:.1f} %; accepted with neither flag {100 * flags.accepted:.1f} % "
                f"(error among them {_percent(flags.error_accepted)})")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"
