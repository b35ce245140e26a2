"""`WBCClassifierModule`: the LightningModule that trains a :class:`wbc.models.Classifier`.

AdamW with a linear warm-up and cosine decay (fitted to the trainer's ``max_time`` when it has one:
the decay then ends when the time is up, however few epochs fit), optional label smoothing, torchmetrics accuracy
and macro-F1 for train/val/test. Training modes (:meth:`Classifier.set_trainable`):
``scratch`` trains everything; ``transfer`` trains the head on a frozen backbone;
``finetune`` does the same for ``head_epochs`` epochs, then unfreezes the last block (or
everything but the first ``freeze_stages`` stages) and trains it at ``lr * backbone_lr_scale`` with
its own warm-up. Batches that carry soft targets (teachers' probabilities, :mod:`wbc.training.teachers`) train on
``(1 - distill_weight) * cross-entropy + distill_weight * distillation loss`` (``train_loss`` logs the
cross-entropy, ``train_distill_loss`` the other).
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from wbc.classes import NUM_CLASSES
from wbc.models import build_model, count_parameters
from wbc.training.config import TrainConfig, pretrained_for
from wbc.training.losses import distillation_loss

_DEFAULT = TrainConfig().module_arguments()
"""The module's defaults are :class:`TrainConfig`'s, resolved (``lr`` by mode, the head epochs, the image size);
``pretrained=None`` follows the mode, as ``weights=auto`` does."""


def warmup_cosine(start_step: int, warmup_steps: int, total_steps: int):
    """LR factor: 0 before ``start_step``, linear warm-up, then cosine decay to 0 at ``total_steps``.

    ``step`` may be fractional (a position on the schedule rather than a count of steps taken).
    """

    def factor(step: float) -> float:
        step -= start_step
        if step < 0:
            return 0.0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - start_step - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class WBCClassifierModule(pl.LightningModule):
    def __init__(
        self,
        arch: str = _DEFAULT["arch"],
        mode: str = _DEFAULT["mode"],
        lr: float = _DEFAULT["lr"],
        weight_decay: float = _DEFAULT["weight_decay"],
        label_smoothing: float = _DEFAULT["label_smoothing"],
        warmup_steps: int = _DEFAULT["warmup_steps"],
        head_epochs: int = _DEFAULT["head_epochs"],
        unfreeze: str = _DEFAULT["unfreeze"],
        backbone_lr_scale: float = _DEFAULT["backbone_lr_scale"],
        freeze_stages: int = _DEFAULT["freeze_stages"],
        pretrained: bool | None = None,
        image_size: int = _DEFAULT["image_size"],
        distill_weight: float = _DEFAULT["distill_weight"],
        distill_temperature: float = _DEFAULT["distill_temperature"],
        channels_last: bool = True,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        """Arguments as :meth:`TrainConfig.module_arguments` gives them (build it with ``WBCClassifierModule(**config.module_arguments())``)."""
        super().__init__()
        self.save_hyperparameters()
        pretrained = pretrained_for(mode) if pretrained is None else pretrained
        self.model = build_model(arch, num_classes=num_classes, pretrained=pretrained)
        self._set_trainable(self._phase(0))
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")
        self.time_budget_used = 0.0
        """Fraction of the trainer's ``max_time`` used so far (0 without one); see :meth:`schedule_position`."""

    @property
    def two_phase(self) -> bool:
        return self.hparams.mode == "finetune" and self.hparams.head_epochs > 0

    def _phase(self, epoch: int) -> int:
        return 2 if self.hparams.mode == "finetune" and epoch >= self.hparams.head_epochs else 1

    def final_trainable_params(self) -> int:
        """Parameters that train in the last phase (for finetune: after unfreezing)."""
        self._set_trainable(self._phase(10**9))
        trainable, _ = count_parameters(self.model)
        self._set_trainable(self._phase(self.current_epoch))
        return trainable

    def _set_trainable(self, phase: int) -> None:
        hparams = self.hparams
        self.model.set_trainable(hparams.mode, phase=phase, unfreeze=hparams.unfreeze, freeze_stages=hparams.freeze_stages)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def on_train_epoch_start(self) -> None:
        self._set_trainable(self._phase(self.current_epoch))

    def on_before_optimizer_step(self, optimizer) -> None:
        # the LR scheduler steps right after this optimizer step: the next step's rate reads the clock now
        timer = next((callback for callback in self.trainer.callbacks if isinstance(callback, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is not None:
            elapsed = timer.time_elapsed()
            used = min(1.0, elapsed / max(elapsed + remaining, 1e-9))
            # every process must step on the same schedule (their clocks differ)
            self.time_budget_used = float(self.trainer.strategy.broadcast(used))

    def schedule_position(self, step: int, total_steps: int) -> float:
        """Where on the ``total_steps`` schedule training is: the steps taken, or the share of
        ``max_time`` used times ``total_steps`` if that is further along (the run will be cut short)."""
        return max(float(step), self.time_budget_used * total_steps)

    def training_step(self, batch, batch_index):
        images, targets, *soft_targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        # train_loss stays the labels' loss, comparable with every other run's
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        if soft_targets:
            weight = self.hparams.distill_weight
            distill = distillation_loss(logits, soft_targets[0], self.hparams.distill_temperature)
            self.log("train_distill_loss", distill, on_step=False, on_epoch=True, sync_dist=True)
            loss = (1 - weight) * loss + weight * distill
        self.train_metrics.update(logits.detach(), targets)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def _evaluation_step(self, batch, metrics: MetricCollection, prefix: str) -> None:
        images, targets = batch
        logits = self(images)
        self.log(f"{prefix}_loss", self.criterion(logits, targets), on_epoch=True, prog_bar=True, sync_dist=True)
        metrics.update(logits, targets)
        self.log_dict(metrics, on_epoch=True, prog_bar=True)

    def validation_step(self, batch, batch_index):
        self._evaluation_step(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_index):
        self._evaluation_step(batch, self.test_metrics, "test")

    def configure_optimizers(self):
        hparams = self.hparams
        head, body = self.model.parameter_groups()
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total_steps // max(1, self.trainer.max_epochs or 1))
        body_start = steps_per_epoch * hparams.head_epochs if self.two_phase else 0
        body_lr = hparams.lr * (hparams.backbone_lr_scale if hparams.mode == "finetune" else 1.0)
        groups = [
            {"params": head, "lr": hparams.lr, "weight_decay": hparams.weight_decay},
            {"params": body, "lr": body_lr, "weight_decay": hparams.weight_decay},
        ]
        # lr/weight_decay defaults repeat the head group's, which MLflow autolog records as params
        optimizer = torch.optim.AdamW(groups, lr=hparams.lr, weight_decay=hparams.weight_decay)
        warmup = min(hparams.warmup_steps, max(1, total_steps // 5))
        schedules = [warmup_cosine(0, warmup, total_steps), warmup_cosine(body_start, warmup, total_steps)]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            [lambda step, schedule=schedule: schedule(self.schedule_position(step, total_steps)) for schedule in schedules],
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
