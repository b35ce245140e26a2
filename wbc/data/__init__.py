"""Data: image decoding, the PBC dataset, the decoded-image cache and the Lightning data module.

Names load on first use (PEP 562), so that serving and the command line, which need no Lightning,
do not import it.
"""

from importlib import import_module

_HOMES = {
    "BarcelonaDataModule": "wbc.data.datamodule",
    "DecodedImageDataset": "wbc.data.splits",
    "load_split": "wbc.data.splits",
    "train_augmentation": "wbc.data.augmentation",
    "BarcelonaDataset": "wbc.data.dataset",
    "DatasetError": "wbc.data.dataset",
    "ImageDecodeError": "wbc.data.images",
    "decode_image": "wbc.data.images",
    "decode_image_array": "wbc.data.images",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'wbc.data' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
