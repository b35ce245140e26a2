"""Simple filters on another lab's cells at test time: a hue turn and sharpening.

Usage: python benchmarks/test_time_filters.py MODEL [--images ../shared/data/other-lab] [--data-dir ../shared/data]
       [--valid-per-class 0]

The lab's cells, decoded at the model's size, pass through ``torchvision.transforms.v2.functional.adjust_hue`` (a turn of
the hue circle; the lab's nuclei are more magenta than PBC's) or ``adjust_sharpness`` (its images are blurrier), then
are scored with one view and, for sharpening, with the mean logits of the 8 flips/rotations (``--tta``); sharpened PBC
``valid`` images are scored with one view. Accuracy among the lab's classes present, overall and per class. One JSON
line per setting. The settings are a grid chosen on the very cells they are scored on: an upper bound, not a method.
"""

from __future__ import annotations

import json

from _lab import lab_parser, load, parse, present_guesses

HUE_TURNS = (-0.12, -0.09, -0.06, -0.04, -0.02, 0.0, 0.02, 0.04, 0.06)
SHARPNESS = (1.0, 1.5, 2.0, 3.0, 5.0)


def main() -> None:
    parser = lab_parser(__doc__)
    parser.set_defaults(valid_per_class=0)
    args = parse(parser)
    import numpy as np
    import torch
    from torchvision.transforms.v2 import functional as F

    from wbc.classes import CLASS_NAMES

    loaded = load(args)
    predictor, lab, valid = loaded.predictor, loaded.lab, loaded.valid
    present = np.unique(lab.targets)
    lab_pixels, valid_pixels = torch.from_numpy(np.array(lab.pixels)), torch.from_numpy(np.array(valid.pixels))

    def scores(logits):
        guesses = present_guesses(logits, lab.targets)
        per_class = {CLASS_NAMES[c]: round(100 * float((guesses[lab.targets == c] == c).mean())) for c in present}
        return round(100 * float((guesses == lab.targets).mean()), 1), per_class

    for turn in HUE_TURNS:
        accuracy, per_class = scores(np.asarray(predictor.logits_pixels(F.adjust_hue(lab_pixels, turn).numpy())))
        print(json.dumps({"filter": "hue", "setting": turn, "lab": accuracy, "lab_per_class": per_class}), flush=True)
    for factor in SHARPNESS:
        views = predictor.view_logits_pixels(F.adjust_sharpness(lab_pixels, factor).numpy())
        accuracy, per_class = scores(views[0])
        valid_logits = np.asarray(predictor.logits_pixels(F.adjust_sharpness(valid_pixels, factor).numpy()))
        print(json.dumps({"filter": "sharpness", "setting": factor, "lab": accuracy, "lab_per_class": per_class,
                          "lab_tta": scores(views.mean(axis=0))[0],
                          "valid": round(100 * float((valid_logits.argmax(axis=1) == valid.targets).mean()), 2)}), flush=True)


if __name__ == "__main__":
    main()
