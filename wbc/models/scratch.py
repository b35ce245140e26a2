"""`scratch`: a compact residual CNN designed for 96-128 px single-cell crops, trained from random init."""

from __future__ import annotations

from torch import nn

from wbc.models._registry import register_model

SCRATCH_MEAN = (0.8742, 0.7482, 0.7201)
SCRATCH_STD = (0.1561, 0.1815, 0.0777)
"""Per-channel mean/std of the PBC training split, measured on its 14,441 images decoded at 96 px."""


def _conv_bn(in_channels: int, out_channels: int, stride: int = 1, kernel: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(in_channels, out_channels, stride), nn.ReLU(inplace=True), *_conv_bn(out_channels, out_channels)
        )
        nn.init.zeros_(self.body[-1].weight)  # each block starts as the identity
        self.shortcut = (
            nn.Sequential(*_conv_bn(in_channels, out_channels, stride, kernel=1))
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class ScratchCNN(nn.Module):
    """Stem of two stride-2 convolutions, four residual stages, global pooling, one linear layer."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_bn(3, 24, stride=2), nn.ReLU(inplace=True), *_conv_bn(24, widths[0], stride=2), nn.ReLU(inplace=True)
        )
        stages, in_channels = [], widths[0]
        for index, width in enumerate(widths):
            stages.append(ResidualBlock(in_channels, width, stride=1 if index == 0 else 2))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


@register_model(
    "scratch",
    mean=SCRATCH_MEAN,
    std=SCRATCH_STD,
    image_size=96,
    head=("fc",),
    last_block=("stages.3",),
    has_pretrained=False,
)
def scratch(num_classes: int, pretrained: bool = False) -> nn.Module:
    """Compact residual CNN (1.2 M parameters) for training from scratch."""
    return ScratchCNN(num_classes)
