"""Models-from-code entry for the served model: MLflow runs this file to build the pyfunc (no pickle)."""

import mlflow

from wbc.serving.pyfunc import WBCImageClassifier

mlflow.models.set_model(WBCImageClassifier())
