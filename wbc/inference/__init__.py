"""Inference: the exported model on disk, its ONNX flavour, its calibration record, and the :class:`Predictor`
that scores images with it. Imports neither Lightning nor MLflow (an MLflow URI loads MLflow when used), and
PyTorch only for a model run in PyTorch (``artifact``), not for one run in ONNX Runtime.

Names load on first use (``lazy_loader``, PEP 562), so ``from wbc.inference import Predictor`` costs only what it needs.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "artifact": ["export_metrics", "export_model", "load_model", "load_model_from"],
        "exported": ["EXPORT_CONFIG", "EXPORT_WEIGHTS", "ModelLoadError", "load_calibration", "load_export_config", "resolved_model"],
        "calibration": ["Calibration", "in_distribution_score", "softmax"],
        "onnx": ["RUNTIMES", "OnnxNetwork", "OnnxUnavailable"],
        "fields": ["CELL_SHARE", "ClassifiedField", "FieldCell", "classify_field", "frame_cell"],
        "predictor": ["Prediction", "Predictor", "Scores", "dihedral_views"],
    },
)
