"""Every kind of bad or unusual image file, through `wbc predict`: handled, or a clear per-file error.

The same decoding serves the datasets and the HTTP model (tests/test_mlflow_project.py sends
these over HTTP too).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from wbc.cli import cli
from wbc.data.images import MAX_IMAGE_BYTES
from wbc.inference import export_model
from wbc.models import build_model


def _cell(mode="RGB", size=(60, 60)):
    pixels = np.full((*size, 3), 220, dtype=np.uint8)
    pixels[20:40, 20:40] = (120, 40, 160)
    return Image.fromarray(pixels).convert(mode)


def _encoded(image, fmt, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _bomb() -> bytes:
    return _encoded(Image.new("1", (6000, 6000)), "PNG")


JPEG = _encoded(_cell(), "JPEG")
# name -> (file bytes, None if it must be predicted, else the words its error must contain)
CASES = {
    "zero-byte.jpg": (b"", "empty file"),
    "truncated.jpg": (JPEG[: len(JPEG) // 2], "truncated"),
    "text-named.jpg": (b"Patient notes, not a picture\n", "not an image"),
    "alpha.png": (_encoded(_cell("RGBA"), "PNG"), None),
    "sixteen-bit.png": (_encoded(Image.fromarray((np.asarray(_cell("L"), dtype=np.uint16) * 257)), "PNG"), None),
    "palette.png": (_encoded(_cell("P"), "PNG"), None),
    "cmyk.jpg": (_encoded(_cell("CMYK"), "JPEG"), None),
    "grayscale.jpg": (_encoded(_cell("L"), "JPEG"), None),
    "one-pixel.png": (_encoded(_cell(size=(1, 1)), "PNG"), None),
    "bomb.png": (_bomb(), "pixel limit"),
    "oversized.jpg": (b"\xff\xd8" + b"\0" * (MAX_IMAGE_BYTES + 1), "byte limit"),
    "plain.jpg": (JPEG, None),
}


@pytest.fixture
def model_dir(tmp_path):
    return export_model(build_model("scratch"), 32, tmp_path / "model")


def test_every_input_kind_through_wbc_predict(model_dir, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name, (content, _) in CASES.items():
        (folder / name).write_bytes(content)
    odd_name = os.fsdecode(b"cell-\xff\xfe-latin1-\xe9.jpg")  # not UTF-8
    (folder / odd_name).write_bytes(JPEG)

    result = CliRunner().invoke(cli, ["predict", str(folder), "--model", str(model_dir), "--output", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "out.csv", keep_default_na=False, encoding="utf-8")
    assert len(table) == len(CASES) + 1
    rows = {os.path.basename(f): row for f, row in zip(table["file"], table.to_dict("records"))}
    for name, (_, expected_error) in CASES.items():
        row = rows[name]
        if expected_error is None:
            assert row["error"] == "" and row["label"], (name, row["error"])
        else:
            assert expected_error in row["error"] and name in row["error"] and row["label"] == "", (name, row["error"])
    (odd_row,) = [row for f, row in rows.items() if f.startswith("cell-")]
    assert odd_row["error"] == "" and odd_row["label"]


def test_missing_input_path_is_a_one_line_error(model_dir, tmp_path):
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "nowhere"), "--model", str(model_dir)])
    assert result.exit_code == 1 and "nowhere: no such file or folder" in result.output
