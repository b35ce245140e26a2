"""The ONNX flavour of an exported model: the same network as ``model.onnx``, run by ONNX Runtime.

ONNX Runtime folds batch norm into the convolutions and keeps its own memory arena. The second
matters most in a server: `mlflow models serve` scores requests on worker threads, where glibc's
per-thread arenas give PyTorch's large activations back to the OS after every batch (measured in
benchmarks/RESULTS.md). An export is kept only when it gives the same probabilities as PyTorch to
within :data:`TOLERANCE` on the check batch; otherwise the model is served by PyTorch.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads lazily: the command line reads RUNTIMES without it
    import torch

    from wbc.models import Classifier

ONNX_FILE = "model.onnx"
TOLERANCE = 1e-4
"""Largest difference in any class probability allowed between ONNX Runtime and PyTorch."""
CHECK_BATCH = 64
RUNTIMES = ("auto", "onnx", "torch")
RUNTIME_ENV = "WBC_RUNTIME"
"""Environment variable that picks the runtime of a served model (default ``auto``: ONNX when present)."""


def runtime_from_environment() -> str:
    """The runtime ``$WBC_RUNTIME`` asks for (``auto`` when unset); a one-line error naming it otherwise."""
    value = (os.environ.get(RUNTIME_ENV) or "auto").strip().lower()
    if value not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV}={os.environ.get(RUNTIME_ENV)!r} is invalid: set it to one of {', '.join(RUNTIMES)} or unset it")
    return value


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file: ties ``model.onnx`` to the ``weights.pt`` it was exported from."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxUnavailable(RuntimeError):
    pass


def export_onnx(model: Classifier, image_size: int, path: str | os.PathLike, check_images=None) -> float:
    """Write ``model`` (uint8 images in, logits out, any batch size) to ``path``; return the largest
    probability difference from PyTorch on ``check_images`` (uint8 (N, 3, S, S), a tensor or an array such
    as a split's decoded pixels, compared in chunks; random images when None).

    Raises :class:`OnnxUnavailable` when the exporter or ONNX Runtime is missing or the result differs
    by more than :data:`TOLERANCE` (no file is left behind then).
    """
    import torch

    path = Path(path)
    model = model.eval()
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), input_names=["images"], output_names=["logits"],
                dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=65536)}},
                dynamo=True, optimize=True, verbose=False,
            )
            program.save(str(temporary))
        if check_images is None:
            check_images = torch.randint(0, 256, (8, 3, image_size, image_size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
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
    except OnnxUnavailable:
        raise
    except ImportError as error:
        raise OnnxUnavailable(f"ONNX export needs onnx, onnxscript and onnxruntime ({error})") from None
    except Exception as error:  # noqa: BLE001 - the exporter raises many types; PyTorch serving still works
        raise OnnxUnavailable(f"ONNX export failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    finally:
        temporary.unlink(missing_ok=True)


class OnnxNetwork:
    """Callable like the network: uint8 images (N, 3, S, S) → float logits (N, 8), through ONNX Runtime."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import torch

        try:
            import onnxruntime
        except ImportError as error:
            raise OnnxUnavailable(f"onnxruntime is not installed ({error}): pip install onnxruntime") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
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
        pixels = np.ascontiguousarray(images.numpy())
        return torch.from_numpy(self.session.run(["logits"], {"images": pixels})[0])


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
