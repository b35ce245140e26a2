"""Can a labelled folder's classes be told apart by how they were photographed rather than by the cells?

Usage: python benchmarks/other_lab_acquisition.py [--images ../shared/data/other-lab] [--data-dir ../shared/data]
       [--image-size 160] [--null-folders 200]

For the lab's folder and for PBC ``valid`` (one smear series, one analyser: the control), the cross-validated ROC AUC
with which each image's background colour tells each class from the rest (``wbc.evaluation.acquisition``; 0.5 is
chance), and what ``wbc adapt``'s check (``check_acquisition``) reports. One JSON line per set. Then how often the
check warns on folders whose classes share one background: ``--null-folders`` simulated folders of 5 classes of 5,
6 and 10 images (each image's background colour drawn from one normal distribution, mean 200 and spread 8 of 255,
tiny 4x4 images with pixel noise 2; every class tested, whatever its size; a warning there is false), one JSON line
per class size.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="../shared/data/other-lab", help="a labelled folder, <class>/<image>")
    parser.add_argument("--data-dir", default="../shared/data", help="the PBC data (train/, valid/)")
    parser.add_argument("--image-size", type=int, default=160, help="the size images are decoded at, as a model's")
    parser.add_argument("--null-folders", type=int, default=200, help="simulated folders a class size (0: none)")
    args = parser.parse_args()
    from wbc.classes import CLASS_NAMES
    from wbc.data import load_folder, load_split
    from wbc.evaluation.acquisition import background_aucs, background_colours, check_acquisition

    for name, dataset in (("lab", load_folder(args.images, args.image_size)),
                          ("PBC valid", load_split(args.data_dir, "valid", args.image_size))):
        start = time.time()
        aucs = background_aucs(background_colours(dataset.pixels), dataset.targets)
        check = check_acquisition(dataset.pixels, dataset.targets)
        print(json.dumps(dict(set=name, images=len(dataset), image_size=args.image_size, seconds=round(time.time() - start, 1),
                              auc={CLASS_NAMES[target]: round(auc, 3) for target, auc in aucs.items()},
                              check=str(check), date=time.strftime("%Y-%m-%d"))), flush=True)
    import numpy as np

    rng = np.random.default_rng(0)
    for per_class in (5, 6, 10) if args.null_folders else ():
        targets = np.repeat(np.arange(5), per_class)
        warned = 0
        for _ in range(args.null_folders):
            background = rng.normal(200, 8, size=(len(targets), 3, 1, 1))
            pixels = np.clip(background + rng.normal(0, 2, size=(len(targets), 3, 4, 4)), 0, 255).astype(np.uint8)
            warned += bool(check_acquisition(pixels, targets, min_class_images=per_class).apart)
        print(json.dumps(dict(null_folders=args.null_folders, classes=5, per_class=per_class, warned=warned,
                              date=time.strftime("%Y-%m-%d"))), flush=True)


if __name__ == "__main__":
    main()
