"""Soft targets from teacher models, for knowledge distillation (Hinton et al. 2015; the loss: :mod:`wbc.training.losses`).

``wbc train --teacher MODEL [--teacher MODEL ...]`` scores every training image once with each teacher
(one clean view) and keeps the mean of their probabilities, softened by a temperature. The training loss
then mixes the labels' cross-entropy with the divergence from these probabilities, so one served model
can learn what an ensemble knows.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import torch

from wbc.data.splits import DecodedImageDataset, load_split
from wbc.errors import WBCError

if TYPE_CHECKING:
    from wbc.inference import Predictor


class TeacherError(WBCError, ValueError):
    """A teacher cannot be used; the message starts with the teacher's name."""


def canonical_teachers(teachers: Sequence[str]) -> tuple[str, ...]:
    """The teachers as a run logs them: local paths made absolute (so a resumed run finds them from anywhere),
    model URIs as given; a teacher named twice is an error (it would silently count once)."""
    canonical = tuple(teacher if ":/" in teacher else str(Path(teacher).resolve()) for teacher in teachers)
    for index, teacher in enumerate(canonical):
        if teacher in canonical[:index]:
            raise TeacherError(f"{teachers[index]}: given twice; name each teacher once")
    return canonical


def load_teachers(teachers: Sequence[str]) -> dict[str, Predictor]:
    """Each teacher's predictor (uncalibrated: the temperature here is the distillation's), by name."""
    from mlflow.exceptions import MlflowException

    from wbc.inference import Predictor

    predictors = {}
    for teacher in teachers:
        try:
            predictors[teacher] = Predictor.load(teacher)
        except (MlflowException, ValueError) as error:
            raise TeacherError(f"{teacher}: {getattr(error, 'message', error)}") from None
        predictors[teacher].calibration = None
    return predictors


def teacher_probabilities(
    teachers: dict[str, Predictor],
    train: DecodedImageDataset,
    temperature: float,
    *,
    data_dir: str,
    limit_per_class: int = 0,
    cache_dir=None,
    skip_bad_images: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """(N, classes) float32: the teachers' mean softmax(logits / temperature) on each image of ``train``.

    A teacher trained at another input size scores the same images decoded at its own size.
    """
    total = None
    for teacher, predictor in teachers.items():
        started = time.perf_counter()
        pixels = train.pixels
        if predictor.image_size != train.pixels.shape[-1]:
            resized = load_split(data_dir, "train", predictor.image_size, limit_per_class=limit_per_class,
                                 cache_dir=cache_dir, skip_bad_images=skip_bad_images)
            if resized.paths != train.paths:
                differing = sorted(set(resized.paths) ^ set(train.paths))
                raise TeacherError(f"{teacher}: {differing[0] if differing else 'a training image'} is readable at one of "
                                   f"{predictor.image_size} and {train.pixels.shape[-1]} px only; fix or remove that image")
            pixels = resized.pixels
        logits = torch.from_numpy(predictor.logits_pixels(pixels))
        probabilities = torch.softmax(logits / temperature, dim=1).numpy()
        total = probabilities if total is None else total + probabilities
        if progress:
            accuracy = float((logits.argmax(1).numpy() == train.targets).mean())
            print(f"teacher {teacher}: {len(train)} training images scored in {time.perf_counter() - started:.0f} s "
                  f"({predictor.runtime}), training accuracy {accuracy:.4f}", file=sys.stderr, flush=True)
    return (total / len(teachers)).astype(np.float32)
