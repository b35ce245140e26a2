"""`BarcelonaDataModule`: the train / valid (/ test) splits decoded once, augmented, in batches.

Batches hold uint8 images (N, 3, S, S); the model converts and normalises them itself, so the
normalisation constants live with each architecture (:mod:`wbc.models`), not here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from wbc.data.augmentation import train_augmentation
from wbc.data.cache import fingerprint_files
from wbc.data.dataset import BarcelonaDataset
from wbc.data.settings import DEFAULT_AUGMENTATION, DEFAULT_SAMPLING, SAMPLINGS
from wbc.data.splits import DecodedImageDataset, load_split


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
        *,
        image_size: int,
        batch_size: int,
        num_workers: int = 0,
        limit_per_class: int = 0,
        use_test: bool = False,
        skip_bad_images: bool = False,
        cache_dir: str | os.PathLike | None = None,
        download: bool = False,
        augment: str = DEFAULT_AUGMENTATION,
        sampling: str = DEFAULT_SAMPLING,
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
