"""Serving: the MLflow pyfunc that ``mlflow models serve`` runs, its input/output tables, and ``wbc predict``.
Imports only :mod:`wbc.inference` (and below): no Lightning, no training code.

``wbc.serving.WBCImageClassifier`` is the name that models logged before the package layout name in their
entry file; it keeps resolving.
"""

from importlib import import_module

_HOMES = {
    "WBCImageClassifier": "wbc.serving.pyfunc",
    "SIGNATURE": "wbc.serving.pyfunc",
    "IMAGE_COLUMN": "wbc.serving.pyfunc",
    "log_pyfunc_model": "wbc.serving.pyfunc",
    "encode_image_file": "wbc.serving.pyfunc",
    "OUTPUT_COLUMNS": "wbc.serving.tables",
    "predictions_frame": "wbc.serving.tables",
    "differential_count": "wbc.serving.tables",
    "predict_files": "wbc.serving.predict",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'wbc.serving' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
