"""The ONNX flavour of an exported model: the same network as ``model.onnx``, run by ONNX Runtime.

ONNX Runtime folds batch norm into the convolutions and keeps its own memory arena. The second
matters most in a server: `mlflow models serve` scores requests on worker threads, where glibc's
per-thread arenas give PyTorch's large activations back to the OS after every batch (measured in
benchmarks/RESULTS.md). An export is kept only when it gives the same probabilities as PyTorch to
within :data:`TOLERANCE` on the check batch; otherwise the model is served by PyTorch.

On request, :func:`quantize_onnx` also writes ``model.int8.onnx``: faster on CPU, but its answers may
differ, so it is kept only above :data:`INT8_MIN_AGREEMENT` and served only when asked for (``onnx-int8``).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wbc.errors import WBCError

if TYPE_CHECKING:  # torch loads lazily: the command line reads RUNTIMES without it
    import torch

    from wbc.models import Classifier

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TOLERANCE = 1e-4
"""Largest difference in any class probability allowed between ONNX Runtime and PyTorch."""
INT8_MIN_AGREEMENT = 0.985
"""Smallest share of check images on which the int8 network must pick the same class as the float one."""
INT8_CALIBRATION_IMAGES = 256
CHECK_BATCH = 64
RUNTIMES = ("auto", "onnx", "onnx-int8", "torch")
RUNTIME_ENV = "WBC_RUNTIME"
"""Environment variable that picks the runtime of a served model (default ``auto``: ONNX when present)."""


def runtime_from_environment() -> str:
    """The runtime ``$WBC_RUNTIME`` asks for (``auto`` when unset); a one-line error naming it otherwise."""
    value = (os.environ.get(RUNTIME_ENV) or "auto").strip().lower()
    if value not in RUNTIMES:
        raise UnknownRuntime(f"{RUNTIME_ENV}={os.environ.get(RUNTIME_ENV)!r} is invalid: set it to one of {', '.join(RUNTIMES)} or unset it")
    return value


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file: ties ``model.onnx`` to the ``weights.pt`` it was exported from."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxUnavailable(WBCError, RuntimeError):
    """The ONNX flavour cannot be made or used; the model is then served by PyTorch, or the request fails."""


class UnknownRuntime(WBCError, ValueError):
    """A runtime name that is not one of :data:`RUNTIMES`."""


def export_onnx(model: Classifier, image_size: int, path: str | os.PathLike, check_images) -> float:
    """Write ``model`` (uint8 images in, logits out, any batch size) to ``path``; return the largest
    probability difference from PyTorch on ``check_images`` (uint8 (N, 3, S, S), a tensor or an array such
    as a split's decoded pixels, compared in chunks).

    Raises :class:`OnnxUnavailable` when the exporter or ONNX Runtime is missing or the result differs
    by more than :data:`TOLERANCE` (no file is left behind then).
    """
    import torch

    path = Path(path)
    model = model.eval()
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    temporary = path.with_name(path.name + ".tmp")
    with _failures_unavailable("ONNX export", "onnx, onnxscript and onnxruntime", temporary):
        with warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), input_names=["images"], output_names=["logits"],
                dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=65536)}},
                dynamo=True, optimize=True, verbose=False,
            )
            program.save(str(temporary))
        network, difference = OnnxNetwork(temporary), 0.0
        for start in range(0, len(check_images), CHECK_BATCH):
            chunk = torch.as_tensor(np.array(check_images[start : start + CHECK_BATCH]))
            with torch.inference_mode():
                expected = torch.softmax(model(chunk).float(), dim=1)
            difference = max(difference, float((torch.softmax(network(chunk), dim=1) - expected).abs().max()))
        if not difference <= TOLERANCE:
            raise OnnxUnavailable(f"ONNX Runtime differs from PyTorch by {difference:.2e} (limit {TOLERANCE:.0e})")
        os.replace(temporary, path)
        return difference


def random_check_images(image_size: int):
    """Eight seeded random uint8 images: what exports check on when no split is given."""
    import torch

    return torch.randint(0, 256, (8, 3, image_size, image_size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def calibration_reader(images):
    """An ONNX Runtime calibration reader over up to :data:`INT8_CALIBRATION_IMAGES` of ``images`` (uint8
    (N, 3, S, S)), taken evenly spaced, 32 per batch."""
    from onnxruntime.quantization import CalibrationDataReader

    step = max(1, len(images) // INT8_CALIBRATION_IMAGES)
    chosen = np.array(images[::step][:INT8_CALIBRATION_IMAGES])

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(chosen), 32))

        def get_next(self):
            start = next(self.starts, None)
            return None if start is None else {"images": chosen[start : start + 32]}

    return Batches()


def quantize_onnx(float_path: str | os.PathLike, path: str | os.PathLike, check_images) -> float:
    """Write an int8 copy of the ONNX network at ``float_path`` to ``path``; return the share of
    ``check_images`` (uint8 (N, 3, S, S), e.g. a split's decoded pixels) on which both pick the same class.

    Static quantization in ONNX Runtime of every layer: weights per channel, activations with ranges
    measured on :func:`calibration_reader`'s images of ``check_images``. Weights use 7 bits: on CPUs
    without VNNI, 8-bit weights overflow ONNX Runtime's int16 accumulation and flip many answers
    (benchmarks/int8_variants.py compares the choices). Raises :class:`OnnxUnavailable` (no file is left
    behind) when quantization fails or agreement is below :data:`INT8_MIN_AGREEMENT`.
    """
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    prepared = path.with_name(path.name + ".prepared.tmp")
    with _failures_unavailable("int8 quantization", "onnxruntime", temporary, prepared):
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with warnings.catch_warnings(), _quiet("root"):
            warnings.simplefilter("ignore")
            quant_pre_process(str(float_path), str(prepared))
            quantize_static(
                str(prepared), str(temporary), calibration_reader(check_images), quant_format=QuantFormat.QDQ,
                per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )
        float_network, int8_network, same = OnnxNetwork(float_path), OnnxNetwork(temporary), 0
        for start in range(0, len(check_images), CHECK_BATCH):
            chunk = np.ascontiguousarray(check_images[start : start + CHECK_BATCH])
            same += int((float_network.run(chunk).argmax(1) == int8_network.run(chunk).argmax(1)).sum())
        agreement = same / len(check_images)
        if agreement < INT8_MIN_AGREEMENT:
            raise OnnxUnavailable(f"int8 picks the float network's class on {100 * agreement:.2f} % of the check images (at least {100 * INT8_MIN_AGREEMENT:.1f} % needed)")
        os.replace(temporary, path)
        return agreement


@contextmanager
def _failures_unavailable(what: str, packages: str, *scratch_files: Path):
    """Any failure inside becomes one :class:`OnnxUnavailable` line (the exporters and the quantizer raise
    many types; PyTorch serving still works); ``scratch_files`` are removed whatever happens."""
    try:
        yield
    except OnnxUnavailable:
        raise
    except ImportError as error:
        raise OnnxUnavailable(f"{what} needs {packages} ({error})") from None
    except Exception as error:  # noqa: BLE001 - see the docstring
        raise OnnxUnavailable(f"{what} failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    finally:
        for scratch in scratch_files:
            scratch.unlink(missing_ok=True)


class OnnxNetwork:
    """Callable like the network: uint8 images (N, 3, S, S) → float logits (N, 8), through ONNX Runtime."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        """``threads``: ONNX Runtime's intra-op threads; by default PyTorch's count where PyTorch is loaded (so the
        two agree in one process), else ONNX Runtime's own default (the physical cores)."""
        try:
            import onnxruntime
        except ImportError as error:
            raise OnnxUnavailable(f"onnxruntime is not installed ({error}): pip install onnxruntime") from None
        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        torch = sys.modules.get("torch")
        options.intra_op_num_threads = threads or (torch.get_num_threads() if torch is not None else 0)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for unreadable files
            raise OnnxUnavailable(f"{path}: not a loadable ONNX model ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        if images.dtype != torch.uint8:
            raise TypeError(f"the ONNX model takes uint8 images, got {images.dtype}")
        return torch.from_numpy(self.run(images.numpy()))

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """The same on numpy arrays."""
        return self.session.run(["logits"], {"images": np.ascontiguousarray(pixels)})[0]


class _quiet:
    """Silence the exporters' progress logging."""

    def __init__(self, *names: str) -> None:
        self.loggers = [logging.getLogger(name) for name in names]

    def __enter__(self):
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc) -> None:
        for logger, level in zip(self.loggers, self.levels):
            logger.setLevel(level)
