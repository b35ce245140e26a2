"""The servable model: an MLflow pyfunc that takes base64-encoded image files and returns class scores.

Input: a DataFrame with a string column ``image``, each cell the base64 encoding of a JPEG or
PNG file (any size). Output, one row per input row (same index): ``label`` (class name),
``confidence`` (its probability), ``prob_<class>`` for each of the eight classes,
``in_distribution_score`` and ``in_distribution`` (false: the image is unfamiliar to the model),
``review`` (true: confidence below the model's review threshold) and ``error`` (empty, or why that
row could not be scored, rows counted from 0; its label is then empty). Probabilities are temperature-calibrated and the
two flags set when the model carries a calibration (:mod:`wbc.inference.calibration`); otherwise the flags are null. A request
with no rows, or in which no row can be scored, is refused with HTTP 400 and the reason. The request parameter ``tta`` (MLflow's ``params``,
default false) scores the mean logits of each image's 8 flips/rotations instead (8x the compute).

Preprocessing is :class:`wbc.inference.Predictor`'s, the same as ``wbc evaluate`` and ``wbc predict``.
The network runs in ONNX Runtime when the model carries ``model.onnx`` (about twice as fast in the
server, and PyTorch is then never imported), else in PyTorch; ``WBC_RUNTIME=torch`` (or ``onnx``, or
``onnx-int8`` for the int8 quantization a model exported with ``--int8`` carries) in the server's
environment chooses.

The logged model is self-contained: it carries the ``wbc`` package it was logged with (MLflow's
``code_paths``: ``code/wbc/`` in the model folder, first on ``sys.path`` when MLflow loads it) and pins, in
its ``requirements.txt``, exactly what its load and predict path imports: without PyTorch when it has an
ONNX flavour (:func:`pip_requirements`).
"""

from __future__ import annotations

import base64
import binascii
import copy
import importlib.metadata
import shutil
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from wbc._process import tune_malloc_in_process
from wbc.data.images import MAX_IMAGE_BYTES
from wbc.inference import Predictor
from wbc.inference.exported import load_export_config
from wbc.inference.onnx import runtime_from_environment
from wbc.serving.tables import PROBABILITY_COLUMNS, predictions_frame

IMAGE_COLUMN = "image"
TTA_PARAM = "tta"
"""Request parameter: true scores the mean logits of each image's 8 flips/rotations (8x the compute), with the
flags the model fitted on such means (null where it has none)."""
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
    outputs=Schema(
        [ColSpec("string", "label"), ColSpec("double", "confidence")]
        + [ColSpec("double", column) for column in PROBABILITY_COLUMNS]
        + [
            ColSpec("double", "in_distribution_score"),
            ColSpec("boolean", "in_distribution", required=False),
            ColSpec("boolean", "review", required=False),
            ColSpec("string", "error", required=False),
        ]
    ),
    params=ParamSchema([ParamSpec(TTA_PARAM, "boolean", False)]),
)
SERVED_PACKAGES = ("mlflow-skinny", "pandas", "numpy", "pillow", "lazy-loader")
"""What every served model's load and predict path imports (beside the standard library and what these pull in)."""
ONNX_PACKAGES = ("onnxruntime",)
TORCH_PACKAGES = ("torch", "torchvision", "timm")
"""What a model without an ONNX flavour needs besides: the network runs in PyTorch."""


def _decode_base64(value, row: str) -> bytes | str:
    """The file bytes, or an error message. Accepts what encoders send (RFC 2045/4648): line breaks and other white
    space anywhere (MIME's 76-character lines, a trailing newline) and a ``data:<type>;base64,`` prefix; any other
    character that is not base64 is an error naming the row."""
    if not isinstance(value, str) or not value.strip():
        return f"{row}: 'image' must be a non-empty base64 string"
    text = value.strip()
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            return f"{row}: 'image' is a data URL without ';base64,': send the file's bytes in base64"
    text = "".join(text.split())
    if len(text) > (MAX_IMAGE_BYTES * 4) // 3 + 4:
        return f"{row}: image is larger than the {MAX_IMAGE_BYTES}-byte limit"
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return f"{row}: 'image' is not valid base64 (letters, digits, +, / and = padding; line breaks are fine)"


class WBCImageClassifier(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper around :class:`Predictor`; the weights come from the ``model`` artifact folder."""

    def load_context(self, context) -> None:
        tune_malloc_in_process()
        self.predictor = Predictor.load(context.artifacts["model"], runtime=runtime_from_environment(), torch_model=False)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            raise MlflowException(
                f"input must be a table with a string column '{IMAGE_COLUMN}' of base64-encoded image files",
                INVALID_PARAMETER_VALUE,
            )
        if len(model_input) == 0:
            raise MlflowException(f"the request holds no rows: send one row per image, in the column '{IMAGE_COLUMN}'",
                                  INVALID_PARAMETER_VALUE)
        names = [f"row {position}" for position in range(len(model_input))]
        predictor = self.predictor
        if (params or {}).get(TTA_PARAM):
            predictor = copy.copy(predictor)  # this request's, sharing the network: others keep theirs
            predictor.tta = True
        predictions = predictor.predict_received(
            [(name, _decode_base64(value, name)) for value, name in zip(model_input[IMAGE_COLUMN], names)]
        )
        if predictions and all(p.error for p in predictions):
            raise MlflowException("; ".join(p.error for p in predictions[:5]), INVALID_PARAMETER_VALUE)
        frame = predictions_frame(predictions, index=model_input.index)
        return frame.astype(object).where(frame.notna(), None)  # JSON null, not NaN (which strict JSON parsers refuse)


def encode_image_file(path: str | Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def pip_requirements(export_dir: str | Path) -> list[str]:
    """The logged model's requirements, pinned to the versions installed now: :data:`SERVED_PACKAGES`, plus ONNX
    Runtime for a model with an ONNX flavour (PyTorch is then not needed: ``WBC_RUNTIME=torch`` asks for it, and
    says so when it is missing), or PyTorch's packages for one without."""
    has_onnx = "onnx" in load_export_config(export_dir)
    requirements = []
    for package in SERVED_PACKAGES + (ONNX_PACKAGES if has_onnx else TORCH_PACKAGES):
        try:
            requirements.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            requirements.append(package)
    return requirements


def log_pyfunc_model(export_dir: str | Path, example_image: str | Path, name: str = "model"):
    """Log the exported model folder as a pyfunc model in the active run, with the ``wbc`` code it runs (MLflow's
    ``code_paths``) and its :func:`pip_requirements`; return its ModelInfo."""
    import wbc

    with tempfile.TemporaryDirectory(prefix="wbc-code-") as scratch:
        code = Path(scratch) / "wbc"
        shutil.copytree(Path(wbc.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={"model": str(export_dir)},
            code_paths=[str(code)],
            signature=SIGNATURE,
            input_example=pd.DataFrame({IMAGE_COLUMN: [encode_image_file(example_image)]}),
            pip_requirements=pip_requirements(export_dir),
        )
