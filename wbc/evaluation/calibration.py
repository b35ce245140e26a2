"""Calibrated confidence, review flags and the out-of-distribution flag, fitted on the validation split.

- **Temperature scaling** (Guo et al. 2017): one scalar ``T`` divides the logits; fitted by
  minimising the negative log-likelihood on valid. It changes confidences, never the predicted class.
- **Review threshold**: the lowest calibrated confidence at which the cells accepted on valid (those
  at or above it) have an error rate of at most ``target_error``; cells below it are flagged ``review``.
- **In-distribution score**: the negative free energy ``T * logsumexp(logits / T)`` (Liu et al. 2020,
  "Energy-based out-of-distribution detection"): high when the network recognises the image, low when
  nothing in it looks like any class. The flag threshold is the ``flag_rate`` quantile of the clean
  validation scores, so that at most that share of clean validation images is flagged.

On a lab's own labelled cells (``wbc adapt``) the same numbers are refitted there (:func:`fit_lab_calibration`), and
the flags reported on those cells are cross-fitted (:func:`cross_fitted_flags`): each cell is judged by thresholds
fitted without it.

The fitted numbers travel with the exported model (``model.json``, key ``calibration``).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from wbc.data.datamodule import DecodedImageDataset
from wbc.inference.calibration import Calibration, in_distribution_score
from wbc.inference.predictor import Predictor

DEFAULT_TARGET_ERROR = 0.005
DEFAULT_FLAG_RATE = 0.05
ECE_BINS = 15


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature that minimises the validation NLL (optimised in log space, so it stays positive)."""
    log_temperature = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")
    logits = logits.float().detach()

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_temperature.exp(), targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_temperature.detach().exp())


def expected_calibration_error(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-label ECE with 15 equal-width bins (torchmetrics)."""
    from torchmetrics.functional.classification import multiclass_calibration_error  # a 5 s import a served model does not need

    return float(
        multiclass_calibration_error(probabilities, targets, num_classes=probabilities.shape[1], n_bins=ECE_BINS, norm="l1")
    )


def review_threshold(confidences: np.ndarray, correct: np.ndarray, target_error: float) -> float:
    """The lowest confidence threshold whose accepted cells (confidence >= it) err at most ``target_error``.

    Returns a value above every confidence (everything goes to review) when no threshold reaches it.
    """
    if len(confidences) == 0:
        raise ValueError("cannot choose a review threshold without any scored cells")
    order = np.argsort(-confidences, kind="stable")
    ranked = confidences[order]
    error_rate = np.cumsum(~correct[order]) / np.arange(1, len(order) + 1)
    # a threshold accepts every cell of equal confidence, so only the end of a run of ties can be cut
    ends_tie = np.append(ranked[:-1] > ranked[1:], True)
    ok = np.flatnonzero((error_rate <= target_error) & ends_tie)
    if len(ok) == 0:
        return float(np.nextafter(ranked[0], np.inf))
    return float(ranked[ok[-1]])


def fit_calibration(
    logits: torch.Tensor,
    targets: torch.Tensor,
    target_error: float = DEFAULT_TARGET_ERROR,
    flag_rate: float = DEFAULT_FLAG_RATE,
) -> Calibration:
    """Fit temperature, review threshold and the out-of-distribution threshold on one labelled split."""
    logits = torch.as_tensor(logits).float()
    targets = torch.as_tensor(targets).long()
    return _calibration_at(logits, targets, fit_temperature(logits, targets), target_error, flag_rate)


def _calibration_at(logits: torch.Tensor, targets: torch.Tensor, temperature: float, target_error: float,
                    flag_rate: float, ood_cells: np.ndarray | None = None) -> Calibration:
    """The calibration at ``temperature``: review threshold, the out-of-distribution threshold as the ``flag_rate``
    quantile of the scores of ``ood_cells`` (bool (N,); None: all), and the record of what it does on these cells."""
    before = torch.softmax(logits, dim=1)
    after = torch.softmax(logits / temperature, dim=1)
    confidences, predicted = after.max(dim=1)
    correct = (predicted == targets).numpy()
    threshold = review_threshold(confidences.numpy(), correct, target_error)
    scores = in_distribution_score(logits, temperature)
    if ood_cells is not None:
        scores = scores[ood_cells]
    calibration = Calibration(
        temperature=temperature,
        review_threshold=threshold,
        target_error=target_error,
        ood_threshold=float(np.quantile(scores, flag_rate, method="lower")),
        flag_rate=flag_rate,
        ece_before=expected_calibration_error(before, targets),
        ece_after=expected_calibration_error(after, targets),
    )
    accepted = ~calibration.needs_review(confidences.numpy())
    calibration.accepted_fraction = float(accepted.mean())
    calibration.accepted_error = float((~correct[accepted]).mean()) if accepted.any() else None
    return calibration


def fit_lab_calibration(
    logits: np.ndarray,
    targets: np.ndarray,
    target_error: float = DEFAULT_TARGET_ERROR,
    flag_rate: float = DEFAULT_FLAG_RATE,
    *,
    fallback_temperature: float = 1.0,
) -> Calibration:
    """Refit temperature, review threshold and out-of-distribution threshold on a lab's labelled cells (raw logits
    float32 (N, 8), class indices (N,)), as :func:`fit_calibration` does on valid, with two differences:

    - the out-of-distribution threshold is the ``flag_rate`` quantile of the scores of the cells the model gets right
      (of all cells when it gets none right), so that at most that share of them is flagged and the flag is left to
      the cells unlike those (on a lab many cells can be wrong; on valid nearly none are, and the two rules agree);
    - when the model gets every cell right, or none, the likelihood has no finite optimum (the temperature would run
      to 0 or to infinity): ``fallback_temperature`` (the model's own, from PBC valid) is kept.

    Raises ValueError without cells."""
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    targets = torch.as_tensor(np.asarray(targets)).long()
    if len(targets) == 0:
        raise ValueError("cannot refit a calibration without labelled cells")
    correct = (logits.argmax(dim=1) == targets).numpy()
    temperature = fit_temperature(logits, targets) if 0 < correct.sum() < len(correct) else fallback_temperature
    return _calibration_at(logits, targets, temperature, target_error, flag_rate, correct if correct.any() else None)


LAB_FOLDS = 2
"""Folds of :func:`cross_fitted_flags`: each half of a lab's labelled cells is judged by thresholds fitted on the other."""


def cross_fitted_flags(
    logits: np.ndarray,
    targets: np.ndarray,
    *,
    folds: int = LAB_FOLDS,
    seed: int = 0,
    target_error: float = DEFAULT_TARGET_ERROR,
    flag_rate: float = DEFAULT_FLAG_RATE,
    fallback_temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(in_distribution, review)`` bool (N,) for a lab's labelled cells (raw logits (N, 8), class indices (N,)), each
    cell's from :func:`fit_lab_calibration` on the folds it is not in (scikit-learn's ``StratifiedKFold``, shuffled with
    ``seed``): honest flags for cells that also fit the calibration the lab is given. Raises ValueError under
    ``folds`` cells, or when every class has fewer than ``folds`` cells (scikit-learn's)."""
    logits, targets = np.asarray(logits, dtype=np.float32), np.asarray(targets)
    if len(targets) < folds:
        raise ValueError(f"cross-fitting over {folds} folds needs at least {folds} labelled cells, got {len(targets)}")
    in_distribution, review = np.zeros(len(targets), bool), np.zeros(len(targets), bool)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)  # a class with one cell: fine
        splits = list(splitter.split(logits, targets))
    for fitting, judged in splits:
        calibration = fit_lab_calibration(logits[fitting], targets[fitting], target_error, flag_rate,
                                          fallback_temperature=fallback_temperature)
        in_distribution[judged] = calibration.in_distribution(calibration.in_distribution_score(logits[judged]))
        review[judged] = calibration.needs_review(calibration.probabilities(logits[judged]).max(axis=1))
    return in_distribution, review


def calibrate_on_lab(
    logits: np.ndarray,
    targets: np.ndarray,
    fitted_on: str,
    *,
    fallback_temperature: float,
    target_error: float = DEFAULT_TARGET_ERROR,
    flag_rate: float = DEFAULT_FLAG_RATE,
    seed: int = 0,
) -> tuple[Calibration, np.ndarray, np.ndarray]:
    """What ``wbc adapt`` gives a lab with labelled cells: the calibration refitted on all of them
    (:func:`fit_lab_calibration`, recorded as fitted on ``fitted_on``), and the cross-fitted ``(in_distribution,
    review)`` flags of :func:`cross_fitted_flags`. The calibration's record of its review threshold (accepted share and
    error among the accepted) is the cross-fitted one: measured in-sample on a few dozen cells it would be 0 % error
    by construction."""
    calibration = fit_lab_calibration(logits, targets, target_error, flag_rate, fallback_temperature=fallback_temperature)
    in_distribution, review = cross_fitted_flags(logits, targets, seed=seed, target_error=target_error,
                                                 flag_rate=flag_rate, fallback_temperature=fallback_temperature)
    correct = np.asarray(logits).argmax(axis=1) == np.asarray(targets)
    calibration.fitted_on = fitted_on
    calibration.accepted_fraction = float((~review).mean())
    calibration.accepted_error = float((~correct[~review]).mean()) if (~review).any() else None
    return calibration, in_distribution, review


def calibrate(
    predictor: Predictor,
    valid: DecodedImageDataset,
    target_error: float = DEFAULT_TARGET_ERROR,
    flag_rate: float = DEFAULT_FLAG_RATE,
    *,
    tta: bool = True,
) -> tuple[Calibration, torch.Tensor]:
    """Fit on ``valid``; return the calibration and the raw single-view logits (N, 8) float32 it was fitted on. With
    ``tta`` its :attr:`~Calibration.tta` part is fitted the same way on the mean logits of the 8 flips/rotations of
    each image (8x the compute of the single views, which are the first of the 8)."""
    targets = torch.from_numpy(valid.targets)
    views = predictor.view_logits_pixels(valid.pixels) if tta else None
    logits = torch.from_numpy(views[0] if tta else predictor.logits_pixels(valid.pixels))
    calibration = fit_calibration(logits, targets, target_error, flag_rate)
    if tta:
        calibration.tta = fit_calibration(torch.from_numpy(views.mean(axis=0, dtype=np.float32)), targets, target_error,
                                          flag_rate)
    return calibration, logits


def calibration_metrics(calibration: Calibration) -> dict[str, float]:
    """What the run records about its calibration (validation split); its ``tta`` part's with the suffix ``_tta``."""
    metrics = {
        "val_ece": calibration.ece_before,
        "val_ece_calibrated": calibration.ece_after,
        "temperature": calibration.temperature,
        "review_threshold": calibration.review_threshold,
        "review_fraction": 1 - calibration.accepted_fraction,
        "accepted_error": calibration.accepted_error,
        "ood_threshold": calibration.ood_threshold,
    }
    if calibration.tta is not None:
        metrics |= {f"{name}_tta": value for name, value in calibration_metrics(calibration.tta).items()
                    if not name.startswith("val_ece")}
    return {name: value for name, value in metrics.items() if value is not None}
