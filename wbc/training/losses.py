"""Training losses beside the cross-entropy: knowledge distillation (Hinton et al. 2015)."""

from __future__ import annotations

import torch
from torch.nn import functional


def distillation_loss(logits: torch.Tensor, teacher_probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence from the teachers' softened probabilities, times ``temperature**2`` (so its gradients
    keep their scale whatever the temperature)."""
    log_probabilities = functional.log_softmax(logits.float() / temperature, dim=1)
    return functional.kl_div(log_probabilities, teacher_probabilities, reduction="batchmean") * temperature**2
