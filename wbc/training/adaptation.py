"""Adapting a trained model to a lab's own images without labels: batch-norm statistics re-estimated on them
(AdaBN, Li et al. 2016), with PyTorch's own ``torch.optim.swa_utils.update_bn``. Batch-norm statistics are a main
cause of the collapse of a one-lab model on another lab's cells (Tsutsui et al. 2023)."""

from __future__ import annotations

import numpy as np
import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

from wbc._progress import progress_bar
from wbc.models import BATCH_NORMS, Classifier
from wbc.training.recipes import FEW_SHOT_AUGMENTATION, FEW_SHOT_STEPS

MIN_BATCH_NORM_IMAGES = 16
"""Fewer of a lab's images than this give batch-norm statistics too noisy to adapt on: re-estimated on 2-8 Raabin-WBC
cells the champion lost 7-14 points on the lab's cells, on 16 or more it held (``benchmarks/adabn_image_count.py``)."""


def batch_norm_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [module for module in model.modules() if isinstance(module, BATCH_NORMS)]


def check_source_weight(source_weight: float) -> None:
    """Raises ValueError unless ``source_weight`` (the share of the source's batch-norm statistics to keep) is in [0, 1]."""
    if not 0 <= source_weight <= 1:
        raise ValueError(f"source_weight={source_weight} is invalid: expected a share of the source's batch-norm "
                         "statistics from 0 to 1")


def reestimate_batch_norm(model: Classifier, pixels: np.ndarray, batch_size: int = 32, source_weight: float = 0.0) -> int:
    """Replace every batch-norm layer's running mean and variance by the statistics of ``pixels`` (uint8 (N, 3, S, S),
    the lab's images at the model's size), averaged over all of them; the weights stay. With ``source_weight`` w > 0
    each becomes ``w * source + (1 - w) * lab`` instead, the source's statistics kept in part (Schneider et al. 2020).
    Returns the number of layers. The model is left in eval mode. Raises ValueError without images or for w outside
    [0, 1]."""
    if len(pixels) == 0:
        raise ValueError("no images to re-estimate batch-norm statistics on")
    check_source_weight(source_weight)
    norms = [norm for norm in batch_norm_layers(model) if norm.running_mean is not None]
    source = [(norm.running_mean.clone(), norm.running_var.clone()) for norm in norms] if source_weight else []
    images = torch.from_numpy(np.array(pixels))  # a copy: the cache's arrays are read-only
    # each batch counts once in the average: a short last batch is left out when there are full ones
    loader = DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=False, drop_last=len(images) > batch_size)
    with torch.inference_mode(False):
        update_bn(loader, model)
        for norm, (mean, var) in zip(norms, source):
            norm.running_mean.mul_(1 - source_weight).add_(mean, alpha=source_weight)
            norm.running_var.mul_(1 - source_weight).add_(var, alpha=source_weight)
    model.eval()
    return len(norms)


def fine_tune_few_shot(
    model: Classifier,
    pixels: np.ndarray,
    targets: np.ndarray,
    *,
    replay_pixels: np.ndarray | None = None,
    replay_targets: np.ndarray | None = None,
    steps: int = FEW_SHOT_STEPS,
    batch_size: int = 16,
    replay_fraction: float = 0.5,
    lr: float = 1e-4,
    augment: str = FEW_SHOT_AUGMENTATION,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Fine-tune the whole network on a lab's few labelled cells (``pixels`` uint8 (N, 3, S, S), ``targets`` int (N,)
    class indices), each image transformed by the augmentation named ``augment``
    (:func:`wbc.data.augmentation.train_augmentation`; default :data:`~wbc.training.recipes.FEW_SHOT_AUGMENTATION`,
    ``"none"`` = as they are), AdamW at ``lr`` for ``steps`` steps of ``batch_size``; batch-norm layers stay in eval
    mode (their statistics are the lab's, from :func:`reestimate_batch_norm`). With ``replay_pixels`` and
    ``replay_targets`` (training images of every class, same formats) ``replay_fraction`` of each batch is drawn from
    them, so the classes the lab did not label are still predicted. ``progress`` shows a bar of the steps with the
    running loss on stderr. Returns the loss of each step; the model is left in eval mode.
    Raises ValueError for an unknown ``augment`` or a ``replay_fraction`` outside [0, 1). The few-shot recipe follows
    Chossegros et al. 2024."""
    from wbc.data.augmentation import train_augmentation

    if not 0 <= replay_fraction < 1:
        raise ValueError(f"replay_fraction={replay_fraction} is invalid: expected a share from 0 to below 1")

    generator = torch.Generator().manual_seed(seed)
    transform = train_augmentation(augment) or (lambda image: image)
    lab = torch.from_numpy(np.array(pixels)), torch.as_tensor(np.asarray(targets), dtype=torch.long)
    replay = None
    if replay_pixels is not None and len(replay_pixels):
        replay = torch.from_numpy(np.array(replay_pixels)), torch.as_tensor(np.asarray(replay_targets), dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    norms = batch_norm_layers(model)
    losses = []
    with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)  # the augmentation's draws
        model.train()
        for norm in norms:
            norm.eval()
        bar = progress_bar(range(steps), desc=f"fine-tuning on {len(lab[0])} lab cells", unit="step", disable=not progress)
        for _ in bar:
            lab_count = batch_size if replay is None else max(1, int(batch_size * (1 - replay_fraction)))
            chosen = torch.randint(len(lab[0]), (lab_count,), generator=generator)
            images, labels = lab[0][chosen], lab[1][chosen]
            if replay is not None:
                extra = torch.randint(len(replay[0]), (batch_size - lab_count,), generator=generator)
                images, labels = torch.cat([images, replay[0][extra]]), torch.cat([labels, replay[1][extra]])
            images = torch.stack([transform(image) for image in images])
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return losses
