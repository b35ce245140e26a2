"""Score images with a trained model: every consumer (``wbc evaluate``, ``wbc predict``, the served MLflow
model, the web page) goes through :class:`Predictor`, so they preprocess and score identically.

Scoring is NumPy around one network call: ONNX Runtime's (no PyTorch imported at all) or PyTorch's."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from wbc import defaults
from wbc.classes import CLASS_NAMES
from wbc.data.images import ImageDecodeError, ImageSource, decode_image_array
from wbc.inference.calibration import Calibration, is_blank, probabilities_and_scores
from wbc.inference.exported import ModelLoadError, load_calibration, load_export_config, onnx_network, resolved_model
from wbc.inference.onnx import INT8_FILE, ONNX_FILE, RUNTIMES, OnnxNetwork, OnnxUnavailable, UnknownRuntime

if TYPE_CHECKING:
    import torch

    from wbc.models import Classifier

TORCH_MISSING = "PyTorch is not installed"


@dataclass
class Prediction:
    name: str
    probabilities: np.ndarray | None
    error: str | None = None
    in_distribution_score: float | None = None
    in_distribution: bool | None = None
    """False when the image is unfamiliar to the model (None: the model has no calibration)."""
    review: bool | None = None
    """True when the calibrated confidence is below the model's review threshold (None: no calibration)."""
    pixels: np.ndarray | None = field(default=None, repr=False)
    """The decoded image, uint8 (3, S, S), when asked for (``keep_pixels``)."""

    @property
    def label(self) -> str | None:
        return None if self.probabilities is None else CLASS_NAMES[int(self.probabilities.argmax())]

    @property
    def confidence(self) -> float | None:
        return None if self.probabilities is None else float(self.probabilities.max())


def dihedral_views(images: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of a batch (N, C, H, W), contiguous; a cell has no preferred orientation."""
    rotations = [np.rot90(images, k, axes=(-2, -1)) for k in range(4)]
    return [np.ascontiguousarray(view) for view in rotations + [np.flip(view, axis=-1) for view in rotations]]


@dataclass
class Scores:
    probabilities: np.ndarray
    """(N, 8) class probabilities (temperature-scaled when the model is calibrated)."""
    in_distribution_score: np.ndarray
    """(N,) negative free energy of the logits (see :mod:`wbc.inference.calibration`)."""


class Predictor:
    """Scores images with a :class:`Classifier` at its image size, in batches, in inference mode.

    ``network`` runs the model instead of PyTorch (an :class:`~wbc.inference.onnx.OnnxNetwork`); ``model`` (the
    PyTorch network) may then be None, and is needed only for Grad-CAM and for adapting the weights.
    ``tta=True`` scores the mean logits of the 8 flips/rotations of each image (8x the compute). With a
    :class:`Calibration` the probabilities are temperature-scaled and each prediction carries the review and
    in-distribution flags; with ``tta`` those of the calibration's ``tta`` part, fitted on such mean logits (flags
    unknown where the model has none).
    """

    def __init__(
        self,
        model: Classifier | None,
        image_size: int,
        batch_size: int = defaults.SCORING_BATCH,
        tta: bool = False,
        calibration: Calibration | None = None,
        network: OnnxNetwork | None = None,
    ) -> None:
        if model is None and network is None:
            raise ValueError("a Predictor needs a PyTorch model or an ONNX network")
        if model is not None:
            import torch

            model = model.eval().to(memory_format=torch.channels_last)
        self._model = model
        self.network = network
        self.image_size = image_size
        self.batch_size = batch_size
        self.tta = tta
        self.calibration = calibration

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        batch_size: int = defaults.SCORING_BATCH,
        tta: bool = False,
        runtime: str = "auto",
        torch_model: bool = False,
    ) -> "Predictor":
        """From a checkpoint, an exported folder, a logged MLflow model folder or an MLflow model URI.

        ``runtime``: ``onnx`` runs the exported ``model.onnx`` with ONNX Runtime, ``onnx-int8`` its int8
        quantization ``model.int8.onnx`` (faster, answers may differ; never chosen by ``auto``), ``torch`` runs
        PyTorch, ``auto`` (default) takes ONNX when the model has it and onnxruntime is installed.
        When ONNX runs the model, the PyTorch network is not loaded (nor PyTorch imported: the served model) unless
        ``torch_model`` asks for it (:attr:`model`, for Grad-CAM).

        Raises :class:`ModelLoadError` (one line, naming the model) for an unreadable model, a runtime the model
        does not have, or a model that needs PyTorch where it is not installed.
        """
        if runtime not in RUNTIMES:
            raise UnknownRuntime(f"runtime={runtime!r} is invalid: choose one of {', '.join(RUNTIMES)}")
        with resolved_model(str(path)) as resolved:
            network = None
            if runtime != "torch":
                try:
                    network = onnx_network(resolved, int8=runtime == "onnx-int8")
                except OnnxUnavailable as error:
                    if runtime != "auto":
                        raise ModelLoadError(f"{path}: {error}") from None
                    if resolved.is_dir() and (resolved / ONNX_FILE).exists():
                        warnings.warn(f"{error}; running the model in PyTorch instead", stacklevel=2)
            model, image_size = None, None
            if network is None or torch_model:
                model, image_size = _load_torch_model(resolved, path, needed=network is None)
            if image_size is None:
                image_size = int(load_export_config(resolved)["image_size"])
            calibration = load_calibration(resolved)
        if tta and calibration is not None and calibration.tta is None:
            warnings.warn(f"{path} has no thresholds fitted for tta (calibrated before they existed, or adapted to a lab): "
                          "its flags are left empty with tta; score it without --tta for its flags, or for a model wbc "
                          "trained, fit them with wbc calibrate <run id>", stacklevel=2)
        return cls(model, image_size, batch_size, tta, calibration=calibration, network=network)

    @property
    def model(self) -> Classifier:
        """The PyTorch network (Grad-CAM, adaptation); :class:`ModelLoadError` when it was not loaded."""
        if self._model is None:
            raise ModelLoadError("this predictor runs ONNX only: load it with torch_model=True for its PyTorch network")
        return self._model

    @property
    def runtime(self) -> str:
        if self.network is None:
            return "torch"
        return "onnx-int8" if self.network.path.name == INT8_FILE else "onnx"

    @property
    def active_calibration(self) -> Calibration | None:
        """The calibration that applies to how this predictor scores: the model's, or with ``tta`` its ``tta`` part."""
        if self.calibration is None:
            return None
        return self.calibration.tta if self.tta else self.calibration

    @property
    def temperature(self) -> float:
        """The active calibration's temperature; with ``tta`` on a model without a ``tta`` part, its single views'."""
        calibration = self.active_calibration or self.calibration
        return calibration.temperature if calibration else 1.0

    def _views_logits(self, batch: np.ndarray, tta: bool) -> np.ndarray:
        """float32 logits (N, 8) of a contiguous uint8 batch (N, 3, S, S); with ``tta`` the mean over its 8 views."""
        if not tta:
            return self._logits(batch)
        return np.mean([self._logits(view) for view in dihedral_views(batch)], axis=0, dtype=np.float32)

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        """float32 logits (N, 8) for a contiguous uint8 batch (N, 3, S, S)."""
        if self.network is not None:
            return self.network.run(batch)
        import torch

        with torch.inference_mode():
            # channels-last in one copy, which also frees a read-only batch (a cache's) from PyTorch's warning
            images = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 2, 3, 1))).permute(0, 3, 1, 2)
            return self._model(images).float().numpy()

    def _score(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return probabilities_and_scores(self._views_logits(batch, self.tta), self.temperature)

    def _batches(self, images):
        for start in range(0, len(images), self.batch_size):
            yield np.ascontiguousarray(np.asarray(images[start : start + self.batch_size]), dtype=np.uint8)

    def score_pixels(self, images: torch.Tensor | np.ndarray) -> Scores:
        """Probabilities and in-distribution scores for decoded uint8 images (N, 3, S, S)."""
        results = [self._score(batch) for batch in self._batches(images)]
        if not results:
            return Scores(np.zeros((0, len(CLASS_NAMES)), dtype=np.float32), np.zeros(0, dtype=np.float32))
        return Scores(np.concatenate([p for p, _ in results]), np.concatenate([s for _, s in results]))

    def flags(self, scores: Scores, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(in_distribution, review)`` for decoded uint8 images (N, 3, S, S) scored as ``scores``: object arrays (N,)
        of True, False or None (unknown: no :attr:`active_calibration`, as for a model without calibration, or with
        ``tta`` one without thresholds fitted on mean views). A blank field
        (:func:`~wbc.inference.calibration.is_blank`) is never in distribution, calibrated or not."""
        unknown = np.full(len(scores.probabilities), None, dtype=object)
        in_distribution, review = unknown.copy(), unknown.copy()
        calibration = self.active_calibration
        if calibration is not None:
            in_distribution[:] = np.asarray(calibration.in_distribution(scores.in_distribution_score), bool).tolist()
            review[:] = np.asarray(calibration.needs_review(scores.probabilities.max(axis=1)), bool).tolist()
        if len(in_distribution):
            in_distribution[is_blank(images)] = False
        return in_distribution, review

    def predict_pixels(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Class probabilities (N, 8) for decoded uint8 images (N, 3, S, S)."""
        return self.score_pixels(images).probabilities

    def logits_pixels(self, images: torch.Tensor | np.ndarray, tta: bool = False) -> np.ndarray:
        """Raw logits, float32 (N, 8), of one view per image, or with ``tta`` the mean over its 8 flips/rotations
        (whatever :attr:`tta` says): what calibration is fitted on."""
        outputs = [self._views_logits(batch, tta) for batch in self._batches(images)]
        return np.concatenate(outputs) if outputs else np.zeros((0, len(CLASS_NAMES)), dtype=np.float32)

    def view_logits_pixels(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Raw logits, float32 (8, N, 8), of each image's 8 flips/rotations in :func:`dihedral_views`' order (view 0 is
        the image as it is): one pass gives both what :meth:`logits_pixels` gives and, averaged, what it gives with
        ``tta``."""
        outputs = [np.stack([self._logits(view) for view in dihedral_views(batch)]) for batch in self._batches(images)]
        return np.concatenate(outputs, axis=1) if outputs else np.zeros((8, 0, len(CLASS_NAMES)), dtype=np.float32)

    def predict_sources(
        self, sources: Sequence[ImageSource], names: Sequence[str] | None = None, keep_pixels: bool = False
    ) -> list[Prediction]:
        """Decode and score each source; unreadable ones come back with ``error`` set, the rest are scored."""
        names = list(names) if names is not None else [str(s) if not isinstance(s, bytes) else f"#{i}" for i, s in enumerate(sources)]
        decoded, predictions = [], []
        for source, name in zip(sources, names):
            try:
                decoded.append(decode_image_array(source, self.image_size, name=name))
                predictions.append(None)
            except ImageDecodeError as error:
                predictions.append(Prediction(name, None, str(error)))
        good = [name for name, prediction in zip(names, predictions) if prediction is None]
        scored = iter(self.predict_arrays(np.stack(decoded), good, keep_pixels) if decoded else [])
        return [prediction or next(scored) for prediction in predictions]

    def predict_arrays(self, images: np.ndarray, names: Sequence[str], keep_pixels: bool = False) -> list[Prediction]:
        """Score decoded images, uint8 (N, S, S, 3) with S = :attr:`image_size` (as
        :func:`~wbc.data.images.decode_image_array` or :func:`~wbc.inference.fields.frame_cell` give them), one
        :class:`Prediction` each with its flags."""
        if not len(images):
            return []
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        scores = self.score_pixels(images)
        in_distribution, review = self.flags(scores, images)
        return [Prediction(name, scores.probabilities[index], pixels=images[index] if keep_pixels else None,
                           in_distribution_score=float(scores.in_distribution_score[index]),
                           in_distribution=in_distribution[index], review=review[index])
                for index, name in enumerate(names)]

    def predict_received(self, items: Sequence[tuple[str, bytes | str]], keep_pixels: bool = False) -> list[Prediction]:
        """For uploads already read: ``(name, file bytes)`` are decoded and scored, ``(name, message)`` come
        back as errors with that message; the order is kept."""
        received = [(name, item) for name, item in items if isinstance(item, bytes)]
        scored = iter(self.predict_sources([item for _, item in received], [name for name, _ in received], keep_pixels))
        return [next(scored) if isinstance(item, bytes) else Prediction(name, None, item) for name, item in items]


def _load_torch_model(resolved, path, needed: bool):
    """(PyTorch model, image size) of a resolved model; when PyTorch is missing, (None, None) if ONNX runs the model
    (``needed`` False), else a :class:`ModelLoadError` saying what to install."""
    try:
        from wbc.inference.artifact import load_model
    except ImportError as error:
        if not needed:
            return None, None
        raise ModelLoadError(f"{path}: this model runs in PyTorch (it has no ONNX flavour, or WBC_RUNTIME=torch), and "
                             f"{TORCH_MISSING} here ({error}): pip install torch torchvision timm") from None
    return load_model(resolved)
