"""The exported model on disk: write it, read it back, and find it behind an MLflow URI.

An exported model is a folder with ``weights.pt`` (a plain state dict), ``model.json`` (architecture,
image size, class names, calibration) and, when the export checked out, ``model.onnx`` (the same network
for ONNX Runtime, :mod:`wbc.inference.onnx`), and when asked for, ``model.int8.onnx`` (its int8
quantization). Checkpoints and weights load with ``torch.load(weights_only=True)``: no pickled objects are
ever executed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import torch

from wbc._io import atomic_torch_save, sqlite_file
from wbc.classes import CLASS_NAMES
from wbc.errors import WBCError
from wbc.inference.calibration import Calibration
from wbc.inference.onnx import (
    INT8_FILE,
    ONNX_FILE,
    OnnxNetwork,
    OnnxUnavailable,
    export_onnx,
    file_digest,
    quantize_onnx,
    random_check_images,
)
from wbc.models import Classifier, build_model

EXPORT_WEIGHTS = "weights.pt"
EXPORT_CONFIG = "model.json"


class ModelLoadError(WBCError, ValueError):
    """A model path or URI cannot be loaded; the message names it."""


def export_model(
    model: Classifier,
    image_size: int,
    directory: str | os.PathLike,
    calibration: Calibration | None = None,
    *,
    onnx: bool = True,
    int8: bool = False,
    check_images=None,
) -> Path:
    """Write ``model`` as ``weights.pt`` + ``model.json`` (with its calibration, if any) in ``directory``,
    and with ``onnx`` also ``model.onnx``, checked against PyTorch on ``check_images`` (seeded random images
    when None; a warning and no ONNX file when that cannot be done: the model is then served by PyTorch).
    With ``int8`` also ``model.int8.onnx``, calibrated and checked on ``check_images`` (a warning and no
    file when it fails)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if check_images is None:
        check_images = random_check_images(image_size)
    for stale in (ONNX_FILE, INT8_FILE):  # never beside other weights than their own
        (directory / stale).unlink(missing_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    atomic_torch_save(state, directory / EXPORT_WEIGHTS)
    config = {"arch": model.arch, "image_size": image_size, "classes": list(CLASS_NAMES), "format": 1}
    if calibration is not None:
        config["calibration"] = calibration.to_dict()
    if onnx:
        try:
            difference = export_onnx(model, image_size, directory / ONNX_FILE, check_images)
            config["onnx"] = {"max_probability_difference": difference, "weights_sha256": file_digest(directory / EXPORT_WEIGHTS)}
        except OnnxUnavailable as error:
            warnings.warn(f"{directory}: no ONNX flavour, the model will be served by PyTorch: {error}", stacklevel=2)
    if int8 and "onnx" not in config:
        warnings.warn(f"{directory}: no int8 flavour: it is quantized from the ONNX flavour, which this model does not have", stacklevel=2)
    elif int8:
        try:
            agreement = quantize_onnx(directory / ONNX_FILE, directory / INT8_FILE, check_images)
            config["onnx_int8"] = {"top1_agreement": agreement, "weights_sha256": config["onnx"]["weights_sha256"]}
        except OnnxUnavailable as error:
            warnings.warn(f"{directory}: no int8 flavour: {error}", stacklevel=2)
    temporary = directory / (EXPORT_CONFIG + ".tmp")
    temporary.write_text(json.dumps(config, indent=2))
    os.replace(temporary, directory / EXPORT_CONFIG)
    return directory


def export_metrics(directory: str | os.PathLike) -> dict[str, float]:
    """What a run records about its exported model (the ONNX check, when there is an ONNX flavour)."""
    config = load_export_config(directory)
    metrics = {"onnx_max_probability_difference": config["onnx"]["max_probability_difference"]} if "onnx" in config else {}
    if "onnx_int8" in config:
        metrics["onnx_int8_top1_agreement"] = config["onnx_int8"]["top1_agreement"]
    return metrics


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


def _from_state(arch: str, state: dict, source: Path) -> Classifier:
    model = build_model(arch, num_classes=len(CLASS_NAMES), pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelLoadError(f"{source}: weights do not fit architecture {arch!r} ({str(error).splitlines()[0]})") from None
    return model.eval()


def load_model(path: str | os.PathLike) -> tuple[Classifier, int]:
    """Load a Lightning checkpoint (``.ckpt``) or an exported folder; return (model in eval mode, image size)."""
    path = Path(path)
    if path.is_dir():
        config_path = path / EXPORT_CONFIG
        if not config_path.exists():
            raise ModelLoadError(f"{path}: not an exported wbc model (no {EXPORT_CONFIG})")
        config = json.loads(config_path.read_text())
        if list(config.get("classes", [])) != list(CLASS_NAMES):
            raise ModelLoadError(f"{config_path}: classes {config.get('classes')} differ from {list(CLASS_NAMES)}")
        state = torch.load(path / EXPORT_WEIGHTS, map_location="cpu", weights_only=True)
        return _from_state(config["arch"], state, path), int(config["image_size"])
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such checkpoint file or exported model folder")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        hparams = checkpoint["hyper_parameters"]
        prefix = "model."
        state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise ModelLoadError(f"{path}: not a readable wbc checkpoint ({type(error).__name__}: {error})") from None
    return _from_state(hparams["arch"], state, path), int(hparams["image_size"])


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
    # reading never creates a store: MLflow would make an empty database (and an experiment) on first contact
    if (database := sqlite_file(store)) is not None and not database.exists():
        raise ModelLoadError(f"{model}: there is no MLflow store at {store} yet: train and register a model first "
                             "(wbc main), or point MLFLOW_TRACKING_URI at the store that holds it")
    with tempfile.TemporaryDirectory(prefix="wbc-model-") as scratch:
        try:
            downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=scratch))
        except Exception as error:  # noqa: BLE001 - MLflow raises several types for a bad URI
            raise ModelLoadError(f"{model}: cannot load this model URI ({str(error).splitlines()[0]})") from None
        yield _exported_inside(downloaded)


def load_model_from(model: str) -> tuple[Classifier, int]:
    """``load_model`` on a path or MLflow URI (see ``resolved_model``)."""
    with resolved_model(model) as path:
        return load_model(path)


def _exported_inside(directory: Path) -> Path:
    nested = directory / "artifacts" / "model"
    return nested if (nested / EXPORT_CONFIG).exists() else directory
