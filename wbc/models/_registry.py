"""The architecture registry (as timm's ``register_model`` / ``create_model``): ``register_model`` records a
builder with its :class:`~wbc.models.spec.ModelSpec`, ``build_model`` makes one, ``list_models`` lists them."""

from __future__ import annotations

from wbc.classes import NUM_CLASSES
from wbc.errors import WBCError
from wbc.models.classifier import Classifier
from wbc.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec


class UnknownModelError(WBCError, ValueError):
    """An architecture name that is not registered; the message lists the known ones."""


class PretrainedWeightsUnavailable(WBCError, RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, or none exist)."""


_MODELS: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def register_model(
    name: str,
    *,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    image_size: int,
    head: tuple[str, ...],
    last_block: tuple[str, ...] = (),
    has_pretrained: bool = True,
    aliases: tuple[str, ...] = (),
    cam_layer: str = "",
    stages: tuple[tuple[str, ...], ...] = (),
):
    """Decorator: register ``builder(num_classes, pretrained)`` under ``name`` (and ``aliases``)."""

    def decorate(builder):
        _MODELS[name] = ModelSpec(
            name=name,
            builder=builder,
            mean=tuple(mean),
            std=tuple(std),
            image_size=image_size,
            head=head,
            last_block=last_block,
            has_pretrained=has_pretrained,
            description=(builder.__doc__ or "").strip().splitlines()[0] if builder.__doc__ else name,
            cam_layer=cam_layer or (last_block[0] if last_block else ""),
            stages=stages,
        )
        for alias in aliases:
            _ALIASES[alias] = name
        return builder

    return decorate


def list_models(include_aliases: bool = True) -> list[str]:
    names = list(_MODELS)
    if include_aliases:
        names += list(_ALIASES)
    return sorted(names)


def get_spec(arch: str) -> ModelSpec:
    canonical = _ALIASES.get(arch, arch)
    try:
        return _MODELS[canonical]
    except KeyError:
        raise UnknownModelError(f"unknown model {arch!r}: choose one of {', '.join(list_models())}") from None


def build_model(arch: str, num_classes: int = NUM_CLASSES, pretrained: bool = False):
    """Build ``arch`` with a ``num_classes`` head, wrapped with its input normalisation.

    ``pretrained=True`` loads ImageNet weights into the backbone (see each builder for where
    they come from) and raises :class:`PretrainedWeightsUnavailable` when they cannot be had.
    """
    spec = get_spec(arch)
    if pretrained and not spec.has_pretrained:
        raise PretrainedWeightsUnavailable(
            f"{spec.name} has no pretrained weights: train it with mode 'scratch'"
        )
    network = spec.builder(num_classes=num_classes, pretrained=pretrained)
    return Classifier(network, spec)
