"""Temperature scaling, review threshold, the out-of-distribution flag, and the lab-to-lab shifts."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from wbc.inference.calibration import Calibration, in_distribution_score

from wbc.evaluation.calibration import (calibrate_on_lab, cross_fitted_flags, expected_calibration_error, fit_calibration,
                                        fit_lab_calibration, fit_temperature, review_threshold)
from wbc.data.augmentation import train_augmentation
from wbc.data.shifts import SEVERITIES, SHIFTS, apply_shift, magnify
from wbc.inference import Predictor, export_model, load_calibration
from wbc.models import build_model


def overconfident_logits(n=4000, temperature=2.5, seed=0):
    """Logits whose labels are drawn from softmax(logits / temperature): the right temperature is known."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 8, generator=generator) * 4
    targets = torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=generator).squeeze(1)
    return logits, targets


def test_temperature_is_recovered_and_lowers_calibration_error():
    logits, targets = overconfident_logits()
    temperature = fit_temperature(logits, targets)
    assert temperature == pytest.approx(2.5, rel=0.08)
    calibration = fit_calibration(logits, targets)
    assert calibration.temperature == pytest.approx(temperature)
    assert calibration.ece_after < calibration.ece_before / 3
    assert calibration.ece_before == pytest.approx(expected_calibration_error(torch.softmax(logits, 1), targets))


def test_review_threshold_reaches_the_target_error_and_respects_ties():
    confidences = np.array([0.99, 0.98, 0.97, 0.90, 0.90, 0.80, 0.60])
    correct = np.array([True, True, True, True, False, True, False])
    # accepting down to 0.97 has 0 errors; 0.90 would accept both tied cells (1 error in 5)
    assert review_threshold(confidences, correct, target_error=0.1) == 0.97
    assert review_threshold(confidences, correct, target_error=0.2) == 0.80
    assert review_threshold(confidences, correct, target_error=0.3) == 0.60
    nothing = review_threshold(np.array([0.9, 0.8]), np.array([False, True]), target_error=0.0)
    assert nothing > 0.9


def test_fitted_flags_hold_their_promises_on_the_fitting_split():
    logits, targets = overconfident_logits(seed=1)
    calibration = fit_calibration(logits, targets, target_error=0.05, flag_rate=0.05)
    scores = in_distribution_score(logits, calibration.temperature)
    assert (scores < calibration.ood_threshold).mean() <= 0.05
    probabilities = calibration.probabilities(logits)
    confidences, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    targets = np.asarray(targets)
    accepted = confidences >= calibration.review_threshold
    assert (predicted[accepted] != targets[accepted]).mean() <= 0.05
    assert float(accepted.mean()) == pytest.approx(calibration.accepted_fraction)
    assert Calibration.from_dict(json.loads(json.dumps(calibration.to_dict()))) == calibration


def _lab_logits(seed=0):
    """A lab's 90 labelled cells: 60 the model recognises (confident, right) and 30 it does not (flat logits, wrong)."""
    generator = np.random.default_rng(seed)
    targets = np.repeat(np.arange(3), 30)
    logits = generator.normal(0, 0.3, (90, 8)).astype(np.float32)
    recognised = np.arange(90) % 3 != 0
    logits[recognised, targets[recognised]] += generator.uniform(6, 9, recognised.sum())
    logits[~recognised, (targets[~recognised] + 1) % 8] += 0.8
    return logits, targets, recognised


def test_a_lab_calibration_flags_the_cells_it_gets_wrong_not_a_fixed_share_of_all():
    logits, targets, recognised = _lab_logits()
    lab = fit_lab_calibration(logits, targets, flag_rate=0.05)
    flagged = ~lab.in_distribution(lab.in_distribution_score(logits))
    assert flagged[recognised].mean() <= 0.05, "at most flag_rate of the cells it gets right"
    assert flagged[~recognised].mean() >= 0.9, "the unfamiliar, wrong cells are flagged"
    pooled = fit_calibration(torch.from_numpy(logits), torch.from_numpy(targets), flag_rate=0.05)
    pooled_flagged = ~pooled.in_distribution(pooled.in_distribution_score(logits))
    assert pooled_flagged[~recognised].mean() <= 0.2, "valid's rule (5 % of all) would leave most wrong cells unflagged"


def test_a_lab_calibration_keeps_the_models_temperature_when_the_likelihood_has_no_optimum():
    logits, targets, recognised = _lab_logits()
    right = fit_lab_calibration(logits[recognised][:10], targets[recognised][:10], fallback_temperature=1.7)
    assert right.temperature == 1.7, "every cell right: the temperature would run to 0"
    wrong = fit_lab_calibration(logits[~recognised][:10], targets[~recognised][:10], fallback_temperature=1.7)
    assert wrong.temperature == 1.7, "every cell wrong: it would run to infinity"
    scores = wrong.in_distribution_score(logits[~recognised][:10])
    assert wrong.ood_threshold == float(np.quantile(scores, 0.05, method="lower")), "none right: all cells are the reference"
    mixed = fit_lab_calibration(logits[:30], targets[:30], fallback_temperature=1.7)
    assert mixed.temperature != 1.7
    with pytest.raises(ValueError, match="without labelled cells"):
        fit_lab_calibration(logits[:0], targets[:0])


def test_the_calibration_a_lab_is_given_records_cross_fitted_not_in_sample_numbers():
    logits, targets, _ = _lab_logits(seed=2)
    calibration, in_distribution, review = calibrate_on_lab(logits, targets, "90 labelled cells of lab-x",
                                                            fallback_temperature=1.0, seed=4)
    in_sample = fit_lab_calibration(logits, targets)
    assert calibration.temperature == in_sample.temperature and calibration.ood_threshold == in_sample.ood_threshold
    assert calibration.fitted_on == "90 labelled cells of lab-x"
    assert np.array_equal((in_distribution, review), cross_fitted_flags(logits, targets, seed=4))
    correct = logits.argmax(axis=1) == targets
    assert calibration.accepted_fraction == pytest.approx((~review).mean())
    assert calibration.accepted_error == pytest.approx((~correct[~review]).mean())
    assert Calibration.from_dict(json.loads(json.dumps(calibration.to_dict()))).fitted_on == "90 labelled cells of lab-x"
    assert Calibration.from_dict({k: v for k, v in calibration.to_dict().items() if k != "fitted_on"}).fitted_on == "PBC valid"


def test_flag_summaries_count_the_cells_with_neither_flag():
    from wbc.evaluation.reports import FlagSummary

    correct = np.array([True, True, False, False, True, False])
    in_distribution = np.array([True, True, True, False, False, True])
    review = np.array([False, True, False, False, False, True])
    summary = FlagSummary.from_flags(correct, in_distribution, review)
    assert summary.accepted == pytest.approx(2 / 6) and summary.error_accepted == pytest.approx(1 / 2)
    assert summary.out_of_distribution == pytest.approx(2 / 6) and summary.error_flagged == pytest.approx(1 / 2)
    nothing = FlagSummary.from_flags(correct, np.zeros(6, bool), review)
    assert nothing.accepted == 0 and nothing.error_accepted is None


def test_cross_fitted_flags_judge_each_half_by_thresholds_fitted_on_the_other():
    from sklearn.model_selection import StratifiedKFold

    logits, targets, recognised = _lab_logits(seed=1)
    in_distribution, review = cross_fitted_flags(logits, targets, seed=3, target_error=0.01)
    for fitting, judged in StratifiedKFold(2, shuffle=True, random_state=3).split(logits, targets):
        other = fit_lab_calibration(logits[fitting], targets[fitting], target_error=0.01)
        assert np.array_equal(in_distribution[judged], other.in_distribution(other.in_distribution_score(logits[judged])))
        assert np.array_equal(review[judged], other.needs_review(other.probabilities(logits[judged]).max(axis=1)))
    assert (~in_distribution[~recognised]).mean() >= 0.9 and (~in_distribution[recognised]).mean() <= 0.1
    with pytest.raises(ValueError, match="at least 2 labelled cells"):
        cross_fitted_flags(logits[:1], targets[:1])


def test_calibration_travels_with_the_exported_model(tmp_path):
    model = build_model("scratch")
    tta = Calibration(temperature=1.5, review_threshold=0.7, target_error=0.01, ood_threshold=2.5, flag_rate=0.05)
    calibration = Calibration(temperature=2.0, review_threshold=0.6, target_error=0.01, ood_threshold=1.5, flag_rate=0.05,
                              tta=tta)
    folder = export_model(model, 32, tmp_path / "model", calibration, onnx=False)
    assert load_calibration(folder) == calibration and isinstance(load_calibration(folder).tta, Calibration)
    older = export_model(model, 32, tmp_path / "older", replace(calibration, tta=None), onnx=False)
    with pytest.warns(UserWarning, match="has no thresholds fitted for tta"):
        assert Predictor.load(older, tta=True).active_calibration is None
    calibrated = Predictor.load(folder)
    plain = Predictor(build_model("scratch"), 32)
    plain.model.load_state_dict(calibrated.model.state_dict())
    pixels = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    logits = torch.from_numpy(plain.logits_pixels(pixels))
    scores = calibrated.score_pixels(pixels)
    assert scores.probabilities == pytest.approx(torch.softmax(logits / 2.0, dim=1).numpy(), abs=1e-5)
    assert scores.in_distribution_score == pytest.approx(in_distribution_score(logits, 2.0), abs=1e-4)
    expected = (2.0 * torch.logsumexp(logits / 2.0, dim=1)).numpy()  # the numpy formula against PyTorch's
    assert in_distribution_score(logits, 2.0) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name", list(SHIFTS))
def test_each_shift_is_seeded_keeps_the_format_and_grows_with_severity(name):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8, generator=generator)
    images[:, :, 16:32, 16:32] = 40  # a dark "cell" in the middle
    changes = []
    for severity in SEVERITIES:
        shifted = apply_shift(images, name, severity, seed=7)
        assert shifted.shape == images.shape and shifted.dtype == torch.uint8
        assert torch.equal(shifted, apply_shift(images, name, severity, seed=7))
        changes.append(float((shifted.float() - images.float()).abs().mean()))
    assert changes[0] > 0
    if name not in ("stain", "brightness", "zoom_out"):  # random directions / padding can saturate
        assert changes[-1] >= changes[0]


def test_zoom_out_pads_with_the_background_colour():
    image = torch.full((3, 40, 40), 200, dtype=torch.uint8)
    image[:, 15:25, 15:25] = 30
    smaller = magnify(image, 0.5)
    assert torch.all(smaller[:, :8, :] == 200)
    assert int(smaller[:, 18:22, 18:22].float().mean()) < 100


def test_stain_augmentation_keeps_the_format_and_changes_the_colour():
    augment = train_augmentation("stain")
    torch.manual_seed(0)
    image = torch.full((3, 48, 48), 210, dtype=torch.uint8)
    image[:, 16:32, 16:32] = torch.tensor([90, 40, 120], dtype=torch.uint8).view(3, 1, 1)
    outputs = [augment(image) for _ in range(40)]
    assert all(o.shape == image.shape and o.dtype == torch.uint8 for o in outputs)
    assert len({tuple(o[:, 24, 24].tolist()) for o in outputs}) > 30, "the cell's colour varies"


def test_random_convolution_keeps_the_cell_where_it_is_and_scrambles_its_colour():
    from wbc.data.augmentation import RandomConvolution

    torch.manual_seed(0)
    image = torch.full((3, 48, 48), 210, dtype=torch.uint8)
    image[:, 16:32, 16:32] = torch.tensor([90, 40, 120], dtype=torch.uint8).view(3, 1, 1)
    convolve = RandomConvolution(p=1.0)
    outputs = [convolve(image) for _ in range(40)]
    assert all(o.shape == image.shape and o.dtype == torch.uint8 for o in outputs)
    assert len({tuple(o[:, 24, 24].tolist()) for o in outputs}) > 30, "the cell's colour varies"
    inside, outside = torch.zeros(48, 48, dtype=torch.bool), torch.zeros(48, 48, dtype=torch.bool)
    inside[19:29, 19:29], outside[:10, :10] = True, True
    differs = [(o.float()[:, inside].mean(1) - o.float()[:, outside].mean(1)).abs().max() > 10 for o in outputs]
    assert sum(differs) >= 36, "the cell still stands out from the background: its shape survives"
    assert torch.equal(RandomConvolution(p=0.0)(image), image)
    assert sum(not torch.equal(o, image) for o in (train_augmentation("stain-randconv")(image) for _ in range(10))) == 10


def test_random_zoom_scales_the_cell_within_its_range():
    from wbc.data.augmentation import STAIN_ZOOM, RandomZoom

    zoom = RandomZoom(STAIN_ZOOM["low"], STAIN_ZOOM["high"], p=1.0)
    torch.manual_seed(0)
    image = torch.full((3, 80, 80), 210, dtype=torch.uint8)
    image[:, 30:50, 30:50] = 40
    areas = np.array([int((zoom(image)[0] < 125).sum()) for _ in range(60)]) / 400
    assert areas.min() >= 0.7**2 * 0.85 and areas.max() <= 1.5**2 * 1.15, "within 0.7-1.5x in size"
    assert (areas < 0.8).any() and (areas > 1.4).any(), "shrinks and enlarges"
    assert (areas == 1).sum() <= 3, "p=1: almost every image is rescaled"
    untouched = RandomZoom(0.7, 1.5, p=0.0)
    assert torch.equal(untouched(image), image)


def test_zoom_augmentation_rescales_the_cell_and_standard_does_not():
    torch.manual_seed(0)
    image = torch.full((3, 80, 80), 210, dtype=torch.uint8)
    image[:, 30:50, 30:50] = 40

    def areas(kind):
        augment = train_augmentation(kind)
        return np.array([int((augment(image)[0] < 125).sum()) for _ in range(60)]) / 400

    assert np.all(areas("standard") == 1), "flips, turns and light jitter keep the cell's size"
    zoomed = areas("zoom")
    assert (zoomed < 0.8).any() and (zoomed > 1.4).any(), "zoom shrinks and enlarges"
    assert 0.15 <= (zoomed == 1).mean() <= 0.5, "about 30 % of images keep their size (p = 0.7)"


def test_robust_augmentation_runs_at_small_sizes():
    augment = train_augmentation("robust")
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    outputs = [augment(image) for _ in range(30)]
    assert all(o.shape == image.shape and o.dtype == torch.uint8 for o in outputs)
    assert len({o.sum().item() for o in outputs}) > 10
    with pytest.raises(ValueError, match="unknown augmentation"):
        train_augmentation("strong")


@pytest.mark.parametrize("calibrated", [False, True], ids=["uncalibrated", "calibration-that-passes-everything"])
def test_an_image_with_no_cell_is_flagged_whatever_the_calibration(tmp_path, calibrated):
    from conftest import cell_image
    from PIL import Image

    from wbc.inference import Calibration

    calibration = Calibration(temperature=1.0, review_threshold=0.0, target_error=0.5, ood_threshold=float("-inf"), flag_rate=0.05)
    export_model(build_model("scratch"), 32, tmp_path / "model", calibration if calibrated else None, onnx=False)
    predictor = Predictor.load(tmp_path / "model")
    rng = np.random.default_rng(0)
    fields = {"black.png": np.zeros((40, 40, 3)), "white.png": np.full((40, 40, 3), 255.0),
              "grey-noise.png": np.clip(128 + rng.normal(0, 1, (40, 40, 3)), 0, 255)}
    for name, pixels in fields.items():
        Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / name)
    cell_image("monocyte", 0).save(tmp_path / "cell.png")
    predictions = predictor.predict_sources([tmp_path / name for name in [*fields, "cell.png"]])
    assert [p.in_distribution for p in predictions[:3]] == [False, False, False]
    assert predictions[3].in_distribution is (True if calibrated else None)
