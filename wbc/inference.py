"""Load a trained model from a checkpoint or an exported folder, and score images with it.

Every consumer of a trained model (``wbc evaluate``, ``wbc predict``, the served MLflow model)
goes through :class:`Predictor`, so they preprocess and score identically.

An exported model is a folder with ``weights.pt`` (a plain state dict), ``model.json``
(architecture, image size, class names, calibration) and, when the export checked out, ``model.onnx``
(the same network for ONNX Runtime, :mod:`wbc.onnx_export`), and when asked for, ``model.int8.onnx`` (its int8
quantization). Checkpoints and weights load with ``torch.load(weights_only=True)``:
no pickled objects are ever executed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from wbc.calibration import Calibration, in_distribution_score
from wbc.checkpointing import atomic_torch_save
from wbc.classes import CLASS_NAMES
from wbc.data.images import ImageDecodeError, ImageSource, decode_image
from wbc.models import Classifier, build_model
from wbc.onnx_export import (
    INT8_FILE,
    ONNX_FILE,
    RUNTIMES,
    OnnxNetwork,
    OnnxUnavailable,
    export_onnx,
    file_digest,
    quantize_onnx,
    random_check_images,
)

EXPORT_WEIGHTS = "weights.pt"
EXPORT_CONFIG = "model.json"


class ModelLoadError(ValueError):
    pass


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


def _onnx_network(folder: Path, int8: bool = False) -> OnnxNetwork:
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


@dataclass
class Prediction:
    name: str
    probabilities: np.ndarray | None
    error: str | None = None
    in_distribution_score: float | None = None
    in_distribution: bool | None = None
    """False when the image looks unlike the training data (None: the model has no calibration)."""
    review: bool | None = None
    """True when the calibrated confidence is below the model's review threshold (None: no calibration)."""
    pixels: torch.Tensor | None = field(default=None, repr=False)
    """The decoded image (3, S, S) uint8, when asked for (``keep_pixels``)."""

    @property
    def label(self) -> str | None:
        return None if self.probabilities is None else CLASS_NAMES[int(self.probabilities.argmax())]

    @property
    def confidence(self) -> float | None:
        return None if self.probabilities is None else float(self.probabilities.max())


def dihedral_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of a batch (N, C, H, W); a cell has no preferred orientation."""
    rotations = [torch.rot90(images, k, dims=(-2, -1)) for k in range(4)]
    return rotations + [torch.flip(view, dims=(-1,)) for view in rotations]


@dataclass
class Scores:
    probabilities: np.ndarray
    """(N, 8) class probabilities (temperature-scaled when the model is calibrated)."""
    in_distribution_score: np.ndarray
    """(N,) negative free energy of the logits (see :mod:`wbc.calibration`)."""


class Predictor:
    """Scores images with a :class:`Classifier` at its image size, in batches, in inference mode.

    ``network`` runs the model instead of PyTorch (an :class:`~wbc.onnx_export.OnnxNetwork`; the PyTorch
    ``model`` stays for Grad-CAM). ``tta=True`` averages the probabilities (and in-distribution scores) over the 8 flips/rotations
    of each image (8x the compute). With a :class:`Calibration` the probabilities are temperature-scaled
    and each prediction carries the review and in-distribution flags (not with ``tta``: the thresholds
    were fitted on single views).
    """

    def __init__(
        self,
        model: Classifier,
        image_size: int,
        batch_size: int = 64,
        tta: bool = False,
        calibration: Calibration | None = None,
        network: OnnxNetwork | None = None,
    ) -> None:
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.network = network
        self.image_size = image_size
        self.batch_size = batch_size
        self.tta = tta
        self.calibration = calibration

    @classmethod
    def load(cls, path: str | os.PathLike, batch_size: int = 64, tta: bool = False, runtime: str = "auto") -> "Predictor":
        """From a checkpoint, an exported folder, a logged MLflow model folder or an MLflow model URI.

        ``runtime``: ``onnx`` runs the exported ``model.onnx`` with ONNX Runtime, ``onnx-int8`` its int8
        quantization ``model.int8.onnx`` (faster, answers may differ; never chosen by ``auto``), ``torch`` runs
        PyTorch, ``auto`` (default) takes ONNX when the model has it and onnxruntime is installed.
        """
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime={runtime!r} is invalid: choose one of {', '.join(RUNTIMES)}")
        with resolved_model(str(path)) as resolved:
            model, image_size = load_model(resolved)
            network = None
            if runtime != "torch":
                try:
                    network = _onnx_network(resolved, int8=runtime == "onnx-int8")
                except OnnxUnavailable as error:
                    if runtime != "auto":
                        raise ModelLoadError(f"{path}: {error}") from None
                    if resolved.is_dir() and (resolved / ONNX_FILE).exists():
                        warnings.warn(f"{error}; running the model in PyTorch instead", stacklevel=2)
            calibration = load_calibration(resolved)
        return cls(model, image_size, batch_size, tta, calibration=calibration, network=network)

    @property
    def runtime(self) -> str:
        if self.network is None:
            return "torch"
        return "onnx-int8" if self.network.path.name == INT8_FILE else "onnx"

    @property
    def temperature(self) -> float:
        return self.calibration.temperature if self.calibration else 1.0

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        if self.network is not None:
            return self.network(batch)
        return self.model(batch.contiguous(memory_format=torch.channels_last)).float()

    def _score(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = dihedral_views(batch) if self.tta else [batch]
        probabilities, scores = 0, 0
        for view in views:
            logits = self._logits(view)
            probabilities = probabilities + torch.softmax(logits / self.temperature, dim=1)
            scores = scores + in_distribution_score(logits, self.temperature)
        return probabilities / len(views), scores / len(views)

    def _batches(self, images):
        for start in range(0, len(images), self.batch_size):
            yield torch.from_numpy(np.array(images[start : start + self.batch_size]))

    @torch.inference_mode()
    def score_pixels(self, images: torch.Tensor | np.ndarray) -> Scores:
        """Probabilities and in-distribution scores for decoded uint8 images (N, 3, S, S)."""
        results = [self._score(batch) for batch in self._batches(images)]
        if not results:
            return Scores(np.zeros((0, len(CLASS_NAMES)), dtype=np.float32), np.zeros(0, dtype=np.float32))
        return Scores(torch.cat([p for p, _ in results]).numpy(), torch.cat([s for _, s in results]).numpy())

    def predict_pixels(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Class probabilities (N, 8) for decoded uint8 images (N, 3, S, S)."""
        return self.score_pixels(images).probabilities

    @torch.inference_mode()
    def logits_pixels(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Raw logits (N, 8), one view per image: what calibration is fitted on."""
        outputs = [self._logits(batch) for batch in self._batches(images)]
        return torch.cat(outputs).numpy() if outputs else np.zeros((0, len(CLASS_NAMES)), dtype=np.float32)

    def predict_sources(
        self, sources: Sequence[ImageSource], names: Sequence[str] | None = None, keep_pixels: bool = False
    ) -> list[Prediction]:
        """Decode and score each source; unreadable ones come back with ``error`` set, the rest are scored."""
        names = list(names) if names is not None else [str(s) if not isinstance(s, bytes) else f"#{i}" for i, s in enumerate(sources)]
        decoded, predictions = [], []
        for source, name in zip(sources, names):
            try:
                decoded.append(decode_image(source, self.image_size, name=name))
                predictions.append(Prediction(name, None))
            except ImageDecodeError as error:
                predictions.append(Prediction(name, None, str(error)))
        good = [p for p in predictions if p.error is None]
        if good:
            scores = self.score_pixels(np.stack(decoded))
            for prediction, row, score, pixels in zip(good, scores.probabilities, scores.in_distribution_score, decoded):
                prediction.probabilities = row
                if keep_pixels:
                    prediction.pixels = pixels
                prediction.in_distribution_score = float(score)
                if self.calibration is not None and not self.tta:  # thresholds were fitted on single views
                    prediction.in_distribution = bool(self.calibration.in_distribution(score))
                    prediction.review = bool(self.calibration.needs_review(row.max()))
        return predictions

    def predict_received(self, items: Sequence[tuple[str, bytes | str]], keep_pixels: bool = False) -> list[Prediction]:
        """For uploads already read: ``(name, file bytes)`` are decoded and scored, ``(name, message)`` come
        back as errors with that message; the order is kept."""
        received = [(name, item) for name, item in items if isinstance(item, bytes)]
        scored = iter(self.predict_sources([item for _, item in received], [name for name, _ in received], keep_pixels))
        return [next(scored) if isinstance(item, bytes) else Prediction(name, None, item) for name, item in items]


def iter_image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named directly, plus every file under named folders (sorted); missing paths raise."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


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
