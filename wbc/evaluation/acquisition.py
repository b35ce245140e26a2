"""Classes of a labelled folder that were photographed apart from the others.

In one smear series, under one camera and one light, the background of a blood-cell image (plasma and red cells, the
brightest pixels) has the same colour whatever the white cell is: on PBC ``valid`` the class cannot be told from it
(cross-validated ROC AUC 0.46-0.58 for each class against the rest, at 160 px). When a lab's folder takes one class
from other slides or another microscope, that class can be told from the background alone (Raabin-WBC's basophils in
``../shared/data/other-lab``: AUC 1.00; its other classes 0.44-0.72). A model fine-tuned on such a folder can learn
the photograph instead of the cell, and its accuracy on that class says little about the cells. ``wbc adapt`` warns
of such classes.

The test: a logistic regression (scikit-learn) on each image's background colour, the 95th percentile of each RGB
channel, tells one class from the rest; its decision values out of 5 stratified folds give a ROC AUC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wbc.classes import CLASS_NAMES

BACKGROUND_PERCENTILE = 95
CONFOUND_AUC = 0.9
"""A class whose background tells it from the rest with at least this ROC AUC was photographed differently."""
MIN_CLASS_IMAGES = 5
"""Classes with fewer images than this (or whose rest has fewer) are not tested."""
FOLDS = 5


@dataclass(frozen=True)
class PhotographedApart:
    """A class the background colour tells apart: its name, its images and the cross-validated ROC AUC (0.5-1)."""

    name: str
    images: int
    auc: float

    def __str__(self) -> str:
        return f"{self.name} ({self.images} images, ROC AUC {self.auc:.2f})"


def background_colours(pixels: np.ndarray) -> np.ndarray:
    """Each image's background colour: the :data:`BACKGROUND_PERCENTILE` th percentile of each channel.

    ``pixels``: uint8 (N, 3, H, W), as :func:`wbc.data.load_folder` decodes them. Returns float32 (N, 3) in [0, 1]."""
    flat = pixels.reshape(len(pixels), 3, -1)
    return (np.percentile(flat, BACKGROUND_PERCENTILE, axis=2) / 255).astype(np.float32)


def background_aucs(pixels: np.ndarray, targets: np.ndarray, *, seed: int = 0) -> dict[int, tuple[int, float]]:
    """For each class of ``targets`` (int class indices (N,)) with at least :data:`MIN_CLASS_IMAGES` images, and as
    many in the rest: (its image count, the cross-validated ROC AUC with which ``pixels``' background colour tells it
    from the rest, 0-1; 0.5 is chance). See the module for the test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    colours = background_colours(pixels)
    classes, counts = np.unique(targets, return_counts=True)
    aucs = {}
    for target, count in zip(classes.tolist(), counts.tolist()):
        if min(count, len(targets) - count) < MIN_CLASS_IMAGES:
            continue
        member = targets == target
        folds = StratifiedKFold(min(FOLDS, count, len(targets) - count), shuffle=True, random_state=seed)
        classifier = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))
        decision = cross_val_predict(classifier, colours, member, cv=folds, method="decision_function")
        aucs[target] = (count, float(roc_auc_score(member, decision)))
    return aucs


def classes_photographed_apart(pixels: np.ndarray, targets: np.ndarray, *, seed: int = 0) -> list[PhotographedApart]:
    """The classes whose :func:`background_aucs` is at least :data:`CONFOUND_AUC` (see the module). Empty for fewer
    than two classes of :data:`MIN_CLASS_IMAGES` images."""
    return [PhotographedApart(CLASS_NAMES[target], count, auc)
            for target, (count, auc) in background_aucs(pixels, targets, seed=seed).items() if auc >= CONFOUND_AUC]
