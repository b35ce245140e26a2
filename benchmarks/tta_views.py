"""Test-time augmentation on another lab's cells: how many views, mean logits or mean probabilities, zoom scales,
and the flags refitted on the mean views.

Usage: python benchmarks/tta_views.py MODEL [--images ../shared/data/other-lab] [--data-dir ../shared/data]
       [--valid-per-class 0] [--scales]

Each image's 8 flips/rotations are scored once (``Predictor.view_logits_pixels``); each subset of views is then
scored as the mean of its logits (what ``Predictor(tta=True)`` does, with a calibration fitted on valid's mean logits,
``wbc.evaluation.calibration.fit_calibration``, as training and ``wbc calibrate`` fit the ``tta`` part) and as the
mean of its probabilities (temperature and flag threshold refitted on valid the same way). The out-of-distribution
flag's error rates on the lab's cells count errors among the classes present, as ``wbc shiftbench`` does. With
``--scales`` the 8 views are also averaged over zoomed copies (``wbc.data.shifts.magnify``) of each image. One JSON line
per variant.
"""

from __future__ import annotations

import json
import time

from _lab import lab_parser, load, parse

VIEW_SETS = {"1": [0], "2 (id, hflip)": [0, 4], "4 (rot 0/90/180/270)": [0, 1, 2, 3],
             "4 (id, hflip, vflip, rot180)": [0, 4, 2, 6], "8": list(range(8))}
SCALE_SETS = ([1.0], [0.9, 1.0], [1.0, 1.1], [0.9, 1.0, 1.1], [0.8, 1.0, 1.2], [0.8, 0.9, 1.0, 1.1, 1.2])


def main() -> None:
    parser = lab_parser(__doc__)
    parser.set_defaults(valid_per_class=0)
    parser.add_argument("--scales", action="store_true", help="also average the 8 views over zoomed copies")
    args = parse(parser)
    import numpy as np
    import torch

    from wbc.data.shifts import magnify
    from wbc.evaluation.calibration import fit_calibration
    from wbc.evaluation.reports import Evaluation

    loaded = load(args)
    predictor, lab, valid = loaded.predictor, loaded.lab, loaded.valid
    lab_targets, valid_targets = np.asarray(lab.targets), np.asarray(valid.targets)

    start = time.perf_counter()
    valid_views = predictor.view_logits_pixels(valid.pixels)
    print(json.dumps({"valid_images": len(valid_targets), "seconds_8_views_valid": round(time.perf_counter() - start, 1)}),
          flush=True)
    lab_views = predictor.view_logits_pixels(lab.pixels)

    def line(name, averaged, valid_probabilities, lab_probabilities, lab_in_distribution, valid_in_distribution, temperature):
        present = sorted(set(lab_targets.tolist()))
        wrong = np.asarray(present)[lab_probabilities[:, present].argmax(axis=1)] != lab_targets
        flagged = ~lab_in_distribution
        return {"views": name, "averaged": averaged,
                "valid": round(100 * Evaluation.from_scores(valid_targets, valid_probabilities).accuracy, 2),
                "other_lab": round(100 * Evaluation.from_scores(lab_targets, lab_probabilities).present_accuracy, 1),
                "lab_flagged": round(100 * flagged.mean()),
                "err_flagged": round(100 * wrong[flagged].mean()) if flagged.any() else None,
                "err_unflagged": round(100 * wrong[~flagged].mean()) if (~flagged).any() else None,
                "valid_flagged": round(100 * (~valid_in_distribution).mean(), 1), "T": round(temperature, 3)}

    targets = torch.from_numpy(valid_targets)
    for name, views in VIEW_SETS.items():
        valid_mean, lab_mean = valid_views[views].mean(axis=0), lab_views[views].mean(axis=0)
        calibration = fit_calibration(torch.from_numpy(valid_mean), targets)
        print(json.dumps(line(name, "logits", calibration.probabilities(valid_mean), calibration.probabilities(lab_mean),
                              calibration.in_distribution(calibration.in_distribution_score(lab_mean)),
                              calibration.in_distribution(calibration.in_distribution_score(valid_mean)),
                              calibration.temperature)), flush=True)
        single = fit_calibration(torch.from_numpy(valid_views[0]), targets)

        def mean_of(logits, function):
            return np.mean([function(logits[view]) for view in views], axis=0)

        valid_scores = mean_of(valid_views, single.in_distribution_score)
        threshold = float(np.quantile(valid_scores, single.flag_rate, method="lower"))
        print(json.dumps(line(name, "probabilities", mean_of(valid_views, single.probabilities),
                              mean_of(lab_views, single.probabilities),
                              mean_of(lab_views, single.in_distribution_score) >= threshold, valid_scores >= threshold,
                              single.temperature)), flush=True)

    if args.scales:
        def zoomed_mean(pixels, scale):
            pixels = torch.from_numpy(np.asarray(pixels))
            if scale != 1.0:
                pixels = torch.stack([magnify(image, scale) for image in pixels])
            return predictor.view_logits_pixels(pixels.numpy()).mean(axis=0)

        scales = sorted({scale for scale_set in SCALE_SETS for scale in scale_set})
        lab_zoomed = {scale: zoomed_mean(lab.pixels, scale) for scale in scales}
        valid_zoomed = {scale: zoomed_mean(valid.pixels, scale) for scale in scales}
        for scale_set in SCALE_SETS:
            lab_mean = np.mean([lab_zoomed[scale] for scale in scale_set], axis=0)
            valid_mean = np.mean([valid_zoomed[scale] for scale in scale_set], axis=0)
            print(json.dumps({"scales": scale_set, "views": 8 * len(scale_set),
                              "other_lab": round(100 * Evaluation.from_scores(lab_targets, lab_mean).present_accuracy, 1),
                              "valid": round(100 * Evaluation.from_scores(valid_targets, valid_mean).accuracy, 2)}), flush=True)


if __name__ == "__main__":
    main()
