"""ResNet, AlexNet and VGG16 from torchvision, with the classifier replaced by a new head.

Pretrained weights come through torchvision's weights API: downloaded on first use into
``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch``), or read from there when present.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tv

from wbc.models._registry import PretrainedWeightsUnavailable, register_model

RESNET_STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


def _load_weights(weights: tv.WeightsEnum) -> dict[str, torch.Tensor]:
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights {weights} are not at {cached} and could not be downloaded ({error}). "
            f"Copy the file there (set $TORCH_HOME to use another folder; now {os.environ.get('TORCH_HOME', 'unset')}), "
            "or train without them: wbc train --weights none (mlflow run: -P weights=none)"
        ) from None


def _replace_linear(parent: nn.Module, attribute: str, num_classes: int) -> None:
    old = getattr(parent, attribute) if not attribute.isdigit() else parent[int(attribute)]
    new = nn.Linear(old.in_features, num_classes)
    if attribute.isdigit():
        parent[int(attribute)] = new
    else:
        setattr(parent, attribute, new)


def _build(factory, weights: tv.WeightsEnum, head: str, num_classes: int, pretrained: bool) -> nn.Module:
    network = factory(weights=None)
    if pretrained:
        network.load_state_dict(_load_weights(weights))
    parent_name, _, attribute = head.rpartition(".")
    _replace_linear(network.get_submodule(parent_name) if parent_name else network, attribute, num_classes)
    return network


@register_model("resnet18", image_size=128, head=("fc",), last_block=("layer4",), stages=RESNET_STAGES)
def resnet18(num_classes: int, pretrained: bool = False) -> nn.Module:
    """ResNet-18 (torchvision), new fc head."""
    return _build(tv.resnet18, tv.ResNet18_Weights.DEFAULT, "fc", num_classes, pretrained)


@register_model("resnet34", image_size=128, head=("fc",), last_block=("layer4",), stages=RESNET_STAGES)
def resnet34(num_classes: int, pretrained: bool = False) -> nn.Module:
    """ResNet-34 (torchvision), new fc head."""
    return _build(tv.resnet34, tv.ResNet34_Weights.DEFAULT, "fc", num_classes, pretrained)


@register_model("resnet50", image_size=128, head=("fc",), last_block=("layer4",), aliases=("resnet",), stages=RESNET_STAGES)
def resnet50(num_classes: int, pretrained: bool = False) -> nn.Module:
    """ResNet-50 (torchvision), new fc head."""
    return _build(tv.resnet50, tv.ResNet50_Weights.DEFAULT, "fc", num_classes, pretrained)


@register_model(
    "alexnet",
    image_size=128,
    head=("classifier.6",),
    last_block=("features.10", "classifier"),
    cam_layer="features.12",
    stages=tuple((f"features.{index}",) for index in (0, 3, 6, 8, 10)),
)
def alexnet(num_classes: int, pretrained: bool = False) -> nn.Module:
    """AlexNet (torchvision), last classifier layer replaced."""
    return _build(tv.alexnet, tv.AlexNet_Weights.DEFAULT, "classifier.6", num_classes, pretrained)


@register_model(
    "vgg16",
    image_size=128,
    head=("classifier.6",),
    last_block=("features.24", "features.26", "features.28", "classifier"),
    cam_layer="features.30",
    stages=(("features.0", "features.2"), ("features.5", "features.7"), ("features.10", "features.12", "features.14"),
            ("features.17", "features.19", "features.21"), ("features.24", "features.26", "features.28")),
)
def vgg16(num_classes: int, pretrained: bool = False) -> nn.Module:
    """VGG-16 (torchvision), last classifier layer replaced."""
    return _build(tv.vgg16, tv.VGG16_Weights.DEFAULT, "classifier.6", num_classes, pretrained)
