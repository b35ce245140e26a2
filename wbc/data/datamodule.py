"""`BarcelonaDataModule`: decoded-once uint8 images, cell-appropriate augmentation, batches.

Batches hold uint8 images (N, 3, S, S); the model converts and normalises them itself, so the
normalisation constants live with each architecture (:mod:`wbc.models.registry`), not here.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms import v2

from wbc.data.cache import decode_cached, fingerprint_files
from wbc.data.dataset import BarcelonaDataset
from wbc.data.settings import AUGMENTATIONS, SAMPLINGS
from wbc.data.shifts import robust_augmentation


class RandomRot90(torch.nn.Module):
    """Rotate by a random multiple of 90 degrees (cells have no orientation)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.rot90(image, int(torch.randint(4, ())), dims=(-2, -1))


def train_augmentation(kind: str = "standard") -> v2.Compose | None:
    """Training transforms: ``standard`` = flips, 90-degree rotations and light colour jitter;
    ``robust`` adds the lab-to-lab shifts of :mod:`wbc.data.shifts` (zoom, stain, light, blur,
    resolution, JPEG) now and then; ``none`` = no augmentation."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if kind == "none":
        return None
    shifts = robust_augmentation() if kind == "robust" else []
    return v2.Compose(
        [
            *shifts,
            v2.RandomHorizontalFlip(),
            RandomRot90(),
            v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
        ]
    )


class DecodedImageDataset(Dataset):
    """Samples from an array of decoded uint8 images: ``(image (3, S, S) uint8, target)``, and the
    image's soft target (class probabilities) as a third item once ``soft_targets`` is set."""

    def __init__(self, pixels: np.ndarray, targets: np.ndarray, paths: list[str], transform=None) -> None:
        self.pixels = pixels
        self.targets = targets
        self.paths = paths
        self.transform = transform
        self.soft_targets: np.ndarray | None = None

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
    paths = [path for path, _ in samples]
    decoded = decode_cached(
        paths,
        image_size,
        cache_dir=cache_dir,
        workers=decode_workers,
        skip_bad_images=skip_bad_images,
        description=f"decoding {split}",
    )
    targets = np.asarray([samples[i][1] for i in decoded.kept], dtype=np.int64)
    return DecodedImageDataset(decoded.pixels, targets, [paths[i] for i in decoded.kept], transform)


class BarcelonaDataModule(pl.LightningDataModule):
    """Train / valid (and optional test) splits of ``<data_dir>/barcelona``.

    Args:
        data_dir: folder that holds ``barcelona/``.
        image_size: square input size; images are decoded once at this size and cached.
        batch_size, num_workers: DataLoader settings.
        limit_per_class: use at most this many images per class in each split (0 = all).
        use_test: also set up the ``test`` split (keep it held out while selecting models).
        skip_bad_images: leave unreadable training images out with a warning instead of failing.
        cache_dir: where decoded images are stored (default ``$WBC_CACHE_DIR`` or ``~/.cache/wbc``).
        download: fetch and extract the public archive in ``prepare_data`` if missing.
        augment: training-split augmentation, one of :data:`AUGMENTATIONS` (see :func:`train_augmentation`).
        sampling: how training batches are drawn, one of :data:`SAMPLINGS`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        image_size: int = 128,
        batch_size: int = 64,
        num_workers: int = 0,
        limit_per_class: int = 0,
        use_test: bool = False,
        skip_bad_images: bool = False,
        cache_dir: str | os.PathLike | None = None,
        download: bool = False,
        augment: str = "standard",
        sampling: str = "shuffle",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.limit_per_class = limit_per_class
        self.use_test = use_test
        self.skip_bad_images = skip_bad_images
        self.cache_dir = cache_dir
        self.download = download
        train_augmentation(augment)  # fail early on an unknown name
        self.augment = augment
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {sampling!r}: choose one of {', '.join(SAMPLINGS)}")
        self.sampling = sampling
        self.seed = seed
        self.datasets: dict[str, DecodedImageDataset] = {}

    def prepare_data(self) -> None:
        if self.download:
            for split in self._splits():
                BarcelonaDataset(self.data_dir, split, download=True)

    def _splits(self) -> tuple[str, ...]:
        return ("train", "valid", "test") if self.use_test else ("train", "valid")

    def setup(self, stage: str | None = None) -> None:
        for split in self._splits():
            if split in self.datasets:
                continue
            self.datasets[split] = load_split(
                self.data_dir,
                split,
                self.image_size,
                limit_per_class=self.limit_per_class,
                cache_dir=self.cache_dir,
                skip_bad_images=self.skip_bad_images and split == "train",
                transform=train_augmentation(self.augment) if split == "train" else None,
            )

    @property
    def fingerprint(self) -> str:
        """Hash of the files used (names, sizes, times) across the splits set up."""
        return fingerprint_files([path for split in self._splits() for path in self.datasets[split].paths])

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        sampler = None
        if shuffle and self.sampling == "balanced":
            targets = self.datasets[split].targets
            weights = 1.0 / np.bincount(targets)[targets]
            sampler = WeightedRandomSampler(torch.as_tensor(weights), len(targets), generator=generator)
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and len(self.datasets[split]) > self.batch_size,
            generator=generator if shuffle and sampler is None else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            raise RuntimeError("the test split was not set up: create the data module with use_test=True")
        return self._loader("test", shuffle=False)
