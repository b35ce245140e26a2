"""Data: image decoding, the PBC dataset, the decoded-image cache and the Lightning data module.

Names load on first use (``lazy_loader``, PEP 562), so that serving and the command line, which need no Lightning,
do not import it.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "datamodule": ["BarcelonaDataModule"],
        "splits": ["DecodedImageDataset", "load_folder", "load_split", "load_unlabelled"],
        "augmentation": ["train_augmentation"],
        "dataset": ["BarcelonaDataset", "DatasetError", "LabelledFolder", "NoClassFolders", "image_files"],
        "images": ["ImageDecodeError", "decode_image", "decode_image_array"],
    },
)
