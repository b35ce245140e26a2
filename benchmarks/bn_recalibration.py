"""Does re-estimating batch-norm statistics help a weight-averaged model? (issue #5 accuracy experiment)

Usage: python benchmarks/bn_recalibration.py "models:/wbc-classifier/4" [--data-dir ../shared/data] [--images 6000]

Averaging weights (``wbc average``) also averages the batch-norm running statistics, which SWA-style
recipes re-estimate afterwards. For each training-image stream (each of ``AUGMENTATIONS``) this
resets every batch-norm layer's statistics, runs ``--images`` training images through the model in
training mode (cumulative average, no weight update, seed 0) and prints clean validation accuracy
next to the model's own.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from wbc.data import load_split
from wbc.data.augmentation import train_augmentation
from wbc.data.settings import AUGMENTATIONS
from wbc.inference import Predictor, load_model_from
from wbc.models import BATCH_NORMS
from wbc._process import tune_malloc_and_reexec
from wbc.tracking.runs import configure_tracking


def accuracy(model, image_size: int, valid) -> float:
    predictor = Predictor(model, image_size)
    return float((predictor.predict_pixels(valid.pixels).argmax(axis=1) == valid.targets).mean())


@torch.no_grad()
def recalibrated(uri: str, data_dir: str, augment: str, images: int):
    model, image_size = load_model_from(uri)
    for module in model.modules():
        if isinstance(module, BATCH_NORMS):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over everything seen
    model.train()
    train = load_split(data_dir, "train", image_size, transform=train_augmentation(augment))
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0), num_workers=1)
    seen = 0
    for batch, _ in loader:
        model(batch.contiguous(memory_format=torch.channels_last))
        seen += len(batch)
        if seen >= images:
            break
    return model.eval(), image_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--images", type=int, default=6000)
    args = parser.parse_args()
    configure_tracking()
    model, image_size = load_model_from(args.model)
    valid = load_split(args.data_dir, "valid", image_size)
    valid.pixels = np.asarray(valid.pixels)
    print(f"| batch-norm statistics | valid accuracy | seconds |\n|---|---|---|\n| as trained | {accuracy(model, image_size, valid):.2%} | |")
    for augment in AUGMENTATIONS:
        started = time.perf_counter()
        model, image_size = recalibrated(args.model, args.data_dir, augment, args.images)
        print(f"| re-estimated on {args.images} train images, augment={augment} | {accuracy(model, image_size, valid):.2%} "
              f"| {time.perf_counter() - started:.0f} |")


if __name__ == "__main__":
    tune_malloc_and_reexec()
    main()
