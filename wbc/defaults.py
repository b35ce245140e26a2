"""The names and places every layer shares, each written once: where the data is, which experiment runs go
to, and the registered model a lab's everyday commands use."""

DATA_DIR = "../shared/data"
"""The folder that holds ``barcelona/{train,valid}/<class>/*.jpg`` (relative to the working directory)."""
EXPERIMENT = "wbc"
"""The MLflow experiment that training, evaluation and the main job log to."""
MODEL_NAME = "wbc-classifier"
"""The registered model that ``wbc register`` and ``wbc main`` register versions of."""
CHAMPION_ALIAS = "champion"
CHAMPION_URI = f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}"
"""What ``wbc predict``, ``wbc evaluate``, ``wbc app`` and the MLproject entry points use unless told."""
