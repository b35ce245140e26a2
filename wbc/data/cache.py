"""Decode every image once per image size into a memory-mapped uint8 array on disk.

Epochs then read pixels straight from the page cache instead of decoding JPEGs. The cache
file is named by a fingerprint of the file list (paths, sizes, modification times) and the
image size, so any change to the files makes a new cache, and the new cache replaces the older
ones of the same files at that size (copying or touching the data does not pile up gigabytes of
stale caches). Files are written to a temporary name and renamed, so an interrupted build never
leaves a partial cache behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from wbc._progress import progress_bar
from wbc.data.images import ImageDecodeError, decode_image_array

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2
"""Bump when :func:`decode_image_array` changes its output, to invalidate old caches (2: EXIF orientation honoured,
16-bit and float images scaled by their real range)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("WBC_CACHE_DIR") or Path.home() / ".cache" / "wbc")


def fingerprint_files(paths: Sequence[str]) -> str:
    """A short hash of the file list: relative order, names, sizes and modification times."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(os.fsencode(os.path.abspath(path)) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _files_key(paths: Sequence[str]) -> str:
    """A short hash of the file list's absolute paths alone: the same files before and after a change."""
    return hashlib.sha256(b"\n".join(os.fsencode(os.path.abspath(path)) for path in paths)).hexdigest()[:16]


@dataclass(frozen=True)
class DecodedImages:
    """Images decoded at one size: ``pixels[i]`` is a ``(3, S, S)`` uint8 array."""

    pixels: np.ndarray
    kept: np.ndarray
    """Indices into the input path list of the images that decoded (all of them unless skipping)."""
    bad_files: tuple[str, ...]


def _decode_one(job: tuple[str, int]) -> np.ndarray | str:
    path, size = job
    try:
        return decode_image_array(path, size).transpose(2, 0, 1)
    except ImageDecodeError as error:
        return str(error)


def _atomic_write_json(path: Path, payload: dict) -> None:
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    temporary.write_text(json.dumps(payload))
    os.replace(temporary, path)


def decode_cached(
    paths: Sequence[str],
    size: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    skip_bad_images: bool = False,
    description: str = "decoding",
) -> DecodedImages:
    """Return the images in ``paths`` decoded to ``size``, from the cache or decoding them now.

    Files that are not readable images raise :class:`ImageDecodeError` naming them (all of them are read first, so
    one error names every bad file), unless ``skip_bad_images`` is set: then they are left out, and a warning gives
    the count.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = f"v{CACHE_FORMAT_VERSION}-{fingerprint_files(paths)}-{size}px"
    array_path = cache_dir / f"{key}.npy"
    index_path = cache_dir / f"{key}.json"
    if array_path.exists() and index_path.exists():
        index = json.loads(index_path.read_text())
        if index["bad_files"] and not skip_bad_images:
            raise ImageDecodeError(_unreadable(index["errors"]))
        pixels = np.load(array_path, mmap_mode="r")
        log.info("using decoded-image cache %s", array_path)
        return _finish(pixels, np.asarray(index["kept"], dtype=np.int64), index["bad_files"], index["errors"])

    temporary = array_path.with_name(array_path.name + f".tmp{os.getpid()}.npy")
    pixels = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=(len(paths), 3, size, size))
    kept: list[int] = []
    bad_files: list[str] = []
    errors: list[str] = []
    workers = workers or min(os.cpu_count() or 1, 8)
    jobs = [(str(path), size) for path in paths]
    try:
        context = multiprocessing.get_context("fork" if os.name == "posix" else None)
        with context.Pool(workers) as pool:
            results = pool.imap(_decode_one, jobs, chunksize=32)
            for index, result in enumerate(progress_bar(results, total=len(jobs), desc=f"{description} ({size}px)", unit="img")):
                if isinstance(result, str):
                    bad_files.append(jobs[index][0])
                    errors.append(result)
                    continue
                pixels[len(kept)] = result
                kept.append(index)
        if errors and not skip_bad_images:
            raise ImageDecodeError(_unreadable(errors))
        pixels.flush()
        del pixels
        if bad_files:
            _compact(temporary, len(kept))
        os.replace(temporary, array_path)
    finally:
        if temporary.exists():
            temporary.unlink()
    files = _files_key(paths)
    _atomic_write_json(index_path, {"kept": kept, "bad_files": bad_files, "errors": errors, "size": size, "files": files})
    _remove_superseded(cache_dir, key, files, size)
    return _finish(np.load(array_path, mmap_mode="r"), np.asarray(kept, dtype=np.int64), bad_files, errors)


def _remove_superseded(cache_dir: Path, key: str, files: str, size: int) -> None:
    """Delete the older caches of the same files at the same size (a process still reading one keeps
    its memory map: the data goes when it closes)."""
    for index_path in cache_dir.glob(f"v*-{size}px.json"):
        if index_path.stem == key:
            continue
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            continue
        if index.get("files") == files and index.get("size") == size:
            index_path.with_suffix(".npy").unlink(missing_ok=True)
            index_path.unlink(missing_ok=True)
            log.info("removed the superseded decoded-image cache %s", index_path.with_suffix(".npy"))


def _compact(npy_path: Path, count: int) -> None:
    """Drop the unused tail rows left by skipped images, copying in chunks into a new file."""
    full = np.load(npy_path, mmap_mode="r")
    compact_path = npy_path.with_name(npy_path.name + ".compact.npy")
    compact = np.lib.format.open_memmap(compact_path, mode="w+", dtype=full.dtype, shape=(count, *full.shape[1:]))
    for start in range(0, count, 1024):
        stop = min(start + 1024, count)
        compact[start:stop] = full[start:stop]
    compact.flush()
    del compact, full
    os.replace(compact_path, npy_path)


def _unreadable(errors: list[str], shown: int = 3) -> str:
    """One line for every unreadable file: the count, the first ``shown`` errors, how many more."""
    listed = "; ".join(errors[:shown]) + (f"; and {len(errors) - shown} more" if len(errors) > shown else "")
    return listed if len(errors) == 1 else f"{len(errors)} unreadable image files: {listed}"


def _finish(pixels: np.ndarray, kept: np.ndarray, bad_files: list[str], errors: list[str]) -> DecodedImages:
    if bad_files:
        warnings.warn(
            f"skipped {len(bad_files)} unreadable image file(s), first: {errors[0]}", stacklevel=3
        )
    return DecodedImages(pixels=pixels, kept=kept, bad_files=tuple(bad_files))
