"""The exported model on disk: write it and read its PyTorch network back (reading the rest, and finding a model
behind an MLflow URI, needs no PyTorch: :mod:`wbc.inference.exported`).

An exported model is a folder with ``weights.pt`` (a plain state dict), ``model.json`` (architecture,
image size, class names, calibration) and, when the export checked out, ``model.onnx`` (the same network
for ONNX Runtime, :mod:`wbc.inference.onnx`), and when asked for, ``model.int8.onnx`` (its int8
quantization). Checkpoints and weights load with ``torch.load(weights_only=True)``: no pickled objects are
ever executed.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from wbc._io import atomic_torch_save
from wbc.classes import CLASS_NAMES
from wbc.inference.calibration import Calibration
from wbc.inference.exported import (
    EXPORT_CONFIG,
    EXPORT_WEIGHTS,
    ModelLoadError,
    load_export_config,
    resolved_model,
)
from wbc.inference.onnx import INT8_FILE, ONNX_FILE, OnnxUnavailable, export_onnx, file_digest, quantize_onnx, random_check_images
from wbc.models import Classifier, build_model


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


def load_model_from(model: str) -> tuple[Classifier, int]:
    """``load_model`` on a path or MLflow URI (see ``resolved_model``)."""
    with resolved_model(model) as path:
        return load_model(path)
