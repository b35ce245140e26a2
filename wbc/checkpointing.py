"""Crash-safe checkpoints: whole files, and MLflow metrics that match them after a kill and resume.

Checkpoint files are written beside their final name, synced, then renamed into place. A kill at
any moment leaves either the previous complete file or the new complete file, never a partial one
(Lightning's own writer stages through the system temp folder, which is not atomic when that
folder is on another file system).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import pytorch_lightning as pl
import torch
from mlflow.entities import Metric

log = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class EpochMetricsLogger(pl.Callback):
    """Logs each epoch's metrics to an MLflow run once a checkpoint holding that epoch is on disk.

    Lightning runs its checkpoint callbacks last at the end of an epoch, so metrics logged there
    (as MLflow's autolog does) reach the run before the checkpoint: a kill in between made the
    resumed run redo that epoch and log it twice. Here an epoch's metrics wait in this callback's
    state, which the checkpoint saves, and go to MLflow when the next epoch starts or fitting ends
    (also when a resumed run finds nothing left to train); a resumed run logs only what the killed
    run had not. If MLflow cannot be reached, training goes on and the metrics wait for the next try.
    """

    def __init__(self, run_id: str | None):
        self.run_id = run_id  # None on the ranks that do not talk to MLflow
        self.pending: list[dict] = []
        self._restored = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pending.append({
            "step": trainer.current_epoch,
            "timestamp": int(time.time() * 1000),
            "metrics": {name: float(value) for name, value in trainer.callback_metrics.items()},
        })

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_pending(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_pending(trainer)

    def state_dict(self) -> dict:
        return {"pending": self.pending}

    def load_state_dict(self, state_dict: dict) -> None:
        self.pending, self._restored = list(state_dict["pending"]), True

    def _log_pending(self, trainer: pl.Trainer) -> None:
        if self.run_id is None or not trainer.is_global_zero or not self.pending:
            return
        client = mlflow.MlflowClient()
        try:
            metrics = [Metric(name, value, epoch["timestamp"], epoch["step"]) for epoch in self.pending for name, value in epoch["metrics"].items()]
            if self._restored:  # the killed run may have logged some after saving its checkpoint
                logged = {(m.key, m.step) for key in {m.key for m in metrics} for m in client.get_metric_history(self.run_id, key)}
                metrics = [m for m in metrics if (m.key, m.step) not in logged]
            if metrics:
                client.log_batch(self.run_id, metrics=metrics)
        except mlflow.exceptions.MlflowException as error:
            log.warning("could not log epoch metrics to MLflow run %s, will retry: %s", self.run_id, error)
            return
        self.pending, self._restored = [], False
