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
MIN_CLASS_IMAGES = 10
"""Classes with fewer images than this are not tested: fewer give false warnings on folders whose classes share one
background (``benchmarks/other_lab_acquisition.py``'s simulation; benchmarks/RESULTS.md)."""
FOLDS = 5


@dataclass(frozen=True)
class PhotographedApart:
    """A class the background colour tells apart: its name, its image count and the cross-validated ROC AUC."""

    name: str
    image_count: int
    auc: float

    def __str__(self) -> str:
        return f"{self.name} ({self.image_count} images, ROC AUC {self.auc:.2f})"


@dataclass(frozen=True)
class AcquisitionCheck:
    """What :func:`check_acquisition` found: the classes photographed apart, in the order found (``pair``: the last two
    were the last two tested and differ from each other, neither one the odd one out) and the classes too small to test
    (name, image count)."""

    apart: tuple[PhotographedApart, ...]
    untested: tuple[tuple[str, int], ...]
    pair: bool = False

    @property
    def each_apart(self) -> tuple[PhotographedApart, ...]:
        """The classes told apart from all the others (before the pair, if any)."""
        return self.apart[:-2] if self.pair else self.apart

    def __str__(self) -> str:
        """The run's ``photographed_apart`` param: ``none``, or the classes; then any not tested."""
        found = "; ".join(map(str, self.apart)) if self.apart else "none"
        if self.pair:
            found += " (from each other)" if len(self.apart) == 2 else " (the last two from each other)"
        untested = ", ".join(f"{name} ({count} images)" for name, count in self.untested)
        return found + (f"; not tested: {untested}" if untested else "")

    def told(self) -> str:
        """What the background colour tells, in words (``""`` when nothing is apart): ``tells X from the other
        classes``, ``tells apart X and Y``, or both: ``tells X from the other classes, and Y and Z from each other``."""
        each = ", ".join(map(str, self.each_apart))
        couple = " and ".join(map(str, self.apart[-2:])) if self.pair else ""
        if each and couple:
            return f"tells {each} from the other classes, and {couple} from each other"
        return f"tells {each} from the other classes" if each else f"tells apart {couple}" if couple else ""

    def finding(self) -> str:
        """The finding in one clause, as ``wbc evaluate`` and ``wbc adapt`` warn of it: ``the background colour alone
        (ROC AUC 0.5 = chance) tells ...: those cells were likely photographed on other slides, days or cameras``."""
        return (f"the background colour alone (ROC AUC 0.5 = chance) {self.told()}: those cells were likely photographed "
                "on other slides, days or cameras")


def background_colours(pixels: np.ndarray) -> np.ndarray:
    """Each image's background colour: the :data:`BACKGROUND_PERCENTILE` th percentile of each channel.

    ``pixels``: uint8 (N, 3, H, W), as :func:`wbc.data.load_folder` decodes them. Returns float32 (N, 3) in [0, 1].
    ValueError for another dtype or layout (channels last, say)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels of dtype {pixels.dtype} and shape {pixels.shape}: expected uint8 (N, 3, H, W)")
    flat = pixels.reshape(len(pixels), 3, -1)
    return (np.percentile(flat, BACKGROUND_PERCENTILE, axis=2) / 255).astype(np.float32)


def background_aucs(colours: np.ndarray, targets: np.ndarray) -> dict[int, float]:
    """For each class of ``targets`` (int class indices (N,)), the cross-validated ROC AUC with which ``colours``
    (float (N, 3), :func:`background_colours`) tell it from the other classes (see the module; 5 stratified folds,
    shuffled with a fixed seed). 0.5 is chance, and without any signal cross-validated AUCs fall below it (0.1-0.5 on
    small synthetic folders). Needs at least :data:`FOLDS` images of the class and of the rest (ValueError)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    aucs = {}
    for target in np.unique(targets).tolist():
        member = targets == target
        folds = StratifiedKFold(FOLDS, shuffle=True, random_state=0)
        classifier = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))
        decision = cross_val_predict(classifier, colours, member, cv=folds, method="decision_function")
        aucs[target] = float(roc_auc_score(member, decision))
    return aucs


def check_acquisition(pixels: np.ndarray, targets: np.ndarray, *, min_class_images: int = MIN_CLASS_IMAGES) -> AcquisitionCheck:
    """The classes of a labelled folder photographed apart from the others (see the module). ``pixels``: uint8
    (N, 3, H, W); ``targets``: int (N,) indices into :data:`~wbc.classes.CLASS_NAMES`.

    Classes with fewer than ``min_class_images`` images are left out (listed as not tested; ValueError for a
    ``min_class_images`` under :data:`FOLDS`). Among the rest, the class whose background tells it from the others best
    is taken out when its AUC reaches :data:`CONFOUND_AUC`, and the others are tested again without it, until none
    does: one large class photographed apart would otherwise make every class look apart from a rest that is mostly
    that class. Two classes left that differ are reported together, as a pair. Deterministic."""
    if min_class_images < FOLDS:
        raise ValueError(f"min_class_images={min_class_images} is too few: the test needs at least {FOLDS} a class")
    colours = background_colours(pixels)
    classes, counts = np.unique(targets, return_counts=True)
    counts = dict(zip(classes.tolist(), counts.tolist()))
    untested = tuple((CLASS_NAMES[c], n) for c, n in counts.items() if n < min_class_images)
    pool = [c for c, n in counts.items() if n >= min_class_images]
    apart = []
    while len(pool) >= 2:
        kept = np.isin(targets, pool)
        aucs = background_aucs(colours[kept], targets[kept])
        worst = max(aucs, key=aucs.get)
        if aucs[worst] < CONFOUND_AUC:
            break
        if len(pool) == 2:
            apart += [PhotographedApart(CLASS_NAMES[c], counts[c], aucs[c]) for c in pool]
            return AcquisitionCheck(tuple(apart), untested, pair=True)
        apart.append(PhotographedApart(CLASS_NAMES[worst], counts[worst], aucs[worst]))
        pool.remove(worst)
    return AcquisitionCheck(tuple(apart), untested)
