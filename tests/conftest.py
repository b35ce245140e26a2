"""Shared fixtures: tiny synthetic PBC-like data sets and an isolated MLflow store per test session."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist's workers share the cores: one compute thread each, also in the processes they start
    # (set before torch loads; more threads per worker oversubscribe the cores and slow the suite down)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import contextlib
import importlib.util
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
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


def script_module(path: Path):
    """The module of a script outside any package (``docs/generate_tables.py``, ``.ci/lockfile.py``), loaded by path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A read-only-by-convention tiny data set: 12 train and 4 valid images per class."""
    return make_dataset(tmp_path_factory.mktemp("data"), splits=("train", "valid", "test"))


@contextlib.contextmanager
def isolated(workdir: Path):
    """Run in ``workdir`` with its own decoded-image cache and SQLite MLflow store."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setenv("WBC_CACHE_DIR", str(workdir / "cache"))
        tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
        patch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        patch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        mlflow.set_tracking_uri(tracking_uri)
        try:
            yield workdir
        finally:
            while mlflow.active_run():
                mlflow.end_run()


@pytest.fixture(autouse=True)
def isolated_state(tmp_path):
    """Each test gets its own working directory, decoded-image cache and MLflow store."""
    with isolated(tmp_path):
        yield tmp_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_http_server(command: list[str], health_url: str, *, env: dict, cwd: Path, timeout: float = 180) -> subprocess.Popen:
    """Start ``command`` in its own process group and wait until ``health_url`` answers 200.

    Its temporary files (MLflow's model downloads) go to ``cwd/tmp``; its output to a file, ``process.log`` (a pipe
    nobody reads fills up, and the server then blocks on its next log line)."""
    (cwd / "tmp").mkdir(exist_ok=True)
    env = {**env, "TMPDIR": str(cwd / "tmp")}
    log = Path(tempfile.mkstemp(dir=cwd, prefix=f"{Path(command[0]).name}-", suffix=".log")[1])
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
    process.log = log
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(health_url, timeout=2).status_code == 200:
                return process
        except requests.ConnectionError:
            pass
        if process.poll() is not None:
            pytest.fail(f"{command[:3]} exited: " + log.read_text()[-3000:])
        time.sleep(1)
    stop_process_group(process)
    pytest.fail(f"{command[:3]} did not answer {health_url} within {timeout:.0f} s: " + log.read_text()[-3000:])


def stop_process_group(process: subprocess.Popen, timeout: float = 60) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=timeout)


def faithful_inputs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """Files as cameras and analysis tools write them, each beside the plain 8-bit file it must decode to exactly:
    a phone's EXIF-rotated PNG, 12- and 16-bit grey TIFFs, a float grey TIFF in [0, 1]. ``{kind: (file, reference)}``."""
    folder.mkdir(parents=True, exist_ok=True)
    upright = cell_image("eosinophil", 7, size=48).crop((0, 0, 48, 40))  # not square: a turn shows
    reference = folder / "ref.png"
    upright.save(reference)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view: stored turned the other way
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "exif6.png", exif=exif)
    grey = np.asarray(upright.convert("L"))
    wide = grey.astype(np.float64)
    reference_grey = folder / "ref_gray.png"
    Image.fromarray(grey).save(reference_grey)
    Image.fromarray(np.round(wide * 4095 / 255).astype(np.uint16)).save(folder / "twelve_bit.tif")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "sixteen_bit.tif")
    Image.fromarray((wide / 255).astype(np.float32), mode="F").save(folder / "float_gray.tif")
    return {"exif": (folder / "exif6.png", reference), "12-bit": (folder / "twelve_bit.tif", reference_grey),
            "16-bit": (folder / "sixteen_bit.tif", reference_grey), "float": (folder / "float_gray.tif", reference_grey)}
