"""``wbc evaluate``: score a trained model on a split of the PBC data or on any lab's labelled folder, write the
reports, log them to MLflow."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pandas as pd

from wbc import defaults
from wbc.classes import CLASS_NAMES
from wbc.data import BarcelonaDataset, ImageDecodeError, LabelledFolder, load_folder, load_split
from wbc.evaluation.acquisition import check_acquisition
from wbc.evaluation.reports import Evaluation
from wbc.inference import Predictor
from wbc.tracking.datasets import log_image_dataset
from wbc.tracking.registry import adaptation_run, version_params
from wbc.tracking.runs import RUN_KIND_TAG, configure_tracking, log_params_once, run_tags

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"
"""Beside the reports: one row per image (file, true class, predicted class, confidence, flags)."""


def adapted_on_these_cells(model: str, images: str | Path) -> str | None:
    """When ``model`` was adapted by ``wbc adapt`` on the folder ``images`` itself, why its scores there are flattered
    and where the honest figure is; else None."""
    run = adaptation_run(model)
    if run is None or run.data.params.get("images") != str(Path(images).resolve()):
        return None
    params, metrics = run.data.params, run.data.metrics
    held_out = int(params.get("held_out", 0))
    if params.get("labelled_per_class", "0") != "0":
        tuned = int(params.get("image_count", 0)) - held_out
        honest = (f"; on the {held_out} it held out it scored {metrics['lab_after_acc_present']:.4f} among the classes "
                  "present (that run's lab_after_acc_present)" if held_out and "lab_after_acc_present" in metrics else "")
        return (f"{model} was fine-tuned on {tuned} of these cells by wbc adapt (run {run.info.run_id}), so its scores "
                f"on them are flattered{honest}: score it on cells it has not seen")
    return (f"{model} was adapted to these images by wbc adapt (run {run.info.run_id}): its batch-norm statistics and "
            "thresholds were fitted on them, so its flags here are flattered (that run's cross-fitted flags are the "
            "honest ones): score it on cells it has not seen")


def evaluate_model(
    model: str,
    data_dir: str,
    split: str = "valid",
    *,
    images: str | Path | None = None,
    output_dir: str | Path = defaults.EVALUATION_DIR,
    batch_size: int = defaults.SCORING_BATCH,
    track: bool = True,
    experiment: str = defaults.EXPERIMENT,
    tta: bool = False,
    runtime: str = "auto",
    cache_dir: str | None = None,
    skip_bad_images: bool = False,
) -> tuple[Evaluation, list[Path]]:
    """Score ``model`` on ``split`` of ``data_dir``, or with ``images`` on that labelled folder
    (``<folder>/<class>/<image>``, any subset of the classes); write the reports
    (:data:`~wbc.evaluation.reports.REPORT_FILES` and :data:`PREDICTIONS_FILE`) into ``output_dir``; with ``track``,
    log them and the scores (``<split>_acc`` ..., or ``images_acc`` ...: :meth:`Evaluation.metrics`) as a run of
    kind ``evaluate``. Unreadable images stop it with an error naming them all, or with ``skip_bad_images`` are left
    out with a warning (param ``skipped_images``, their count). On a folder it also checks which classes were photographed apart from the others
    (:func:`~wbc.evaluation.acquisition.check_acquisition`): it warns of them, and logs them as the param
    ``photographed_apart``. Returns the scores and the files written. Raises :class:`~wbc.data.DatasetError` for missing or
    misnamed data before the model loads."""
    if images is not None:
        listed = LabelledFolder(images)
        prefix, source = "images", str(Path(images).resolve())
        dataset_root, dataset_name, context = images, Path(images).resolve().name, "evaluation"
    else:
        listed = BarcelonaDataset(data_dir, split)
        prefix, source = split, str(Path(data_dir).resolve())
        dataset_root, dataset_name, context = Path(data_dir) / "barcelona", f"barcelona/{split}", split
    predictor = Predictor.load(model, batch_size=batch_size, tta=tta, runtime=runtime)
    try:
        if images is not None:
            dataset = load_folder(images, predictor.image_size, cache_dir=cache_dir, skip_bad_images=skip_bad_images)
        else:
            dataset = load_split(data_dir, split, predictor.image_size, cache_dir=cache_dir, skip_bad_images=skip_bad_images)
    except ImageDecodeError as error:
        raise ImageDecodeError(f"{error}: remove or replace the unreadable file(s), or leave them out with --skip-bad-images") from None
    skipped = len(listed.samples) - len(dataset)
    if images is not None and (flattered := adapted_on_these_cells(model, images)):
        log.warning(flattered)
    acquisition = check_acquisition(dataset.pixels, dataset.targets) if images is not None else None
    if acquisition is not None and acquisition.apart:
        log.warning("%s: %s, so their scores hold for cells photographed that way, and a fine-tune on this folder (wbc "
                    "adapt) can learn the photograph rather than the cell: label cells of every class on each of those "
                    "sources", images, acquisition.finding())
    scores = predictor.score_pixels(dataset.pixels)
    in_distribution, review = predictor.flags(scores, dataset.pixels)
    evaluation = Evaluation.from_scores(dataset.targets, scores.probabilities, in_distribution, review)
    files = evaluation.write(output_dir)
    table = pd.DataFrame({
        "file": dataset.paths,
        "true": [CLASS_NAMES[t] for t in dataset.targets],
        "predicted": [CLASS_NAMES[p] for p in scores.probabilities.argmax(axis=1)],
        "confidence": scores.probabilities.max(axis=1),
        "in_distribution_score": scores.in_distribution_score,
        "in_distribution": in_distribution,
        "review": review,
    })
    table.to_csv(Path(output_dir) / PREDICTIONS_FILE, index=False)
    files.append(Path(output_dir) / PREDICTIONS_FILE)
    if track:
        configure_tracking(experiment)
        name = Path(images).resolve().name if images is not None else split
        with mlflow.start_run(run_name=f"evaluate {model} on {name}", tags=run_tags(**{RUN_KIND_TAG: "evaluate"})):
            log_params_once(
                version_params(model) | {"model_uri": model, "split": split if images is None else "", "data_dir": source if images is None else "",
                 "images": source if images is not None else "", "size": len(dataset), "tta": tta, "runtime": predictor.runtime,
                 "classes_present": ",".join(CLASS_NAMES[i] for i in evaluation.present_classes)}
                | ({"photographed_apart": str(acquisition)} if acquisition is not None else {})
                | ({"skipped_images": skipped} if skipped else {})
            )
            log_image_dataset(dataset.paths, dataset.targets, dataset_root, dataset_name, context)
            mlflow.log_metrics(evaluation.metrics(prefix))
            for path in files:  # only what this evaluation wrote, whatever else the folder holds
                mlflow.log_artifact(str(path))
    return evaluation, files
