"""``wbc predict``: classify image files and count cells per class (the differential count)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from wbc import defaults
from wbc.data.images import split_pages
from wbc.errors import WBCError
from wbc.inference import Predictor
from wbc.serving.tables import display_path, predictions_frame


class InputNotFound(WBCError, FileNotFoundError):
    """A file or folder given to score does not exist."""


def predict_files(paths, model: str, batch_size: int = defaults.SCORING_BATCH, tta: bool = False, runtime: str = "auto") -> pd.DataFrame:
    """One row per image: ``file`` (``<file>#<page>`` for each page of a multi-page TIFF or an animation) and
    :data:`wbc.serving.tables.OUTPUT_COLUMNS`."""
    files = iter_image_files(paths)  # a missing path fails before the model loads
    if not files:
        raise InputNotFound(f"{', '.join(map(str, paths))}: no files to classify")
    predictor = Predictor.load(model, batch_size=batch_size, tta=tta, runtime=runtime)
    frames = []
    for start in range(0, len(files), batch_size):
        # each page of a TIFF stack a cell, split a chunk at a time so that only one chunk's pages are in memory
        chunk = [cell for path in files[start : start + batch_size] for cell in split_pages(path, display_path(path))]
        names = [name for name, _ in chunk]
        predictions = predictor.predict_sources([source for _, source in chunk], names)
        frames.append(predictions_frame(predictions).assign(file=names))
    table = pd.concat(frames, ignore_index=True) if frames else predictions_frame([])
    if "file" not in table:
        table["file"] = []
    return table[["file", *[c for c in table.columns if c != "file"]]]


def iter_image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named directly, plus every file under named folders (sorted); missing paths raise."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.exists():
            files.append(path)
        else:
            raise InputNotFound(f"{path}: no such file or folder")
    return files
