"""``wbc average`` and stage 3 of ``wbc main``: a weight-space average of two models as a run of its own,
calibrated, scored and logged like a training run (:mod:`wbc.training.averaging` does the averaging)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import mlflow

from wbc import defaults
from wbc.data import load_split
from wbc.inference import load_model_from
from wbc.tracking.model_logging import LoggedModel, log_model_run
from wbc.tracking.runs import RUN_KIND_TAG, configure_tracking, log_params_once, run_tags
from wbc.training.averaging import AveragingError, average_weights, fitted_weight


@dataclass
class AveragedRun:
    run_id: str
    logged: LoggedModel
    weight: float
    """The second model's share in the kept average."""
    tried: dict[float, float] = field(default_factory=dict)
    """Valid accuracy by weight tried (when several were given)."""
    min_accuracy: float = 0.0
    """The floor the kept weight had to reach on valid (when several were given)."""

    def summary(self) -> str:
        """What ``wbc average`` prints."""
        lines = []
        if self.tried:
            fallback = (f" (none reached {self.min_accuracy:.4f}: the most accurate)"
                        if self.tried[self.weight] < self.min_accuracy - 1e-9 else "")
            lines.append("valid accuracy by weight on the second model (weight:accuracy): "
                         + " ".join(f"{w:g}:{a:.6f}" for w, a in self.tried.items()) + f"; kept {self.weight:g}{fallback}")
        evaluation = self.logged.evaluation
        lines.append(f"run {self.run_id}: valid accuracy {evaluation.accuracy:.4f}, macro-F1 {evaluation.macro_f1:.4f}")
        if self.logged.shiftbench is not None:
            lines += ["shifted validation benchmark (percent):", self.logged.shiftbench.summary()]
        return "\n".join(lines)


def average_run(
    first_uri: str,
    second_uri: str,
    weight: float | Sequence[float],
    data_dir: str,
    *,
    min_accuracy: float = 0.0,
    limit_per_class: int = 0,
    experiment: str = defaults.EXPERIMENT,
    output_dir: str = defaults.OUTPUT_DIR,
    shiftbench: bool = True,
    onnx: bool = True,
    int8: bool = False,
    cache_dir: str | None = None,
    run_name: str | None = None,
    progress: bool = True,
) -> AveragedRun:
    """Average two models into a new run (tagged as a training run, so the registry weighs it like one);
    ``onnx`` and ``int8`` choose the exported flavours as in training. Given several weights (shares of the
    second model), the run keeps the first that scores at least ``min_accuracy`` on valid
    (:func:`fitted_weight`)."""
    started = time.perf_counter()
    first, image_size = load_model_from(first_uri)
    second, second_size = load_model_from(second_uri)
    if image_size != second_size:
        raise AveragingError(f"cannot average models trained at {image_size} and {second_size} px")
    valid = load_split(data_dir, "valid", image_size, limit_per_class=limit_per_class, cache_dir=cache_dir)
    tried = {}
    if isinstance(weight, (int, float)):
        weight = float(weight)
    else:
        weight, tried = fitted_weight(first, second, weight, image_size, valid, min_accuracy)
    model = average_weights(first, second, weight)
    configure_tracking(experiment)
    name = run_name or f"average {model.arch} {image_size}px, {weight:g} of the second"
    with mlflow.start_run(run_name=name, tags=run_tags(**{RUN_KIND_TAG: "train", "wbc.averaged": "true"})) as run:
        log_params_once(
            {"arch": model.arch, "mode": "average", "image_size": image_size, "average_of": f"{first_uri} {second_uri}",
             "average_weight": weight, "data_dir": str(Path(data_dir).resolve()), "val_size": len(valid),
             "limit_per_class": limit_per_class}
            | ({"average_weights_tried": " ".join(f"{w:g}:{a:.6f}" for w, a in tried.items()),
                "average_min_accuracy": round(min_accuracy, 6)} if tried else {})
        )
        export_dir = Path(output_dir).resolve() / run.info.run_id / "model"
        logged = log_model_run(model, image_size, valid, export_dir, data_dir=data_dir, shiftbench=shiftbench,
                               onnx=onnx, int8=int8, cache_dir=cache_dir, progress=progress)
        mlflow.log_metric("train_minutes", (time.perf_counter() - started) / 60)
    return AveragedRun(run.info.run_id, logged, weight, tried, min_accuracy)
