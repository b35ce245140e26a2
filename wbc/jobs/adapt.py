"""``wbc adapt``: a lab brings its own images and leaves with a model for them, registered under the lab's alias.

Always, without labels: the batch-norm statistics are re-estimated on all the lab's images
(:mod:`wbc.training.adaptation`); without a fine-tune, half of PBC's are kept in the mix
(:data:`~wbc.training.recipes.LABEL_FREE_SOURCE_WEIGHT`). With ``labelled_per_class`` N > 0 and a labelled folder (``<class>/<image>``),
the network is then fine-tuned on up to N cells of each class (seeded; zoomed 0.7-1.5x among the augmentations,
:data:`~wbc.training.recipes.FEW_SHOT_AUGMENTATION`), half of each batch replaying PBC training images so the classes
the lab did not label are still predicted; the lab's other cells are held out (with none left, the lab's accuracy
is not measured and the calibration is as without labels).

Calibration: with at least :data:`MIN_LAB_CALIBRATION_CELLS` labelled cells not used to fine-tune, temperature, review
threshold and out-of-distribution threshold are refitted on them
(:func:`~wbc.evaluation.calibration.fit_lab_calibration`), and the flags reported on them are cross-fitted (each half
judged by thresholds fitted on the other). Otherwise the temperature and review threshold come from PBC ``valid``
(refitted there after a fine-tune) and the out-of-distribution threshold from all the lab's images (the share it
flags becomes ``flag_rate``). It reports accuracy on the lab's (held-out) cells and on PBC ``valid``, before and
after, and how the flags fall. An adapted model carries no thresholds for ``tta`` (its flags are unknown there).
The run (kind ``adapt``) records the lab's images as its dataset; the model is registered as a new version under the
lab's alias, never as ``@champion``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import numpy as np

from wbc import defaults
from wbc.data import BarcelonaDataset, DatasetError, LabelledFolder, NoClassFolders, image_files, load_folder, load_split, load_unlabelled
from wbc.evaluation.acquisition import AcquisitionCheck, check_acquisition
from wbc.evaluation.calibration import DEFAULT_FLAG_RATE, LAB_FOLDS, calibrate, calibrate_on_lab
from wbc.evaluation.reports import Evaluation
from wbc.inference import Predictor, export_metrics, export_model
from wbc.inference.calibration import is_blank
from wbc.serving.pyfunc import log_pyfunc_model
from wbc.tracking.datasets import log_image_dataset
from wbc.tracking.registry import check_lab_alias, register_adapted, registered_version
from wbc.tracking.runs import RUN_KIND_TAG, configure_tracking, log_params_once, run_tags
from wbc.training.adaptation import MIN_BATCH_NORM_IMAGES, check_source_weight, fine_tune_few_shot, reestimate_batch_norm
from wbc.training.recipes import FEW_SHOT_AUGMENTATION, FEW_SHOT_STEPS, LABEL_FREE_SOURCE_WEIGHT

log = logging.getLogger(__name__)


@dataclass
class AdaptResult:
    run_id: str
    version: str
    alias: str
    images: int
    """The lab's images the statistics were re-estimated on."""
    tuned: int
    """Labelled cells the network was fine-tuned on (0: no labels used)."""
    measured: int
    """Labelled cells the before/after accuracy is measured on (held out from the fine-tuning)."""
    lab_before: Evaluation | None
    """On the lab's labelled cells (None: the folder has no labels)."""
    lab_after: Evaluation | None
    valid_before: Evaluation
    valid_after: Evaluation
    calibrated_on: str
    """Where the registered model's temperature and thresholds were fitted (its calibration's ``fitted_on``)."""
    source_weight: float = 0.0
    """The share of PBC's batch-norm statistics kept beside the lab's."""
    previous_version: str | None = None
    """The version the alias pointed at before (None: a new alias)."""
    acquisition: AcquisitionCheck | None = None
    """With a fine-tune, the classes of the lab's labelled folder that their background colour alone tells from the
    rest (:mod:`wbc.evaluation.acquisition`); None without one."""

    def warnings(self) -> list[str]:
        """What the lab should know before serving the adapted model: it answers the lab's measured cells worse than
        the model it came from, or its flags there no longer tell wrong answers from right ones, or some of its
        classes were photographed apart from the others."""
        found = []
        if self.acquisition is not None and self.acquisition.apart:
            measured = "; the accuracy measured on them says little about the cells" if self.measured else ""
            found.append(f"in the lab's folder, {self.acquisition.finding()}, so a fine-tune can learn the photograph "
                         f"rather than the cell{measured}. Label cells of every class on each of those sources")
        before, after = self.lab_before, self.lab_after
        if before is not None and after is not None:
            if after.present_accuracy < before.present_accuracy:
                found.append(f"the adapted model is right on fewer of the lab's cells than the model it came from "
                             f"({after.present_accuracy:.4f} against {before.present_accuracy:.4f}): keep serving that "
                             "one, or adapt with --labelled-per-class")
            flags = after.flags
            if flags is not None and flags.error_flagged is not None and flags.error_unflagged \
                    and flags.error_unflagged >= flags.error_flagged:
                found.append(f"its out-of-distribution flag no longer separates wrong answers from right ones on the lab's "
                             f"cells ({100 * flags.error_unflagged:.1f} % errors among the unflagged, "
                             f"{100 * flags.error_flagged:.1f} % among the flagged): do not rely on it")
        return found

    def summary(self) -> str:
        """What ``wbc adapt`` prints: before and after, on the lab's cells and on PBC valid."""
        how = f"fine-tuned on {self.tuned} labelled cells, " if self.tuned else ""
        statistics = batch_norm_method(self.source_weight)
        lines = [f"adapted on {self.images} of the lab's images ({how}{statistics}); calibrated on {self.calibrated_on}"]
        if self.lab_before is not None:
            cells = f"{self.measured} held-out lab cells" if self.tuned else f"{self.measured} lab cells"
            for name, evaluation in (("before", self.lab_before), ("after", self.lab_after)):
                lines.append(f"{cells} {name}: accuracy {evaluation.present_accuracy:.4f} among the classes present "
                             f"({evaluation.accuracy:.4f} over the eight)"
                             + (f"; {evaluation.flags_summary()}" if evaluation.flags else ""))
        elif self.tuned:
            lines.append("no labelled cells were left to measure on (all were fine-tuned on): the lab's accuracy is not "
                         "measured; hold some out with a lower --labelled-per-class")
        else:
            lines.append("the lab's accuracy is not measured (no labelled cells): before serving it, score it and the "
                         "model it came from on labelled cells of the lab's (<class>/<image>) with wbc evaluate MODEL "
                         "--images FOLDER; its out-of-distribution flag fires on a set share of these images by "
                         "construction (--flag-rate), which says nothing of the cells it gets wrong")
        for name, evaluation in (("before", self.valid_before), ("after", self.valid_after)):
            lines.append(f"PBC valid {name}: accuracy {evaluation.accuracy:.4f}, macro-F1 {evaluation.macro_f1:.4f}")
        lines += [f"warning: {warning}" for warning in self.warnings()]
        uri = f"models:/{defaults.MODEL_NAME}@{self.alias}"
        moved = f" (moved from version {self.previous_version})" if self.previous_version else ""
        lines.append(f"run {self.run_id}; registered as {defaults.MODEL_NAME} version {self.version}, now {uri}{moved}; "
                     f"serve it with: wbc app --model {uri}")
        return "\n".join(lines)


def batch_norm_method(source_weight: float) -> str:
    """How the batch-norm statistics were adapted, in the words the summary and the run's ``method`` param use."""
    return f"batch-norm statistics (AdaBN), {source_weight:g} of PBC's kept" if source_weight else "batch-norm statistics (AdaBN)"


def _scores(predictor: Predictor, dataset) -> Evaluation:
    scores = predictor.score_pixels(dataset.pixels)
    return Evaluation.from_scores(dataset.targets, scores.probabilities, *predictor.flags(scores, dataset.pixels))


MIN_LAB_CALIBRATION_CELLS = 10
"""Fewer labelled cells left over from fine-tuning than this: the calibration is not refitted on the lab's cells."""

REPLAY_PER_CLASS = 40
"""PBC training images per class replayed while fine-tuning on a lab's cells."""


def split_per_class(targets: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (int64, sorted) of up to ``per_class`` cells of each class of ``targets`` (class indices (N,)), drawn
    with ``seed``, and of the rest: ``wbc adapt --labelled-per-class``'s fine-tune and held-out cells."""
    rng = np.random.default_rng(seed)
    tuning = []
    for target in np.unique(targets):
        members = np.flatnonzero(targets == target)
        tuning += sorted(rng.choice(members, size=min(per_class, len(members)), replace=False).tolist())
    tuning = np.asarray(sorted(tuning), dtype=np.int64)
    return tuning, np.setdiff1d(np.arange(len(targets)), tuning)


def adapt_model(
    model: str,
    images: str | Path,
    alias: str,
    *,
    data_dir: str = defaults.DATA_DIR,
    experiment: str = defaults.EXPERIMENT,
    output_dir: str = defaults.OUTPUT_DIR,
    flag_rate: float = DEFAULT_FLAG_RATE,
    labelled_per_class: int = 0,
    steps: int = FEW_SHOT_STEPS,
    seed: int = 0,
    source_weight: float | None = None,
    onnx: bool = True,
    cache_dir: str | None = None,
) -> AdaptResult:
    """Adapt ``model`` to the lab's ``images`` without labels and register it as ``@alias`` (see the module).
    ``source_weight``: the share of PBC's batch-norm statistics kept beside the lab's (None:
    :data:`~wbc.training.recipes.LABEL_FREE_SOURCE_WEIGHT` without a fine-tune, 0 with ``labelled_per_class``; ValueError
    outside [0, 1]). Raises
    :class:`~wbc.tracking.registry.RegistryError` for a reserved alias and :class:`~wbc.data.DatasetError` for missing
    images, fewer than :data:`~wbc.training.adaptation.MIN_BATCH_NORM_IMAGES` of them, or missing PBC data, before any
    work."""
    check_lab_alias(alias)
    if source_weight is None:
        source_weight = 0.0 if labelled_per_class else LABEL_FREE_SOURCE_WEIGHT
    check_source_weight(source_weight)  # before any work
    files = image_files(images)
    try:
        labelled = LabelledFolder(images)
    except NoClassFolders:
        labelled = None
    count = len(labelled.samples) if labelled is not None else len(files)  # a labelled folder: its class folders only
    if count < MIN_BATCH_NORM_IMAGES:
        raise DatasetError(f"{images} holds {count} image(s){' in its class folders' if labelled is not None else ''}: "
                           f"adapting needs at least {MIN_BATCH_NORM_IMAGES} of the lab's images (fewer give batch-norm "
                           "statistics too noisy to adapt on)")
    if labelled_per_class and labelled is None:
        raise DatasetError(f"{images}: labelled_per_class={labelled_per_class} needs labelled cells: <folder>/<class>/<image>")
    BarcelonaDataset(data_dir, "valid")
    if labelled_per_class:
        BarcelonaDataset(data_dir, "train")

    source_version = registered_version(model)  # now: an alias can move while this runs, and after
    source = model if source_version is None else f"models:/{source_version.name}/{source_version.version}"
    predictor = Predictor.load(source, runtime="torch")
    size = predictor.image_size
    lab = load_folder(images, size, cache_dir=cache_dir) if labelled else load_unlabelled(images, size, cache_dir=cache_dir)
    valid = load_split(data_dir, "valid", size, cache_dir=cache_dir)
    if predictor.calibration is None:
        predictor.calibration, _ = calibrate(predictor, valid, tta=False)
    tuning, held_out = split_per_class(lab.targets, labelled_per_class, seed) if labelled_per_class else ([], None)
    if held_out is not None and len(held_out) == 0:
        log.warning("%s holds at most %d labelled cells per class: all %d will fine-tune and none is left to measure the "
                    "lab's accuracy on; a lower --labelled-per-class holds some out", images,
                    np.bincount(lab.targets).max(), len(tuning))
    measured = lab.subset(held_out) if held_out is not None else lab
    lab_name = Path(images).resolve().name
    measurable = labelled is not None and len(measured) > 0
    lab_before = _scores(predictor, measured) if measurable else None
    acquisition = check_acquisition(lab.pixels, lab.targets) if labelled_per_class else None
    if acquisition is not None and acquisition.apart:
        log.warning("%s: the background colour alone %s: fine-tuning anyway (more in the warning at the end)", images,
                    acquisition.told())
    valid_before = _scores(predictor, valid)

    reestimate_batch_norm(predictor.model, lab.pixels, source_weight=source_weight)
    if labelled_per_class:
        replay = load_split(data_dir, "train", size, limit_per_class=REPLAY_PER_CLASS, cache_dir=cache_dir)
        fine_tune_few_shot(predictor.model, lab.pixels[tuning], lab.targets[tuning], replay_pixels=replay.pixels,
                           replay_targets=replay.targets, steps=steps, augment=FEW_SHOT_AUGMENTATION, seed=seed, progress=True)
    source_calibration = predictor.calibration
    target_error = source_calibration.target_error
    if labelled and len(measured) >= MIN_LAB_CALIBRATION_CELLS:
        logits = predictor.logits_pixels(measured.pixels)
        fitted_on = (f"{len(measured)} labelled cells of {lab_name}{' held out from the fine-tune' if labelled_per_class else ''}"
                     f" (flags on them cross-fitted over {LAB_FOLDS} folds)")
        predictor.calibration, in_distribution, review = calibrate_on_lab(
            logits, measured.targets, fitted_on, fallback_temperature=source_calibration.temperature,
            target_error=target_error, flag_rate=flag_rate, seed=seed)
        in_distribution &= ~is_blank(measured.pixels)
        lab_after = Evaluation.from_scores(measured.targets, predictor.calibration.probabilities(logits), in_distribution, review)
    else:
        if labelled_per_class:
            predictor.calibration, _ = calibrate(predictor, valid, target_error, flag_rate, tta=False)  # the network changed
        lab_scores = predictor.score_pixels(lab.pixels).in_distribution_score
        fitted_on = (f"{predictor.calibration.fitted_on}; out-of-distribution threshold: the {len(lab)} images of "
                     f"{lab_name}")
        predictor.calibration = replace(predictor.calibration, flag_rate=flag_rate, fitted_on=fitted_on,
                                        ood_threshold=float(np.quantile(lab_scores, flag_rate, method="lower")), tta=None)
        lab_after = _scores(predictor, measured) if measurable else None
    valid_after = _scores(predictor, valid)

    statistics = batch_norm_method(source_weight)
    configure_tracking(experiment)
    with mlflow.start_run(run_name=f"adapt to {lab_name} ({alias})", tags=run_tags(**{RUN_KIND_TAG: "adapt"})) as run:
        log_params_once({"source_model": model, "source_model_version": source, "images": str(Path(images).resolve()), "alias": alias, "image_count": len(lab),
                         "labelled": bool(labelled), "labelled_per_class": labelled_per_class, "steps": steps if labelled_per_class else 0,
                         **({"few_shot_augment": FEW_SHOT_AUGMENTATION} if labelled_per_class else {}),
                         "seed": seed, "held_out": len(measured) if measurable else 0,
                         "method": statistics + (" + few-shot fine-tuning" if labelled_per_class else ""),
                         "batch_norm_source_weight": source_weight,
                         "calibrated_on": predictor.calibration.fitted_on,
                         "flag_rate": flag_rate, "arch": predictor.model.arch, "image_size": size,
                         "photographed_apart": str(acquisition) if acquisition is not None else "not tested (no fine-tune)",
                         "data_dir": str(Path(data_dir).resolve())})
        log_image_dataset(lab.paths, lab.targets, images, lab_name, "adaptation")
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
    version, previous_version = register_adapted(run.info.run_id, alias, source=source)
    return AdaptResult(run.info.run_id, version, alias, len(lab), len(tuning), len(measured) if measurable else 0,
                       lab_before, lab_after, valid_before, valid_after, predictor.calibration.fitted_on, source_weight,
                       previous_version, acquisition)
