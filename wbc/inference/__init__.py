"""Inference: the exported model on disk, its ONNX flavour, its calibration record, and the :class:`Predictor`
that scores images with it. Imports neither Lightning nor MLflow (an MLflow URI loads MLflow when used).

Names load on first use (PEP 562), so ``from wbc.inference import Predictor`` costs only what it needs.
"""

from importlib import import_module

_HOMES = {
    "EXPORT_CONFIG": "wbc.inference.artifact",
    "EXPORT_WEIGHTS": "wbc.inference.artifact",
    "ModelLoadError": "wbc.inference.artifact",
    "export_metrics": "wbc.inference.artifact",
    "export_model": "wbc.inference.artifact",
    "load_calibration": "wbc.inference.artifact",
    "load_export_config": "wbc.inference.artifact",
    "load_model": "wbc.inference.artifact",
    "load_model_from": "wbc.inference.artifact",
    "resolved_model": "wbc.inference.artifact",
    "Calibration": "wbc.inference.calibration",
    "in_distribution_score": "wbc.inference.calibration",
    "RUNTIMES": "wbc.inference.onnx",
    "OnnxNetwork": "wbc.inference.onnx",
    "OnnxUnavailable": "wbc.inference.onnx",
    "Prediction": "wbc.inference.predictor",
    "Predictor": "wbc.inference.predictor",
    "Scores": "wbc.inference.predictor",
    "dihedral_views": "wbc.inference.predictor",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'wbc.inference' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
