"""``wbc adapt``: a lab brings its own images and leaves with a model for them, registered under the lab's alias.

This slice adapts without labels: the batch-norm statistics are re-estimated on the lab's images
(:mod:`wbc.training.adaptation`) and the out-of-distribution threshold is refitted on them (the share of the lab's
cells it flags becomes ``flag_rate``); temperature and review threshold stay the source model's. When the folder is
labelled (``<class>/<image>``), the labels are used only to measure: accuracy on the lab's cells and on PBC ``valid``
before and after, and how the flags fall. The run (kind ``adapt``) records the lab's images as its dataset; the
model is registered as a new version under the lab's alias, never as ``@champion``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from wbc import defaults
from wbc.classes import CLASS_NAMES
from wbc.data import BarcelonaDataset, DatasetError, LabelledFolder, image_files, load_folder, load_split, load_unlabelled
from wbc.evaluation.calibration import DEFAULT_FLAG_RATE, calibrate
from wbc.evaluation.reports import Evaluation
from wbc.inference import Predictor, export_metrics, export_model
from wbc.serving.pyfunc import log_pyfunc_model
from wbc.tracking.registry import check_lab_alias, register_adapted
from wbc.tracking.runs import RUN_KIND_TAG, configure_tracking, log_params_once, run_tags
from wbc.training.adaptation import reestimate_batch_norm


@dataclass
class AdaptResult:
    run_id: str
    version: str
    alias: str
    images: int
    """The lab's images the statistics were re-estimated on."""
    lab_before: Evaluation | None
    """On the lab's labelled cells (None: the folder has no labels)."""
    lab_after: Evaluation | None
    valid_before: Evaluation
    valid_after: Evaluation

    def summary(self) -> str:
        """What ``wbc adapt`` prints: before and after, on the lab's cells and on PBC valid."""
        lines = [f"adapted on {self.images} of the lab's images (batch-norm statistics, out-of-distribution threshold)"]
        if self.lab_before is not None:
            for name, evaluation in (("before", self.lab_before), ("after", self.lab_after)):
                flags = evaluation.flags
                lines.append(f"lab cells {name}: accuracy {evaluation.present_accuracy:.4f} among the classes present "
                             f"({evaluation.accuracy:.4f} over the eight)"
                             + (f", flagged {100 * flags.out_of_distribution:.1f} %" if flags else ""))
        for name, evaluation in (("before", self.valid_before), ("after", self.valid_after)):
            lines.append(f"PBC valid {name}: accuracy {evaluation.accuracy:.4f}, macro-F1 {evaluation.macro_f1:.4f}")
        lines.append(f"run {self.run_id}; registered as {defaults.MODEL_NAME} version {self.version}, now "
                     f"models:/{defaults.MODEL_NAME}@{self.alias}")
        return "\n".join(lines)


def _scores(predictor: Predictor, dataset) -> Evaluation:
    scores = predictor.score_pixels(dataset.pixels)
    calibration = predictor.calibration
    in_distribution = calibration.in_distribution(scores.in_distribution_score) if calibration else None
    review = calibration.needs_review(scores.probabilities.max(axis=1)) if calibration else None
    return Evaluation.from_scores(dataset.targets, scores.probabilities, in_distribution, review)


def adapt_model(
    model: str,
    images: str | Path,
    alias: str,
    *,
    data_dir: str = defaults.DATA_DIR,
    experiment: str = defaults.EXPERIMENT,
    output_dir: str = defaults.OUTPUT_DIR,
    flag_rate: float = DEFAULT_FLAG_RATE,
    onnx: bool = True,
    cache_dir: str | None = None,
) -> AdaptResult:
    """Adapt ``model`` to the lab's ``images`` without labels and register it as ``@alias`` (see the module). Raises
    :class:`~wbc.tracking.registry.RegistryError` for a reserved alias and :class:`~wbc.data.DatasetError` for missing
    images or PBC data, before any work."""
    check_lab_alias(alias)
    try:
        labelled = LabelledFolder(images)
    except DatasetError as error:
        if "no class folders" not in str(error):
            raise
        labelled = None
    image_files(images)
    BarcelonaDataset(data_dir, "valid")

    predictor = Predictor.load(model, runtime="torch")
    size = predictor.image_size
    lab = load_folder(images, size, cache_dir=cache_dir) if labelled else load_unlabelled(images, size, cache_dir=cache_dir)
    valid = load_split(data_dir, "valid", size, cache_dir=cache_dir)
    if predictor.calibration is None:
        predictor.calibration, _ = calibrate(predictor, valid)
    lab_before = _scores(predictor, lab) if labelled else None
    valid_before = _scores(predictor, valid)

    reestimate_batch_norm(predictor.model, lab.pixels)
    lab_scores = predictor.score_pixels(lab.pixels).in_distribution_score
    predictor.calibration = replace(predictor.calibration, flag_rate=flag_rate,
                                    ood_threshold=float(np.quantile(lab_scores, flag_rate, method="lower")))
    lab_after = _scores(predictor, lab) if labelled else None
    valid_after = _scores(predictor, valid)

    configure_tracking(experiment)
    lab_name = Path(images).resolve().name
    with mlflow.start_run(run_name=f"adapt to {lab_name} ({alias})", tags=run_tags(**{RUN_KIND_TAG: "adapt"})) as run:
        log_params_once({"source_model": model, "images": str(Path(images).resolve()), "alias": alias, "image_count": len(lab),
                         "labelled": bool(labelled), "method": "batch-norm statistics (AdaBN) + out-of-distribution threshold",
                         "flag_rate": flag_rate, "arch": predictor.model.arch, "image_size": size,
                         "data_dir": str(Path(data_dir).resolve())})
        mlflow.log_input(mlflow.data.from_pandas(
            pd.DataFrame({"file": lab.paths, "class": [CLASS_NAMES[t] if t >= 0 else "" for t in lab.targets]}),
            source=str(Path(images).resolve()), name=lab_name), context="adaptation")
        metrics = {}
        for name, evaluation in (("lab_before", lab_before), ("lab_after", lab_after), ("valid_before", valid_before),
                                 ("valid_after", valid_after)):
            if evaluation is not None:
                metrics |= evaluation.metrics(name)
        mlflow.log_metrics(metrics)
        export_dir = Path(output_dir).resolve() / run.info.run_id / "model"
        export_model(predictor.model, size, export_dir, predictor.calibration, onnx=onnx, check_images=valid.pixels)
        mlflow.log_metrics(export_metrics(export_dir))
        log_pyfunc_model(export_dir, example_image=valid.paths[0])
    version = register_adapted(run.info.run_id, alias, source=model)
    return AdaptResult(run.info.run_id, version, alias, len(lab), lab_before, lab_after, valid_before, valid_after)
