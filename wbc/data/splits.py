"""One split of the dataset as decoded uint8 images in memory: ``load_split`` and the dataset it returns."""

from __future__ import annotations

import os
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from wbc.data.cache import decode_cached
from wbc.data.dataset import BarcelonaDataset, LabelledFolder, image_files


class DecodedImageDataset(Dataset):
    """Samples from an array of decoded uint8 images: ``(image (3, S, S) uint8, target)``, and the
    image's soft target (class probabilities) as a third item once ``soft_targets`` is set."""

    def __init__(self, pixels: np.ndarray, targets: np.ndarray, paths: list[str], transform=None) -> None:
        self.pixels = pixels
        self.targets = targets
        self.paths = paths
        self.transform = transform
        self.soft_targets: np.ndarray | None = None

    def subset(self, indices) -> "DecodedImageDataset":
        """The samples at ``indices``, without a transform."""
        indices = np.asarray(indices, dtype=np.int64)
        return DecodedImageDataset(self.pixels[indices], self.targets[indices], [self.paths[i] for i in indices])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = torch.from_numpy(np.array(self.pixels[index]))
        if self.transform is not None:
            image = self.transform(image)
        if self.soft_targets is not None:
            return image, int(self.targets[index]), torch.from_numpy(self.soft_targets[index])
        return image, int(self.targets[index])


def limit_samples(samples: list[tuple[str, int]], per_class: int, seed: int = 0) -> list[tuple[str, int]]:
    """At most ``per_class`` samples of each class, drawn with a fixed seed (all when ``per_class`` is 0)."""
    if per_class <= 0:
        return samples
    by_class: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    rng = random.Random(seed)
    chosen = []
    for target in sorted(by_class):
        group = by_class[target]
        chosen += group if len(group) <= per_class else rng.sample(group, per_class)
    return sorted(chosen)


def load_split(
    data_dir: str | os.PathLike,
    split: str,
    image_size: int,
    *,
    limit_per_class: int = 0,
    cache_dir=None,
    skip_bad_images: bool = False,
    transform=None,
    decode_workers: int | None = None,
) -> DecodedImageDataset:
    """One split of the dataset, decoded once at ``image_size`` through the cache."""
    samples = limit_samples(BarcelonaDataset(data_dir, split).samples, limit_per_class)
    return decode_samples(samples, image_size, cache_dir=cache_dir, skip_bad_images=skip_bad_images, transform=transform,
                          decode_workers=decode_workers, description=f"decoding {split}")


def load_folder(folder: str | os.PathLike, image_size: int, *, cache_dir=None, skip_bad_images: bool = False) -> DecodedImageDataset:
    """A lab's labelled folder (:class:`~wbc.data.dataset.LabelledFolder`), decoded once at ``image_size`` through the cache."""
    return decode_samples(LabelledFolder(folder).samples, image_size, cache_dir=cache_dir, skip_bad_images=skip_bad_images,
                          description=f"decoding {Path(folder).name}")


def load_unlabelled(folder: str | os.PathLike, image_size: int, *, cache_dir=None) -> DecodedImageDataset:
    """Every image file under ``folder`` (:func:`~wbc.data.dataset.image_files`), decoded at ``image_size``; targets -1."""
    return decode_samples([(path, -1) for path in image_files(folder)], image_size, cache_dir=cache_dir,
                          description=f"decoding {Path(folder).name}")


def decode_samples(samples: list[tuple[str, int]], image_size: int, *, cache_dir=None, skip_bad_images: bool = False,
                   transform=None, decode_workers: int | None = None, description: str = "decoding") -> DecodedImageDataset:
    """``(path, class index)`` samples decoded at ``image_size`` (uint8 (N, 3, S, S)) through the cache."""
    paths = [path for path, _ in samples]
    decoded = decode_cached(paths, image_size, cache_dir=cache_dir, workers=decode_workers, skip_bad_images=skip_bad_images,
                            description=description)
    targets = np.asarray([samples[i][1] for i in decoded.kept], dtype=np.int64)
    return DecodedImageDataset(decoded.pixels, targets, [paths[i] for i in decoded.kept], transform)
