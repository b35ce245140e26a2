"""Reading an exported model without PyTorch: its record (``model.json``), its calibration, its ONNX flavour, and
the folder behind an MLflow URI. What the served model needs; :mod:`wbc.inference.artifact` writes the folder and
loads its PyTorch network.

An exported model is a folder with ``weights.pt`` (a plain state dict), ``model.json`` (architecture, image size,
class names, calibration) and, when the export checked out, ``model.onnx`` (and on request ``model.int8.onnx``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from wbc._io import store_not_created
from wbc.errors import WBCError, server_refusal, version_skew
from wbc.inference.calibration import Calibration
from wbc.inference.onnx import INT8_FILE, ONNX_FILE, OnnxNetwork, OnnxUnavailable, file_digest

EXPORT_WEIGHTS = "weights.pt"
EXPORT_CONFIG = "model.json"


class ModelLoadError(WBCError, ValueError):
    """A model path or URI cannot be loaded; the message names it."""


def load_export_config(path: str | os.PathLike) -> dict:
    """``model.json`` of an exported model folder ({} for checkpoints)."""
    config_path = Path(path) / EXPORT_CONFIG
    return json.loads(config_path.read_text()) if config_path.is_file() else {}


def onnx_network(folder: Path, int8: bool = False) -> OnnxNetwork:
    """The exported folder's ONNX flavour (or its int8 one), if it has one made from its current weights."""
    if not folder.is_dir():
        raise OnnxUnavailable(f"{folder.name} is a checkpoint: ONNX comes with exported models (outputs/<run>/model, MLflow URIs)")
    filename, key = (INT8_FILE, "onnx_int8") if int8 else (ONNX_FILE, "onnx")
    entry = load_export_config(folder).get(key)
    if not entry or not (folder / filename).is_file():
        how = "train with --int8, or `wbc calibrate RUN_ID --int8` adds it" if int8 else "models logged before ONNX export: `wbc calibrate RUN_ID` adds it"
        raise OnnxUnavailable(f"has no {filename} ({how})")
    if entry.get("weights_sha256") != file_digest(folder / EXPORT_WEIGHTS):
        raise OnnxUnavailable(f"{folder / filename} was not exported from this folder's {EXPORT_WEIGHTS}")
    return OnnxNetwork(folder / filename)


def load_calibration(path: str | os.PathLike) -> Calibration | None:
    """The calibration stored with an exported model folder (None for checkpoints and uncalibrated models)."""
    values = load_export_config(path).get("calibration")
    return Calibration.from_dict(values) if values else None


@contextlib.contextmanager
def resolved_model(model: str) -> Iterator[Path]:
    """A local checkpoint/export path as is; an MLflow URI (``runs:/``, ``models:/``, ``m-...``) downloaded
    into a scratch folder that is removed on exit, so load what you need inside the ``with``.

    Logged pyfunc models keep the exported weights in their ``artifacts/model`` folder.
    """
    local = Path(model)
    if local.exists() or "://" not in model and ":/" not in model:
        yield _exported_inside(local) if local.is_dir() else local
        return
    import mlflow

    store = mlflow.get_tracking_uri()
    if store_not_created(store):
        raise ModelLoadError(f"{model}: there is no MLflow store at {store} yet: train and register a model first "
                             "(wbc main), or point MLFLOW_TRACKING_URI at the store that holds it")
    with tempfile.TemporaryDirectory(prefix="wbc-model-") as scratch:
        try:
            downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=scratch))
        except Exception as error:  # noqa: BLE001 - MLflow raises several types for a bad URI
            explained = server_refusal(error) or version_skew(error) or f"cannot load this model URI ({str(error).splitlines()[0]})"
            if model.startswith("models:/") and "not found" in explained:
                explained += (f"{_aliases_now(model)}; register one (wbc main, wbc register; a lab's: wbc adapt FOLDER "
                              "--alias NAME), or give another model: a runs:/<id>/model URI or an exported model folder")
            raise ModelLoadError(f"{model}: {explained}") from None
        yield _exported_inside(downloaded)


def _aliases_now(model: str) -> str:
    """``; the aliases of <name> now: a (version 1), b (version 2)`` for the registered name in a ``models:/``
    URI, or ``""`` when it has none or cannot be read."""
    import mlflow

    name = model[len("models:/"):].split("@")[0].split("/")[0]
    try:
        aliases = mlflow.MlflowClient().get_registered_model(name).aliases
    except Exception:  # noqa: BLE001 - no such name, or a store that cannot say: nothing to add
        return ""
    listed = ", ".join(f"{alias} (version {version})" for alias, version in sorted(aliases.items()))
    return f"; the aliases of {name} now: {listed}" if listed else ""


def _exported_inside(directory: Path) -> Path:
    """The exported folder inside a logged pyfunc model (``artifacts/<name>/``, ``model`` as wbc logs it), else
    ``directory`` itself."""
    nested = [config.parent for config in sorted(directory.glob(f"artifacts/*/{EXPORT_CONFIG}"))]
    preferred = directory / "artifacts" / "model"
    return preferred if preferred in nested else nested[0] if len(nested) == 1 else directory
