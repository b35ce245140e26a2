"""Data: image decoding, the PBC dataset, the decoded-image cache and the Lightning data module."""

from wbc.data.datamodule import BarcelonaDataModule, DecodedImageDataset, load_split
from wbc.data.dataset import BarcelonaDataset, DatasetError
from wbc.data.images import ImageDecodeError, decode_image, decode_image_array

__all__ = [
    "BarcelonaDataModule",
    "BarcelonaDataset",
    "DatasetError",
    "DecodedImageDataset",
    "ImageDecodeError",
    "decode_image",
    "decode_image_array",
    "load_split",
]
