"""Tracking: the MLflow store and experiment, run tags and params, logging a produced model with its reports and
benchmark, and the model registry with its aliases."""
