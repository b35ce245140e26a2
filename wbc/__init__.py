"""wbc: white blood cell classification with PyTorch Lightning and MLflow."""

__version__ = "0.1.0"
