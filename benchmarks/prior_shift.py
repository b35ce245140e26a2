"""Does correcting for the lab's class mix help? Label-shift adjustments of a PBC model's probabilities on another lab.

Usage: python benchmarks/prior_shift.py MODEL [--images ../shared/data/other-lab] [--data-dir ../shared/data]
       [--valid-per-class 0]

PBC's training set holds 2.7 times as many neutrophils as lymphocytes; a lab's cells may not. With one view and with
the mean logits of the 8 flips/rotations (temperature fitted on valid, as ``--tta``), the class probabilities are
reweighted by target prior / training prior and renormalised (Saerens et al. 2002, "Adjusting the outputs of a
classifier to new a priori probabilities"): ``balanced`` takes a uniform target prior (on this set the truth, among
its five classes: an upper bound); ``em`` estimates the lab's prior from its unlabelled cells by their EM procedure
(100 iterations). Scored on the lab's cells (among the classes present) and on PBC ``valid`` (EM run on valid's own
cells). One JSON line per view setting, with the prior EM found.
"""

from __future__ import annotations

import json

from _lab import lab_parser, load, parse, present_guesses


def main() -> None:
    parser = lab_parser(__doc__)
    parser.set_defaults(valid_per_class=0)
    args = parse(parser)
    import numpy as np
    import torch

    from wbc.classes import CLASS_NAMES
    from wbc.data import BarcelonaDataset
    from wbc.evaluation.calibration import fit_calibration

    loaded = load(args)
    predictor, lab, valid = loaded.predictor, loaded.lab, loaded.valid
    counts = np.bincount([target for _, target in BarcelonaDataset(args.data_dir, "train").samples], minlength=len(CLASS_NAMES))
    train_prior = counts / counts.sum()
    lab_views, valid_views = predictor.view_logits_pixels(lab.pixels), predictor.view_logits_pixels(valid.pixels)

    def lab_accuracy(probabilities):
        return round(100 * float((present_guesses(probabilities, lab.targets) == lab.targets).mean()), 2)

    def valid_accuracy(probabilities):
        return round(100 * float((probabilities.argmax(axis=1) == valid.targets).mean()), 2)

    def reweighted(probabilities, prior):
        weighted = probabilities * (prior / train_prior)
        return weighted / weighted.sum(axis=1, keepdims=True)

    def em_prior(probabilities, iterations=100):
        prior = train_prior.copy()
        for _ in range(iterations):
            prior = reweighted(probabilities, prior).mean(axis=0)
        return prior

    uniform = np.full(len(CLASS_NAMES), 1 / len(CLASS_NAMES))
    for name, views in (("one view", [0]), ("8 views (--tta)", list(range(8)))):
        lab_logits, valid_logits = lab_views[views].mean(axis=0), valid_views[views].mean(axis=0)
        calibration = fit_calibration(torch.from_numpy(valid_logits), torch.from_numpy(np.asarray(valid.targets)))
        on_lab, on_valid = calibration.probabilities(lab_logits), calibration.probabilities(valid_logits)
        lab_prior = em_prior(on_lab)
        print(json.dumps({"views": name, "lab": lab_accuracy(on_lab), "valid": valid_accuracy(on_valid),
                          "balanced_lab": lab_accuracy(reweighted(on_lab, uniform)),
                          "balanced_valid": valid_accuracy(reweighted(on_valid, uniform)),
                          "em_lab": lab_accuracy(reweighted(on_lab, lab_prior)),
                          "em_valid": valid_accuracy(reweighted(on_valid, em_prior(on_valid))),
                          "em_lab_prior": {c: round(float(p), 3) for c, p in zip(CLASS_NAMES, lab_prior)}}), flush=True)


if __name__ == "__main__":
    main()
