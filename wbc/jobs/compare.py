"""``wbc compare``: the course project's study, as one MLflow run with one child run per model.

Scratch CNN, then transfer learning and fine-tuning for ResNet-50, AlexNet, VGG-16 and
EfficientNet-Lite0. The parent run holds the comparison table (accuracy, macro-F1, train
minutes, parameters, model size, inference images/s) and a chart. A model whose ImageNet
weights cannot be had on this machine keeps its row, with the reason, instead of vanishing.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from wbc import defaults
from wbc.data import load_split
from wbc.inference import EXPORT_WEIGHTS, Predictor
from wbc.jobs.train import train
from wbc.models import PretrainedWeightsUnavailable
from wbc.tracking.runs import RUN_KIND_TAG, configure_tracking, run_tags
from wbc.training.config import TrainConfig

STUDY: tuple[tuple[str, str], ...] = (
    ("scratch", "scratch"),
    ("resnet50", "transfer"),
    ("resnet50", "finetune"),
    ("alexnet", "transfer"),
    ("alexnet", "finetune"),
    ("vgg16", "transfer"),
    ("vgg16", "finetune"),
    ("efficientnet_lite0", "transfer"),
    ("efficientnet_lite0", "finetune"),
)
COLUMNS = [
    "arch", "mode", "status", "valid_acc", "valid_f1", "train_minutes", "total_params", "model_mb",
    "inference_img_s", "torch_img_s", "run_id",
]
"""``inference_img_s``: the served runtime (ONNX Runtime when the export checked out); ``torch_img_s``: eager PyTorch."""


def _inference_speed(model_dir: Path, config: TrainConfig, runtime: str, images: int = 256) -> float:
    predictor = Predictor.load(model_dir, runtime=runtime)
    valid = load_split(config.data_dir, "valid", predictor.image_size, limit_per_class=config.limit_per_class, cache_dir=config.cache_dir)
    pixels = np.asarray(valid.pixels[:images])
    predictor.predict_pixels(pixels[: predictor.batch_size])  # warm-up
    started = time.perf_counter()
    predictor.predict_pixels(pixels)
    return len(pixels) / (time.perf_counter() - started)


def _study_row(arch: str, mode: str, config: TrainConfig) -> dict:
    row = dict.fromkeys(COLUMNS, np.nan) | {"arch": arch, "mode": mode}
    try:
        result = train(replace(config, arch=arch, mode=mode))
    except PretrainedWeightsUnavailable as error:
        return row | {"status": f"not run: no ImageNet weights on this machine ({str(error).split(' are not at ')[0]})"}
    except Exception as error:  # noqa: BLE001 - one failing model must not end the study
        return row | {"status": f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
    run = mlflow.MlflowClient().get_run(result.run_id)
    model_dir = Path(result.best_checkpoint).parent.parent / "model"
    return row | {
        "status": "ok",
        "valid_acc": result.best_val_acc,
        "valid_f1": result.best_val_f1,
        "train_minutes": result.train_minutes,
        "total_params": int(run.data.params["total_params"]),
        "model_mb": (model_dir / EXPORT_WEIGHTS).stat().st_size / 2**20,
        "inference_img_s": _inference_speed(model_dir, config, "auto"),
        "torch_img_s": _inference_speed(model_dir, config, "torch"),
        "run_id": result.run_id,
    }


def comparison_figure(table: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = table[table["status"] == "ok"]
    labels = [f"{a.replace('efficientnet_', '')}\n{m}" for a, m in zip(table["arch"], table["mode"])]
    figure, (accuracy_axis, minutes_axis) = plt.subplots(1, 2, figsize=(14, 5))
    bottom = max(0.0, (done["valid_acc"].min() * 100 - 5) if len(done) else 0.0)
    accuracy_axis.bar(labels, table["valid_acc"].fillna(0) * 100)
    for position, status in enumerate(table["status"]):
        if status != "ok":
            accuracy_axis.text(position, bottom + 1, "not run" if status.startswith("not run") else "failed",
                               rotation=90, ha="center", va="bottom", color="gray")
    accuracy_axis.set_ylabel("valid accuracy, %")
    accuracy_axis.set_ylim(bottom, 100)
    accuracy_axis.tick_params(axis="x", labelsize=7)
    minutes_axis.scatter(done["train_minutes"], done["valid_acc"] * 100)
    for _, row in done.iterrows():
        minutes_axis.annotate(f"{row['arch'].replace('efficientnet_', '')} {row['mode']}", (row["train_minutes"], row["valid_acc"] * 100), fontsize=7)
    minutes_axis.set_xlabel("train minutes")
    minutes_axis.set_ylabel("valid accuracy, %")
    figure.suptitle("wbc compare")
    figure.tight_layout()
    return figure


def run_study(config: TrainConfig, entries=STUDY, experiment: str = defaults.COMPARE_EXPERIMENT) -> tuple[str, pd.DataFrame]:
    """Train every (arch, mode) in ``entries`` as child runs of one study run; return its id and the table."""
    import matplotlib.pyplot as plt

    configure_tracking(experiment)
    config = replace(config, experiment=experiment)
    with mlflow.start_run(run_name="compare", tags=run_tags(**{RUN_KIND_TAG: "compare"})) as parent:
        mlflow.log_params({"epochs": config.epochs, "image_size": config.image_size, "limit_per_class": config.limit_per_class,
                           "models": ",".join(f"{a}:{m}" for a, m in entries)})
        table = pd.DataFrame([_study_row(arch, mode, config) for arch, mode in entries], columns=COLUMNS)
        with tempfile.TemporaryDirectory() as folder:
            table.to_csv(Path(folder) / "comparison.csv", index=False)
            mlflow.log_artifacts(folder)
        figure = comparison_figure(table)
        mlflow.log_figure(figure, "comparison.png")
        plt.close(figure)
        ran = table[table["status"] == "ok"]
        if len(ran):
            mlflow.log_metric("best_valid_acc", float(ran["valid_acc"].max()))
    return parent.info.run_id, table
