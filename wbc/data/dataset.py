"""Labelled image folders in the one fixed class order: any lab's ``<folder>/<class>/<image>`` (:class:`LabelledFolder`)
and the PBC dataset's splits (:class:`BarcelonaDataset`), both torchvision ``ImageFolder``s."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import check_integrity, download_url, extract_archive, verify_str_arg

from wbc.classes import CLASS_NAMES, CLASS_TO_IDX
from wbc.errors import WBCError
from wbc.data.images import decode_image_array

ARCHIVE_URL = "https://cloud.minesparis.psl.eu/index.php/s/Rv8LxYm5rqTKOgS/download"
ARCHIVE_FILENAME = "barcelona.zip"
ARCHIVE_MD5 = "aad6827e0000988c5e3d72ace95da661"
SPLITS = ("train", "valid", "test")


def how_to_get(root) -> str:
    """The end of a missing-data message: how to put the PBC dataset under ``root``."""
    return f"or get the PBC dataset there with: wbc download --data-dir {root}"


class DatasetError(WBCError, ValueError):
    """The data on disk is not what the dataset expects; the message names the path."""


class NoClassFolders(DatasetError):
    """A folder read as labelled (``<class>/<image>``) has no class sub-folder: an unlabelled folder, for whoever
    takes one."""


def load_pil_rgb(path: str):
    """ImageFolder loader: any image mode converted to RGB at full resolution."""
    from PIL import Image

    return Image.fromarray(decode_image_array(path, None))


def _did_you_mean(name: str) -> str:
    """`` (did you mean <class>?)`` for a folder name close to one of the eight classes (a plural, a typo, an
    abbreviation; :func:`difflib.get_close_matches`), else ``""``."""
    import difflib

    close = difflib.get_close_matches(name.lower().rstrip("s"), CLASS_NAMES, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def find_class_folders(directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """``ImageFolder.find_classes`` for the eight classes: every sub-folder must be one of them, its name matched
    case-insensitively (``Monocyte/`` is monocyte); returns the class names and {folder name: class index}."""
    try:
        listing = list(os.scandir(directory))
        entries = sorted(entry.name for entry in listing if entry.is_dir() and not entry.name.startswith("."))
    except OSError as error:
        raise DatasetError(f"{directory}: cannot read folder ({error.strerror or error})") from None
    unknown = [name for name in entries if name.lower() not in CLASS_TO_IDX]
    if unknown:
        named = "; ".join(f"{os.path.join(directory, name)}{_did_you_mean(name)}" for name in unknown)
        raise DatasetError(f"{named}: {'folder is' if len(unknown) == 1 else 'folders are'} not one of the eight classes "
                           f"({', '.join(CLASS_NAMES)}); rename or remove {'it' if len(unknown) == 1 else 'them'}")
    folders: dict[str, int] = {}
    for name in entries:
        twin = next((other for other, index in folders.items() if index == CLASS_TO_IDX[name.lower()]), None)
        if twin is not None:
            raise DatasetError(f"{os.path.join(directory, name)}: the same class as {twin}/; merge the two folders")
        folders[name] = CLASS_TO_IDX[name.lower()]
    if not folders:
        loose = sum(1 for entry in listing if entry.is_file() and Path(entry.name).suffix.lower() in IMG_EXTENSIONS)
        if loose:
            class_name = Path(directory).resolve().name.lower()
            hint = (f"it looks like the {class_name} folder itself: give the folder above it" if class_name in CLASS_TO_IDX
                    else "sort them into <class>/ sub-folders, or score unlabelled cells with wbc predict")
            raise NoClassFolders(f"{directory} holds {loose} image(s) but no class sub-folders: labelled images go in "
                               f"<class>/<image> ({', '.join(CLASS_NAMES)}); {hint}")
        raise NoClassFolders(f"{directory} holds no images: no class folders in it (expected <class>/<image>, classes {', '.join(CLASS_NAMES)})")
    return list(CLASS_NAMES), folders


def image_files(folder: str | os.PathLike) -> list[str]:
    """The image files under ``folder`` (any depth, by extension as ``ImageFolder`` reads them), sorted; hidden ones
    left out. Raises :class:`DatasetError` when there are none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    files = sorted(str(path) for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")
                   and path.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise DatasetError(f"{folder} holds no image files ({', '.join(IMG_EXTENSIONS)})")
    return files


class LabelledFolder(ImageFolder):
    """A lab's labelled cells: ``<folder>/<class>/<image>`` for any subset of the eight classes (class folders named
    case-insensitively); ``targets`` are indices into :data:`~wbc.classes.CLASS_NAMES`. Raises :class:`DatasetError`
    for a missing folder, a sub-folder that is not a class, or no images."""

    def __init__(self, folder: str | os.PathLike, transform: Callable | None = None) -> None:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such folder (expected <folder>/<class>/<image>, class folders named "
                               f"after any of {', '.join(CLASS_NAMES)})")
        super().__init__(str(folder), transform=transform, loader=load_pil_rgb, allow_empty=True)
        if not self.samples:
            raise DatasetError(f"{folder} holds no images in class folders ({', '.join(CLASS_NAMES)})")

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return find_class_folders(directory)

    @property
    def present_classes(self) -> list[int]:
        """The classes that have images here, as sorted indices."""
        return sorted(set(self.targets))


class BarcelonaDataset(ImageFolder):
    """Images under ``<root>/barcelona/<split>/<class>/*``, classes in :data:`CLASS_NAMES` order.

    Args:
        root: the folder that holds ``barcelona/`` (for the shipped data: ``../shared/data``).
        split: ``train``, ``valid`` or ``test``.
        transform: applied to the PIL image (RGB) returned for each sample.
        download: fetch the public archive, check its md5 and extract it under ``root``
            if the split is not there yet.

    A class folder may be missing (its index stays the same); a folder that is not one of the
    eight classes, or a split with no images, is an error.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | None = None,
        download: bool = False,
    ) -> None:
        self.data_root = Path(root).expanduser()
        self.split = verify_str_arg(split, "split", SPLITS)
        if download:
            self.download()
        split_dir = self.split_dir
        if not self.data_root.is_dir():
            raise DatasetError(
                f"data root {self.data_root} does not exist: point --data-dir (data_dir) at the folder that holds barcelona/, "
                + how_to_get(self.data_root)
            )
        if not split_dir.is_dir() and split == "test":
            raise DatasetError(f"split folder {split_dir} does not exist: the PBC test split is the held-out set, not "
                               "shipped; score on valid, or on a lab's folder with --images")
        if not split_dir.is_dir():
            raise DatasetError(
                f"split folder {split_dir} does not exist: expected <--data-dir>/barcelona/{split}/<class>/*.jpg, " + how_to_get(self.data_root)
            )
        super().__init__(str(split_dir), transform=transform, loader=load_pil_rgb, allow_empty=True)
        if not self.samples:
            raise DatasetError(f"split folder {split_dir} holds no images in its class folders")

    @property
    def split_dir(self) -> Path:
        return self.data_root / "barcelona" / self.split

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return find_class_folders(directory)

    def _check_exists(self) -> bool:
        return self.split_dir.is_dir()

    def download(self) -> None:
        """Download ``barcelona.zip`` (torchvision's ``download_url``), verify its md5 and extract it, unless the split
        is present. Extraction goes to a scratch folder beside the data and is moved into place only when complete,
        so an interrupted or corrupt download never leaves a half-extracted ``barcelona/``; a corrupt archive is
        removed. Raises :class:`DatasetError` (one line: what failed and what to do)."""
        if self._check_exists():
            return
        self.data_root.mkdir(parents=True, exist_ok=True)
        archive = self.data_root / ARCHIVE_FILENAME
        target = self.data_root / "barcelona"
        if target.exists():
            raise DatasetError(f"{target} exists without {self.split}/: move it away (or complete it) and run again")
        try:
            download_url(ARCHIVE_URL, str(self.data_root), filename=ARCHIVE_FILENAME)  # a file there is kept
        except (OSError, RuntimeError) as error:
            archive.unlink(missing_ok=True)
            raise DatasetError(f"downloading {ARCHIVE_URL} into {archive} failed ({str(error).splitlines()[0]}): check "
                               f"the network and run again, or put the archive there by hand") from None
        if not check_integrity(str(archive), ARCHIVE_MD5):
            archive.unlink(missing_ok=True)
            raise DatasetError(f"{archive}: the download is corrupt (md5 is not {ARCHIVE_MD5}); it was removed: run again")
        scratch = Path(tempfile.mkdtemp(prefix=".barcelona-extracting-", dir=self.data_root))
        try:
            extract_archive(str(archive), str(scratch))
            extracted = scratch / "barcelona"
            if not (extracted / self.split).is_dir():
                raise DatasetError(f"{archive} holds no barcelona/{self.split}/: not the PBC archive; remove it and run again")
            os.replace(extracted, target)
        except (OSError, RuntimeError, EOFError, zipfile.BadZipFile) as error:
            raise DatasetError(f"extracting {archive} failed ({error}); nothing was kept: run again") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
