"""``wbc predict --fields``: the cells of smear fields, one row per cell found, an annotated picture per field and the
differential as labs report it (per 100 white cells)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from wbc import defaults
from wbc._progress import progress_bar
from wbc.classes import CLASS_NAMES
from wbc.data.images import FIELD_MAX_PIXELS, ImageDecodeError, decode_image_array, split_pages
from wbc.finding import MAX_CELLS
from wbc.inference import Predictor
from wbc.inference.fields import ClassifiedField, classify_field
from wbc.serving.predict import InputNotFound, iter_image_files
from wbc.serving.tables import OUTPUT_COLUMNS, counted_cells, display_path, predictions_frame

FIELD_COLUMNS = ["file", "cell", "kind", "x0", "y0", "x1", "y1", "partial", "find_score", *OUTPUT_COLUMNS]
"""One row per cell found; a platelet row has no label (platelets are found, not classified), a field that could not
be read has one row with ``error`` and no cell."""
WHITE_CELL_CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig"]
"""The classes of a differential's 100 white cells; erythroblasts are reported per 100 white cells beside them, and
platelets counted apart."""


def field_rows(name: str, field: ClassifiedField) -> pd.DataFrame:
    """:data:`FIELD_COLUMNS` for one classified field."""
    if not field.cells:
        return pd.DataFrame(columns=FIELD_COLUMNS)
    found = pd.DataFrame([{"file": name, "cell": index, "kind": cell.found.kind,
                           **dict(zip(("x0", "y0", "x1", "y1"), (round(v, 1) for v in cell.found.box))),
                           "partial": cell.found.partial, "find_score": round(cell.found.score, 3)}
                          for index, cell in enumerate(field.cells, start=1)])
    scored = predictions_frame([cell.prediction for cell in field.cells if cell.prediction is not None])
    scored.index = [index for index, cell in enumerate(field.cells) if cell.prediction is not None]
    scored = scored.reindex(range(len(field.cells)))
    scored["label"] = scored["label"].fillna("")
    scored["error"] = scored["error"].fillna("")
    return pd.concat([found, scored], axis=1)[FIELD_COLUMNS]


def predict_field_files(paths, model: str, *, batch_size: int = defaults.SCORING_BATCH, tta: bool = False,
                        runtime: str = "auto", annotated_dir: Path | None = None, max_cells: int = MAX_CELLS,
                        say=print) -> pd.DataFrame:
    """:data:`FIELD_COLUMNS` for every field under ``paths`` (files, or folders of them; each page of a multi-page
    TIFF a field). With ``annotated_dir``, an annotated PNG per field (:func:`annotate_field`) is written there,
    named after the field's file. ``say`` gets one line per field with no white cell, or with more than
    ``max_cells`` cells found."""
    files = iter_image_files(paths)
    if not files:
        raise InputNotFound(f"{', '.join(map(str, paths))}: no files to classify")
    predictor = Predictor.load(model, batch_size=batch_size, tta=tta, runtime=runtime)
    if annotated_dir is not None:
        annotated_dir.mkdir(parents=True, exist_ok=True)
    frames = []
    for path in progress_bar(files, desc="fields", unit="field", disable=len(files) < 2):
        for name, source in split_pages(path, display_path(path)):
            try:
                pixels = decode_image_array(source, None, name=name, max_pixels=FIELD_MAX_PIXELS)
            except ImageDecodeError as error:
                frames.append(pd.DataFrame([{"file": name, "kind": "", "label": "", "error": str(error)}], columns=FIELD_COLUMNS))
                continue
            field = classify_field(predictor, pixels, name, max_cells=max_cells)
            if field.capped:
                say(f"{name}: more than {max_cells} cells found (a thick smear or a stained blob?): kept the "
                    f"{max_cells} with the highest scores")
            if not field.white_cells:
                say(f"{name}: no white cell found")
            frames.append(field_rows(name, field))
            if annotated_dir is not None:
                annotate_field(pixels, field).save(annotated_dir / f"{_safe_stem(name)}.png")
    return pd.concat(frames, ignore_index=True)


def _safe_stem(name: str) -> str:
    stem = Path(name.split("#")[0]).stem + (f"_page{name.split('#')[1]}" if "#" in name else "")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)


def differential(table: pd.DataFrame) -> pd.DataFrame:
    """The differential as a lab reports it, per file and ``all`` files: the white cells counted (found, classified
    as one of :data:`WHITE_CELL_CLASSES` and not flagged as unfamiliar), each class per 100 of them, erythroblasts
    per 100 white cells, and the platelets found (a platelet find, or a found cell classified as a platelet)."""
    rows = []
    for name, cells in [*table.groupby("file", sort=False), ("all", table)]:
        counted = counted_cells(cells[cells["kind"] == "white"])["label"].value_counts().reindex(CLASS_NAMES, fill_value=0)
        white = int(counted[WHITE_CELL_CLASSES].sum())
        per_hundred = {label: round(100 * int(counted[label]) / white, 1) if white else np.nan for label in WHITE_CELL_CLASSES}
        rows.append({"file": name, "white_cells": white, **per_hundred,
                     "erythroblasts_per_100_wbc": round(100 * int(counted["erythroblast"]) / white, 1) if white else np.nan,
                     "platelets": int((cells["kind"] == "platelet").sum() + counted["platelet"])})
    return pd.DataFrame(rows)


COLOURS = {"counted": (0, 160, 70), "flagged": (230, 110, 0), "platelet": (200, 170, 0)}


def annotate_field(pixels: np.ndarray, field: ClassifiedField):
    """The field (uint8, H x W x 3) as a PIL image with each cell's box and index: white cells with their label and
    confidence, green when counted, orange when flagged (to review, or unfamiliar to the model); platelets thin and
    yellow."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    scale = max(pixels.shape[:2]) / 640
    font = ImageFont.load_default(size=max(10, round(14 * scale)))
    for index, cell in enumerate(field.cells, start=1):
        prediction = cell.prediction
        if prediction is None:
            draw.rectangle(cell.found.box, outline=COLOURS["platelet"], width=max(1, round(scale)))
            continue
        flagged = prediction.review is True or prediction.in_distribution is False
        colour = COLOURS["flagged" if flagged else "counted"]
        draw.rectangle(cell.found.box, outline=colour, width=max(2, round(3 * scale)))
        text = f"{index} {prediction.label} {prediction.confidence:.2f}" + (" ?" if flagged else "")
        x, y = cell.found.box[0], max(0, cell.found.box[1] - font.size - 4 * scale)
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=colour)
        draw.text((x, y), text, fill=(255, 255, 255), font=font)
    return image
