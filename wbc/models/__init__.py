"""Models: one builder per architecture, each with its record (:class:`ModelSpec`), and the architecture registry:
``build_model(arch, num_classes=8, pretrained=...)``, ``list_models()``, ``get_spec(arch)``."""

from wbc.models import efficientnet_lite, scratch, torchvision_nets  # noqa: F401  (registers the builders)
from wbc.models.spec import ModelSpec
from wbc.models.classifier import BATCH_NORMS, MODES, UNFREEZE_CHOICES, Classifier, check_freeze_stages, count_parameters
from wbc.models._registry import (
    PretrainedWeightsUnavailable,
    UnknownModelError,
    build_model,
    get_spec,
    list_models,
)

__all__ = [
    "BATCH_NORMS",
    "MODES",
    "UNFREEZE_CHOICES",
    "Classifier",
    "ModelSpec",
    "PretrainedWeightsUnavailable",
    "UnknownModelError",
    "build_model",
    "check_freeze_stages",
    "count_parameters",
    "get_spec",
    "list_models",
]
