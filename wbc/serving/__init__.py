"""Serving: the MLflow pyfunc that ``mlflow models serve`` runs, its input/output tables, and ``wbc predict``.
Imports only :mod:`wbc.inference` (and below): no Lightning, no training code.

``wbc.serving.WBCImageClassifier`` is the name that models logged before the package layout name in their
entry file; it keeps resolving.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "pyfunc": ["WBCImageClassifier", "SIGNATURE", "IMAGE_COLUMN", "log_pyfunc_model", "encode_image_file"],
        "tables": ["OUTPUT_COLUMNS", "predictions_frame", "differential_count"],
        "predict": ["predict_files"],
    },
)
