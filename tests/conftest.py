"""Shared fixtures: tiny synthetic PBC-like data sets and an isolated MLflow store per test session."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from wbc.classes import CLASS_NAMES

os.environ.setdefault("WBC_NO_MALLOC_TUNING", "1")

# One distinct colour per class, so that a tiny model can learn the task in an epoch or two.
CLASS_COLOURS = {
    name: tuple(int(v) for v in colour)
    for name, colour in zip(
        CLASS_NAMES,
        [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (200, 40, 200), (40, 200, 200), (120, 120, 120), (240, 240, 240)],
    )
}


def cell_image(class_name: str, seed: int, size: int = 40) -> Image.Image:
    """A light background with a noisy disc in the class colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    radius = size * rng.uniform(0.25, 0.35)
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2
    pixels = np.full((size, size, 3), 230, dtype=np.float64)
    pixels[disc] = CLASS_COLOURS[class_name]
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_dataset(root: Path, per_class: dict[str, int] | None = None, splits=("train", "valid")) -> Path:
    """Write ``root/barcelona/<split>/<class>/*.jpg``; return ``root``."""
    counts = {"train": 12, "valid": 4, "test": 4}
    for split in splits:
        for class_index, name in enumerate(CLASS_NAMES):
            folder = root / "barcelona" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range((per_class or {}).get(split, counts[split])):
                seed = ("train", "valid", "test").index(split) * 100_000 + class_index * 1_000 + index
                cell_image(name, seed).save(folder / f"{name[:2]}_{index}.jpg", quality=92)
    return root


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A read-only-by-convention tiny data set: 12 train and 4 valid images per class."""
    return make_dataset(tmp_path_factory.mktemp("data"), splits=("train", "valid", "test"))


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch):
    """Each test gets its own working directory, decoded-image cache and MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WBC_CACHE_DIR", str(tmp_path / "cache"))
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    mlflow.set_tracking_uri(tracking_uri)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()
