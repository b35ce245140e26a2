"""The images a run learned from or was scored on, on record as MLflow datasets (``mlflow.log_input``): the MLflow UI
then shows, for each run and each registered version, which images and which split it used."""

from __future__ import annotations

import hashlib
import os
import re
import time
import warnings
from pathlib import Path
from typing import Sequence

import mlflow
import pandas as pd

from wbc.classes import CLASS_NAMES

DIGEST_LENGTH = 16
"""Hex characters of the content digest MLflow shows beside the dataset's name."""

LOG_INPUT_ATTEMPTS = 4
"""Tries at recording a dataset when another run recorded the same one at the same moment (see :func:`log_input`)."""

_UNIQUE_VIOLATION = re.compile(r"unique constraint|duplicate key|duplicate entry|primary key constraint", re.IGNORECASE)
"""How PostgreSQL, SQLite, MySQL and SQL Server word a broken unique key."""


def content_digest(paths: Sequence[str | os.PathLike], root: str | os.PathLike) -> str:
    """SHA-256 over every file's name relative to ``root`` and its bytes, in the order given: any changed, added,
    removed or renamed file changes it; copying the folder elsewhere does not. First :data:`DIGEST_LENGTH` hex digits."""
    return _digest(paths, _relative_names(paths, root))


def _relative_names(paths: Sequence[str | os.PathLike], root: str | os.PathLike) -> list[str]:
    """Each path relative to ``root`` (as given when it lies outside)."""
    root = Path(root).resolve()
    names = []
    for path in paths:
        resolved = Path(path).resolve()
        names.append(str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path))
    return names


def _digest(paths: Sequence[str | os.PathLike], names: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for path, name in zip(paths, names):
        digest.update(os.fsencode(name) + b"\0")
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:DIGEST_LENGTH]


def log_image_dataset(paths: Sequence[str | os.PathLike], targets: Sequence[int], root: str | os.PathLike, name: str,
                      context: str) -> None:
    """Record images ``paths`` with class indices ``targets`` (-1: unlabelled) under ``root`` as the active run's
    input ``name`` (for example ``barcelona/train``) with ``context`` (``train``, ``valid``, ``test``, ``evaluation``,
    ``adaptation``): one row per file (its path relative to ``root`` and its class), the folder as source, and
    :func:`content_digest` as digest."""
    names = _relative_names(paths, root)
    table = pd.DataFrame({"file": names, "class": [CLASS_NAMES[t] if t >= 0 else "" for t in targets]})
    with warnings.catch_warnings():  # MLflow 3.17 registers its local-path source class twice and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_pandas(table, source=str(Path(root).resolve()), name=name, digest=_digest(paths, names))
    log_input(dataset, context)


def log_input(dataset: mlflow.data.Dataset, context: str) -> None:
    """``mlflow.log_input``, tried again when the store refuses the dataset as a duplicate.

    MLflow's SQL store looks the dataset up by experiment, name and digest and inserts it when it finds none, in one
    transaction: two runs that record the same new dataset at the same moment (two trainings started together on a
    team server, on PostgreSQL) both find none, and the later insert breaks the unique key. The dataset is then in
    the store, so the next try links to it. Up to :data:`LOG_INPUT_ATTEMPTS` tries, 0.2 s, 0.4 s, ... apart.

    Raises:
        mlflow.exceptions.MlflowException: any other refusal, or the last one.
    """
    for attempt in range(1, LOG_INPUT_ATTEMPTS + 1):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except mlflow.exceptions.MlflowException as error:
            if attempt == LOG_INPUT_ATTEMPTS or not _UNIQUE_VIOLATION.search(str(error)):
                raise
            time.sleep(0.2 * attempt)
