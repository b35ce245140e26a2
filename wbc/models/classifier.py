"""`Classifier`: a network plus its input normalisation, with the freezing that training modes need.

Input is a batch of uint8 RGB images (N, 3, S, S) or floats in [0, 1]; the mean/std buffers
come from the architecture's record and are saved in the state dict with the weights.

Batch norm in frozen parts stays in eval mode: it normalises with the pretrained running
statistics and never updates them, even while the rest of the network is in train mode.
"""

from __future__ import annotations

import torch
from torch import nn

from wbc.models.spec import ModelSpec

MODES = ("scratch", "transfer", "finetune")
UNFREEZE_CHOICES = ("last", "all")
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
               nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)
"""PyTorch's public batch-norm layers (their common base class is private)."""


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether the parameter or module ``name`` lies inside one of the modules ``prefixes``."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


class Classifier(nn.Module):
    def __init__(self, network: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.net = network
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))
        self._frozen_norms: list[nn.Module] = []

    @property
    def arch(self) -> str:
        return self.spec.name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return self.net((images - self.mean) / self.std)

    def train(self, mode: bool = True):
        super().train(mode)
        for norm in self._frozen_norms:
            norm.eval()
        return self

    def set_trainable(self, mode: str, phase: int = 1, unfreeze: str = "last", freeze_stages: int = 0) -> None:
        """Choose which parameters train.

        - ``scratch``: all of them.
        - ``transfer``: only the head.
        - ``finetune``: phase 1 as ``transfer``; phase 2 adds the last block (``unfreeze="last"``)
          or the whole network (``unfreeze="all"``) except its first ``freeze_stages`` stages
          (:attr:`ModelSpec.stages`), which keep their pretrained weights. Nothing below the first
          trainable layer needs gradients, so the backward pass stops there.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        if unfreeze not in UNFREEZE_CHOICES:
            raise ValueError(f"unknown unfreeze {unfreeze!r}: choose one of {', '.join(UNFREEZE_CHOICES)}")
        check_freeze_stages(self.spec, mode, freeze_stages)
        frozen_prefixes = tuple(name for stage in self.spec.stages[:freeze_stages] for name in stage)
        if mode == "scratch" or (mode == "finetune" and phase >= 2 and unfreeze == "all"):
            trainable_prefixes: tuple[str, ...] | None = None
        elif mode == "finetune" and phase >= 2:
            trainable_prefixes = self.spec.head + self.spec.last_block
        else:
            trainable_prefixes = self.spec.head

        def trains(name: str) -> bool:
            if _under(name, frozen_prefixes):
                return False
            return trainable_prefixes is None or _under(name, trainable_prefixes)

        for name, parameter in self.net.named_parameters():
            parameter.requires_grad_(trains(name))
        self._frozen_norms = [
            module
            for name, module in self.net.named_modules()
            if isinstance(module, BATCH_NORMS) and not trains(name)
        ]
        self.train(self.training)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(head parameters, all other parameters), for separate learning rates."""
        head, body = [], []
        for name, parameter in self.net.named_parameters():
            (head if _under(name, self.spec.head) else body).append(parameter)
        return head, body


def check_freeze_stages(spec: ModelSpec, mode: str, freeze_stages: int) -> None:
    """Raise ValueError unless ``freeze_stages`` is 0, or a count of ``spec``'s stages with ``mode`` finetune."""
    if freeze_stages == 0:
        return
    if mode != "finetune":
        raise ValueError(f"freeze_stages={freeze_stages} needs mode finetune (mode is {mode!r}): set it to 0")
    if not 0 <= freeze_stages <= len(spec.stages):
        raise ValueError(
            f"freeze_stages={freeze_stages} is invalid for {spec.name}: expected 0 to {len(spec.stages)} (its stages, stem first)"
        )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
