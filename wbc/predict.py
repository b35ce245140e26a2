"""``wbc predict``: classify image files and count cells per class (the differential count)."""

from __future__ import annotations

import os

import pandas as pd

from wbc.classes import CLASS_NAMES
from wbc.inference import Predictor, iter_image_files
from wbc.serving import predictions_frame


def predict_files(paths, model: str, batch_size: int = 64, tta: bool = False, runtime: str = "auto") -> pd.DataFrame:
    """One row per file: ``file`` and :data:`wbc.serving.OUTPUT_COLUMNS`."""
    predictor = Predictor.load(model, batch_size=batch_size, tta=tta, runtime=runtime)
    files = iter_image_files(paths)
    frames = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        names = [display_path(path) for path in chunk]
        predictions = predictor.predict_sources(chunk, names)
        frames.append(predictions_frame(predictions).assign(file=names))
    table = pd.concat(frames, ignore_index=True) if frames else predictions_frame([])
    if "file" not in table:
        table["file"] = []
    return table[["file", *[c for c in table.columns if c != "file"]]]


def display_path(path) -> str:
    """The path as valid UTF-8 text: bytes that are not UTF-8 (a Latin-1 file name) appear as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def out_of_distribution(table: pd.DataFrame) -> pd.DataFrame:
    """Rows the model flagged as unlike its training data (left out of the differential count)."""
    return table[(table["error"] == "") & (table["in_distribution"] == False)]  # noqa: E712 - None means "not flagged"


def counted_cells(table: pd.DataFrame) -> pd.DataFrame:
    """Rows that enter the differential count: classified, and not flagged as unlike the training data."""
    return table[(table["error"] == "") & (table["in_distribution"] != False)]  # noqa: E712 - None means "not flagged"


def differential_count(table: pd.DataFrame) -> pd.DataFrame:
    """Cells and percent per class among :func:`counted_cells`."""
    labels = counted_cells(table)["label"]
    counts = labels.value_counts().reindex(CLASS_NAMES, fill_value=0)
    total = int(counts.sum())
    percent = (100.0 * counts / total).round(1) if total else counts * 0.0
    return pd.DataFrame({"class": CLASS_NAMES, "cells": counts.to_numpy(), "percent": percent.to_numpy()})
