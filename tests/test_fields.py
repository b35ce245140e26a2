"""`wbc predict --fields` on drawn smear fields: one row per cell found, an annotated PNG per field, the
differential per 100 white cells; a field with no white cell (no rows, a line), an unreadable one (a row naming
it) and the cap on cells found (a warning)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from test_cli import invoke, model_run  # noqa: F401 - the tiny trained model, a fixture
from test_finding import draw_field, iou
from wbc.inference.fields import CELL_SHARE, frame_cell


def test_frame_cell_centres_the_box_at_the_pbc_share_and_fills_past_the_border():
    field = np.zeros((100, 200, 3), np.uint8)
    field[40:60, 90:110] = 255
    crop = frame_cell(field, (90, 40, 110, 60), 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    lit = np.argwhere(crop[..., 0] > 127)
    assert abs(lit[:, 0].mean() - 31.5) < 1 and abs(lit[:, 1].mean() - 31.5) < 1
    assert (lit[:, 1].max() - lit[:, 1].min() + 1) / 64 == pytest.approx(CELL_SHARE, abs=0.05)
    corner = frame_cell(field, (0, 0, 20, 20), 64)
    assert (corner[:5, :5] == 0).all()  # outside the field: the field's median colour (black here)


def test_predict_fields_writes_a_row_per_cell_an_annotated_field_and_the_differential(model_run, tmp_path):
    folder = tmp_path / "fields"
    folder.mkdir()
    two, truths = draw_field(whites=((200, 200), (470, 300)), platelets=((80, 420),))
    Image.fromarray(two).save(folder / "two.png")
    Image.fromarray(np.full((480, 640, 3), 228, np.uint8)).save(folder / "blank.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    export_dir = model_run.best_checkpoint.rsplit("/checkpoints/", 1)[0] + "/model"
    result = invoke("predict", "--fields", folder, "--model", export_dir, "--output", tmp_path / "cells.csv")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "cells.csv", keep_default_na=False)
    whites = table[(table["file"].str.endswith("two.png")) & (table["kind"] == "white")]
    assert len(whites) == 2
    boxes = whites[["x0", "y0", "x1", "y1"]].astype(float).to_numpy().tolist()
    assert all(max(iou(box, truth) for box in boxes) >= 0.5 for truth in truths)
    assert set(whites["label"]) <= {"basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
                                    "neutrophil", "platelet"} and (whites["label"] != "").all()
    assert whites[[c for c in table.columns if c.startswith("prob_")]].astype(float).sum(axis=1).to_numpy() == pytest.approx(1, abs=1e-4)
    platelets = table[table["kind"] == "platelet"]
    assert (platelets["label"] == "").all()
    assert table.loc[table["file"].str.endswith("broken.jpg"), "error"].str.contains("broken.jpg").all()
    counts = pd.read_csv(tmp_path / "cells_differential.csv")
    overall = counts[counts["file"] == "all"].iloc[0]
    every_white = table.loc[(table["kind"] == "white") & (table["in_distribution"].astype(str) != "False"), "label"]
    white_labels = every_white[~every_white.isin(["erythroblast", "platelet"])]
    assert overall["white_cells"] == len(white_labels)
    if len(white_labels):
        assert overall[["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig"]].sum() == pytest.approx(100, abs=0.2)
    assert "per 100 white cells" in result.output and "blank.png: no white cell found" in result.output
    assert not table["file"].str.endswith("blank.png").any()
    picture = Image.open(tmp_path / "cells_annotated" / "two.png")
    assert picture.size == (640, 480)
    drawn = np.asarray(picture.convert("RGB")).astype(int)
    assert (np.abs(drawn - two.astype(int)).sum(axis=-1) > 60).sum() > 500  # boxes and labels drawn over the field


def test_a_field_is_capped_with_a_warning_and_options_need_fields(model_run, tmp_path):
    field, _ = draw_field(whites=((200, 200), (470, 300)))
    Image.fromarray(field).save(tmp_path / "field.png")
    export_dir = model_run.best_checkpoint.rsplit("/checkpoints/", 1)[0] + "/model"
    result = invoke("predict", "--fields", "--max-cells", "1", tmp_path / "field.png", "--model", export_dir,
                    "--output", tmp_path / "cells.csv")
    assert result.exit_code == 0, result.output
    assert "more than 1 cells found" in result.output
    assert len(pd.read_csv(tmp_path / "cells.csv")) == 1
    refused = invoke("predict", "--max-cells", "1", tmp_path / "field.png", "--model", export_dir)
    assert refused.exit_code != 0 and "go with --fields" in refused.output
