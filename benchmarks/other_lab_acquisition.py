"""Can a labelled folder's classes be told apart by how they were photographed rather than by the cells?

Usage: python benchmarks/other_lab_acquisition.py [--images ../shared/data/other-lab] [--data-dir ../shared/data]
       [--image-size 160]

For the lab's folder and for PBC ``valid`` (one smear series, one camera: the control), the cross-validated ROC AUC
with which each image's background colour tells each class from the rest (``wbc.evaluation.acquisition``, the test
``wbc adapt`` warns with; 0.5 is chance, at or above 0.9 it warns). One JSON line per set.
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
    args = parser.parse_args()
    from wbc.classes import CLASS_NAMES
    from wbc.data import load_folder, load_split
    from wbc.evaluation.acquisition import CONFOUND_AUC, background_aucs

    for name, dataset in (("lab", load_folder(args.images, args.image_size)),
                          ("PBC valid", load_split(args.data_dir, "valid", args.image_size))):
        start = time.time()
        aucs = background_aucs(dataset.pixels, dataset.targets)
        print(json.dumps(dict(set=name, images=len(dataset), image_size=args.image_size, seconds=round(time.time() - start, 1),
                              auc={CLASS_NAMES[target]: round(auc, 3) for target, (_, auc) in aucs.items()},
                              apart=[CLASS_NAMES[target] for target, (_, auc) in aucs.items() if auc >= CONFOUND_AUC],
                              date=time.strftime("%Y-%m-%d"))), flush=True)


if __name__ == "__main__":
    main()
