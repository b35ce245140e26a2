"""The names and places every layer shares, each written once: where the data is, which experiment runs go
to, and the registered model a lab's everyday commands use."""

DATA_DIR = "../shared/data"
"""The folder that holds ``barcelona/{train,valid}/<class>/*.jpg`` (relative to the working directory)."""
OTHER_LAB = "other-lab"
"""The labelled folder of another lab's cells (``<data dir>/other-lab/<class>/*``) that the shifted benchmark scores,
when it is there, as its real-shift row beside the synthetic shifts."""
EXPERIMENT = "wbc"
"""The MLflow experiment that training, evaluation and the main job log to."""
MODEL_NAME = "wbc-classifier"
"""The registered model that ``wbc register`` and ``wbc main`` register versions of."""
CHAMPION_ALIAS = "champion"
CHAMPION_URI = f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}"
SELECTION_METRIC = "val_robust_acc"
"""What the registry ranks runs on: the mean of clean and shifted validation accuracy, measured by the shifted
benchmark (:mod:`wbc.evaluation.shiftbench`)."""
"""What ``wbc predict``, ``wbc evaluate``, ``wbc app`` and the MLproject entry points use unless told."""
OUTPUT_DIR = "outputs"
"""Where runs keep checkpoints and exported models (``<output dir>/<run id>/``)."""
EVALUATION_DIR = "evaluation"
"""Where ``wbc evaluate`` writes its reports."""
COMPARE_EXPERIMENT = "wbc-compare"
"""The experiment of ``wbc compare``'s study runs."""
SCORING_BATCH = 64
"""Images per batch when a model scores (evaluate, predict, serve, the web page)."""
