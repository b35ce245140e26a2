"""Training: the settings (one dataclass, every default), the LightningModule, its losses, callbacks and trainer,
teachers for distillation, weight averaging, and the named recipes. Imports data, models and inference."""
