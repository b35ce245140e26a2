"""The Lightning ``Trainer`` of a training run: checkpoints (the best by macro-F1, and the last, rewritten every
epoch), the epoch-metric logger, the weights' moving average, the time limit and the devices."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar

from wbc._progress import refresh_steps
from wbc.errors import WBCError
from wbc.training.callbacks import AtomicCheckpointIO, EpochMetricsLogger, WeightEMA
from wbc.training.config import TrainConfig

NEVER = 2**62
"""An epoch interval that never comes: MLflow's autolog then logs no epoch metrics (EpochMetricsLogger does)."""


class TrainingStopped(WBCError, RuntimeError):
    """SIGTERM stopped training (a scheduler's pre-emption, ``docker stop``); the message says how to resume."""

    exit_code = 143  # 128 + SIGTERM, as the shell reports a process ended by it


def is_global_zero() -> bool:
    """Whether this process is rank 0 of a multi-process run (or the only process): the one that talks to MLflow."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def make_trainer(config: TrainConfig, checkpoint_dir: Path, run_id: str | None) -> tuple[pl.Trainer, ModelCheckpoint]:
    """The trainer for ``config``, saving into ``checkpoint_dir``; with the callback that keeps the best checkpoint."""
    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best-epoch{epoch:02d}-f1{val_f1:.4f}",
        auto_insert_metric_name=False,
        monitor="val_f1",
        mode="max",
        save_on_train_epoch_end=True,  # after every callback's on_train_epoch_end: EpochMetricsLogger relies on it
    )
    # Lightning's save_last only refreshes when the best improves; this one is rewritten every epoch.
    latest = ModelCheckpoint(dirpath=checkpoint_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False,
                             save_on_train_epoch_end=True)
    callbacks: list[pl.Callback] = [best, latest, EpochMetricsLogger(run_id)]
    if config.ema:
        callbacks.append(WeightEMA(config.ema, start_epoch=config.resolved_head_epochs))
    if config.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=refresh_steps()))
    trainer = pl.Trainer(
        plugins=[AtomicCheckpointIO()],
        max_epochs=config.epochs,
        max_time={"minutes": config.max_time} if config.max_time else None,
        accelerator=config.accelerator,
        devices=config.resolved_devices,
        strategy=config.strategy,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        default_root_dir=str(checkpoint_dir.parent),
    )
    return trainer, best
