"""The calibration record a model carries (``model.json``, key ``calibration``) and the score it reads.

The numbers are fitted on the validation split (or, by ``wbc adapt``, on a lab's cells) by
:mod:`wbc.evaluation.calibration` (temperature scaling, Guo et al. 2017; review threshold; energy out-of-distribution
threshold, Liu et al. 2020); here they are only applied, with NumPy alone, so the served model needs nothing else
(no PyTorch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Calibration:
    temperature: float
    review_threshold: float
    target_error: float
    ood_threshold: float
    flag_rate: float
    ood_method: str = "energy"
    fitted_on: str = "PBC valid"
    """Where the numbers were fitted: the training data's validation split, or a lab's cells (``wbc adapt``)."""
    # measured on the split it was fitted on, for the record
    ece_before: float | None = None
    ece_after: float | None = None
    accepted_fraction: float | None = None
    accepted_error: float | None = None
    tta: "Calibration | None" = None
    """The same numbers fitted on the mean logits of each image's 8 flips/rotations, what a :class:`Predictor` with
    ``tta`` scores (None where they were not fitted: the flags are then unknown with ``tta``)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Calibration":
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        if known.get("tta") is not None:
            known["tta"] = cls.from_dict(known["tta"])
        return cls(**known)

    def probabilities(self, logits) -> np.ndarray:
        """Temperature-scaled class probabilities, float32 (N, C), for logits (N, C) (an array or a tensor)."""
        return softmax(logits, self.temperature)

    def in_distribution_score(self, logits) -> np.ndarray:
        return in_distribution_score(logits, self.temperature)

    def in_distribution(self, scores):
        """Whether in-distribution scores pass the threshold (False: flag the image as unfamiliar to the model)."""
        return scores >= self.ood_threshold

    def needs_review(self, confidences):
        """Whether calibrated confidences fall below the review threshold."""
        return confidences < self.review_threshold


BLANK_STD = 4.0
"""Below this standard deviation of its pixels (grey levels, all channels), an image is a blank field, not a cell."""


def is_blank(pixels: np.ndarray) -> np.ndarray:
    """(N,) bool for uint8 images (N, 3, S, S): uniform or almost uniform fields (black, white, one colour), which
    every model flags as unfamiliar, whatever its calibration says."""
    flat = np.asarray(pixels, dtype=np.float32).reshape(len(pixels), -1)
    return flat.std(axis=1) < BLANK_STD


def probabilities_and_scores(logits, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`softmax` and :func:`in_distribution_score` of the same logits (N, C), float32 (N, C) and (N,),
    exponentiated once."""
    scaled = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    peak = scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled - peak)
    total = exponentials.sum(axis=1, keepdims=True)
    return exponentials / total, np.float32(temperature) * (peak + np.log(total))[:, 0]


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` per row: float32 (N, C) for logits (N, C), an array or a CPU tensor."""
    return probabilities_and_scores(logits, temperature)[0]


def in_distribution_score(logits, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy per row, float32 (N,) for logits (N, C): ``T * logsumexp(logits / T)``; higher = more like
    the training data (Liu et al. 2020)."""
    return probabilities_and_scores(logits, temperature)[1]
