"""The served model's output table and what a lab reads from it: one row per image, the differential count."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from wbc.classes import CLASS_NAMES
from wbc.inference import Prediction

PROBABILITY_COLUMNS = [f"prob_{name}" for name in CLASS_NAMES]
FLAG_COLUMNS = ["in_distribution_score", "in_distribution", "review"]
OUTPUT_COLUMNS = ["label", "confidence", *PROBABILITY_COLUMNS, *FLAG_COLUMNS, "error"]


def predictions_frame(predictions: list[Prediction], index=None) -> pd.DataFrame:
    """One row per prediction with :data:`OUTPUT_COLUMNS` (used by the served model and ``wbc predict``); a row that
    could not be scored has an empty label, no numbers and the reason in ``error``."""
    rows = []
    for prediction in predictions:
        probabilities = prediction.probabilities if prediction.probabilities is not None else [np.nan] * len(CLASS_NAMES)
        rows.append(
            [
                prediction.label or "",
                prediction.confidence,
                *map(float, probabilities),
                prediction.in_distribution_score,
                prediction.in_distribution,
                prediction.review,
                prediction.error or "",
            ]
        )
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS, index=index)


def display_path(path) -> str:
    """The path as valid UTF-8 text: bytes that are not UTF-8 (a Latin-1 file name) appear as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def out_of_distribution(table: pd.DataFrame) -> pd.DataFrame:
    """Rows the model flagged as unfamiliar (left out of the differential count)."""
    return table[(table["error"] == "") & (table["in_distribution"] == False)]  # noqa: E712 - None means "not flagged"


def counted_cells(table: pd.DataFrame) -> pd.DataFrame:
    """Rows that enter the differential count: classified, and not flagged as unfamiliar to the model."""
    return table[(table["error"] == "") & (table["in_distribution"] != False)]  # noqa: E712 - None means "not flagged"


def differential_count(table: pd.DataFrame) -> pd.DataFrame:
    """Cells and percent per class among :func:`counted_cells`."""
    labels = counted_cells(table)["label"]
    counts = labels.value_counts().reindex(CLASS_NAMES, fill_value=0)
    total = int(counts.sum())
    percent = (100.0 * counts / total).round(1) if total else counts * 0.0
    return pd.DataFrame({"class": CLASS_NAMES, "cells": counts.to_numpy(), "percent": percent.to_numpy()})
