"""Probes for what makes a PBC model fail on another lab's cells: rescale the lab's crops, or match their colours to
PBC's, then score zero-shot and after re-estimating batch-norm statistics on them (no labels used to adapt).

Usage: python benchmarks/other_lab_probes.py MODEL [--images ../shared/data/other-lab] [--data-dir ../shared/data]

Rows: ``zoom Z`` rescales each crop around its centre (``wbc.data.shifts.magnify``: Z > 1 enlarges the cell, Z < 1
shrinks it and pads with the background colour); ``reinhard`` matches each image's CIELAB mean and standard
deviation to those of 50 PBC valid images per class (Reinhard et al. 2001, with scikit-image's colour conversions).
Accuracy is among the classes the set holds, and over the eight.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--images", default="../shared/data/other-lab")
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args()
    from skimage.color import lab2rgb, rgb2lab

    from wbc.data import load_folder, load_split
    from wbc.data.shifts import magnify
    from wbc.evaluation.reports import Evaluation
    from wbc.inference import Predictor
    from wbc.training.adaptation import reestimate_batch_norm

    size = Predictor.load(args.model, runtime="torch").image_size
    lab = load_folder(args.images, size)
    raw = np.asarray(lab.pixels)
    reference = rgb2lab(np.asarray(load_split(args.data_dir, "valid", size, limit_per_class=50).pixels).transpose(0, 2, 3, 1) / 255)
    ref_mean, ref_std = reference.reshape(-1, 3).mean(0), reference.reshape(-1, 3).std(0)

    def reinhard(image: np.ndarray) -> np.ndarray:
        values = rgb2lab(image.transpose(1, 2, 0) / 255.0)
        mean, std = values.reshape(-1, 3).mean(0), values.reshape(-1, 3).std(0)
        matched = (values - mean) / np.maximum(std, 1e-6) * ref_std + ref_mean
        return (np.clip(lab2rgb(matched), 0, 1) * 255).round().astype(np.uint8).transpose(2, 0, 1)

    variants = {"as given": raw, "reinhard": np.stack([reinhard(image) for image in raw])}
    for zoom in (0.6, 0.7, 0.85, 1.2, 1.4, 1.7):
        variants[f"zoom {zoom}"] = torch.stack([magnify(torch.from_numpy(image), zoom) for image in raw]).numpy()
    print("| lab images | zero-shot, 5 classes % (over 8) | batch-norm statistics re-estimated, 5 classes % (over 8) |")
    print("|---|---|---|")
    for name, pixels in variants.items():
        predictor = Predictor.load(args.model, runtime="torch")
        before = Evaluation.from_scores(lab.targets, predictor.score_pixels(pixels).probabilities)
        reestimate_batch_norm(predictor.model, pixels)
        after = Evaluation.from_scores(lab.targets, predictor.score_pixels(pixels).probabilities)
        print(f"| {name} | {100 * before.present_accuracy:.1f} ({100 * before.accuracy:.1f}) | "
              f"{100 * after.present_accuracy:.1f} ({100 * after.accuracy:.1f}) |", flush=True)


if __name__ == "__main__":
    main()
