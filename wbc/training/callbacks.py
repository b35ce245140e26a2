"""Lightning callbacks and plug-ins of a training run: crash-safe checkpoints (whole files, and MLflow epoch
metrics that match them after a kill and resume) and the weights' moving average."""

from __future__ import annotations

import logging
import time

import mlflow
import pytorch_lightning as pl
from lightning_fabric.plugins import TorchCheckpointIO
from mlflow.entities import Metric
from pytorch_lightning.callbacks import EMAWeightAveraging

from wbc._io import atomic_torch_save

log = logging.getLogger(__name__)


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


class WeightEMA(EMAWeightAveraging):
    """Lightning's EMA of the weights, started at epoch ``start_epoch`` (after the head-only epochs).

    Until the first update, validation and checkpoints use the live weights (Lightning's callback would
    swap in the untouched initial copy).
    """

    def __init__(self, decay: float, start_epoch: int = 0) -> None:
        super().__init__(decay=decay)
        self.start_epoch = start_epoch
        self._swapped = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch >= self.start_epoch:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _started(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._swapped = self._started()
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer, pl_module) -> None:
        if self._started():
            self._copy_average_to_current(pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self._started():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that saves with :func:`wbc._io.atomic_torch_save`."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)
