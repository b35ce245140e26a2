"""Classifying the cells of a smear field: each white cell that :func:`wbc.finding.find_cells` finds is cut from the
field, framed as PBC frames its cells, and scored by the unchanged :class:`~wbc.inference.Predictor` (calibration,
flags, ``tta`` and ONNX as for any image). Platelets are found, not classified."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wbc.finding import MAX_CELLS, FoundCell, find_cells
from wbc.inference.predictor import Prediction, Predictor

CELL_SHARE = 0.37
"""The share of a PBC image's shorter side that its centre cell's box spans, as the finder boxes it: the median over
every 16th PBC train image (0.371; 10-90 %: 0.18-0.47), ``python benchmarks/field_finder.py --share``. A cell found
on a field is cut so that its box spans the same share of the crop."""


@dataclass(frozen=True)
class FieldCell:
    """A cell found on a field and, for a white cell, its :class:`Prediction` (None for a platelet)."""

    found: FoundCell
    prediction: Prediction | None


@dataclass(frozen=True)
class ClassifiedField:
    """The cells of one field, white cells first; ``capped`` is True when more than the cap were found (the
    highest-scoring are kept)."""

    cells: list[FieldCell]
    capped: bool

    @property
    def white_cells(self) -> int:
        return sum(cell.found.kind == "white" for cell in self.cells)


def frame_cell(field: np.ndarray, box: tuple[float, float, float, float], size: int, share: float = CELL_SHARE) -> np.ndarray:
    """The square crop of ``field`` (uint8, H x W x 3) centred on ``box`` (x0, y0, x1, y1 in field pixels) whose side
    is the box's longer side over ``share``, resized to ``size`` x ``size`` (uint8, bilinear, PIL). Where the square
    leaves the field (a cell at the border) it is filled with the field's median colour, its background."""
    from PIL import Image

    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0, 1.0) / share
    left, top = (x0 + x1 - side) / 2, (y0 + y1 - side) / 2
    height, width = field.shape[:2]
    pad = int(np.ceil(max(0.0, -left, -top, left + side - width, top + side - height))) + 1
    if pad > 1:
        fill = np.median(field[:: max(1, height // 64), :: max(1, width // 64)].reshape(-1, 3), axis=0).astype(np.uint8)
        padded = np.empty((height + 2 * pad, width + 2 * pad, 3), np.uint8)
        padded[:] = fill
        padded[pad : pad + height, pad : pad + width] = field
        field, left, top = padded, left + pad, top + pad
    crop = Image.fromarray(field).resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
    return np.asarray(crop, dtype=np.uint8)


def classify_field(predictor: Predictor, field: np.ndarray, name: str, *, max_cells: int = MAX_CELLS,
                   keep_pixels: bool = False) -> ClassifiedField:
    """Find the cells on ``field`` (uint8, H x W x 3), frame each white cell (:func:`frame_cell`) and classify it.
    Predictions are named ``<name>#<index>``, the index counting the field's cells from 1."""
    found = find_cells(field, max_cells=max_cells + 1)
    capped = len(found) > max_cells
    found = found[:max_cells]
    whites = [index for index, cell in enumerate(found) if cell.kind == "white"]
    crops = [frame_cell(field, found[index].box, predictor.image_size) for index in whites]
    scored = predictor.predict_arrays(np.stack(crops), [f"{name}#{index + 1}" for index in whites], keep_pixels) if crops else []
    predictions = dict(zip(whites, scored))
    return ClassifiedField([FieldCell(cell, predictions.get(index)) for index, cell in enumerate(found)], capped)
