"""Evaluation: per-class reports and the confusion matrix, calibration fitting, the shifted benchmark (it owns
the registry's metric names), Grad-CAM. No MLflow: the jobs log what it measures."""
