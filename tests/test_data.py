"""BarcelonaDataset, the decoded-image cache and BarcelonaDataModule on tiny synthetic data."""

import functools
import hashlib
import http.server
import threading
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from wbc.classes import CLASS_NAMES
from wbc.data import BarcelonaDataModule, BarcelonaDataset, DatasetError, ImageDecodeError, load_split
from wbc.data import dataset as dataset_module
from wbc.data.cache import decode_cached

from conftest import make_dataset


def test_fixed_class_order_and_targets(synthetic_data):
    dataset = BarcelonaDataset(synthetic_data, "train")
    assert dataset.classes == list(CLASS_NAMES)
    assert len(dataset) == 12 * 8
    image, target = dataset[0]
    assert image.mode == "RGB" and target == 0


def test_missing_class_folder_keeps_indices(tmp_path):
    root = make_dataset(tmp_path, splits=("valid",))
    shutil.rmtree(root / "barcelona" / "valid" / "basophil")
    dataset = BarcelonaDataset(root, "valid")
    assert set(dataset.targets) == set(range(1, 8))


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda root: shutil.rmtree(root), "does not exist"),
        (lambda root: shutil.rmtree(root / "barcelona" / "valid"), "valid does not exist"),
        (lambda root: (root / "barcelona" / "valid" / "blast").mkdir(), "blast: folder is not one of the eight"),
        (lambda root: [shutil.rmtree(p) for p in (root / "barcelona" / "valid").iterdir()], "holds no images"),
    ],
    ids=["no-root", "no-split", "unknown-class", "empty-split"],
)
def test_bad_layouts_give_one_line_errors(tmp_path, breakage, expected):
    root = make_dataset(tmp_path / "root", splits=("valid",))
    breakage(root)
    with pytest.raises(DatasetError) as caught:
        BarcelonaDataset(root, "valid")
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_split_is_rejected(synthetic_data):
    with pytest.raises(ValueError, match="split"):
        BarcelonaDataset(synthetic_data, "holdout")


@pytest.fixture
def archive_server(tmp_path):
    """A local HTTP server holding barcelona.zip (one image per class and split)."""
    source = make_dataset(tmp_path / "source", per_class={"train": 1, "valid": 1}, splits=("train", "valid"))
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "barcelona.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in (source / "barcelona").rglob("*.jpg"):
            zipped.write(path, path.relative_to(source))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield archive, f"http://127.0.0.1:{server.server_address[1]}/barcelona.zip"
    server.shutdown()


def test_download_fetches_checks_md5_and_extracts(tmp_path, monkeypatch, archive_server):
    archive, url = archive_server
    monkeypatch.setattr(dataset_module, "ARCHIVE_URL", url)
    monkeypatch.setattr(dataset_module, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    dataset = BarcelonaDataset(tmp_path / "downloaded", "valid", download=True)
    assert len(dataset) == 8

    monkeypatch.setattr(dataset_module, "ARCHIVE_MD5", "0" * 32)
    with pytest.raises(DatasetError, match="the download is corrupt .*removed: run again"):
        BarcelonaDataset(tmp_path / "corrupt", "valid", download=True)
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == [], "neither the archive nor a half-extracted folder"

    # an archive that is not PBC's (here: no valid split) is never half-extracted
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("barcelona/train/basophil/a.jpg", b"not an image")
    monkeypatch.setattr(dataset_module, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(DatasetError, match="holds no barcelona/valid/"):
        BarcelonaDataset(tmp_path / "other", "valid", download=True)
    assert not (tmp_path / "other" / "barcelona").exists() and not list((tmp_path / "other").glob(".barcelona-*"))

    # offline: one line, nothing left behind
    monkeypatch.setattr(dataset_module, "ARCHIVE_URL", url.rsplit("/", 1)[0] + "/missing.zip")
    with pytest.raises(DatasetError, match="downloading .* failed .*run again"):
        BarcelonaDataset(tmp_path / "offline", "valid", download=True)
    assert list((tmp_path / "offline").iterdir()) == []


def _paths(root, split="train"):
    return [path for path, _ in BarcelonaDataset(root, split).samples]


def test_cache_is_reused_and_replaced_when_files_change(tmp_path):
    root = make_dataset(tmp_path / "d", per_class={"train": 2}, splits=("train",))
    paths = _paths(root)
    first = decode_cached(paths, 16, cache_dir=tmp_path / "c", workers=1)
    assert first.pixels.shape == (16, 3, 16, 16) and first.pixels.dtype == np.uint8
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1
    again = decode_cached(paths, 16, cache_dir=tmp_path / "c", workers=1)
    assert np.array_equal(first.pixels, again.pixels)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1

    other = decode_cached(paths[:8], 16, cache_dir=tmp_path / "c", workers=1)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2

    # a changed file makes a new cache, which replaces the stale one of the same files (not the other list's)
    (stale,) = {p.name for p in (tmp_path / "c").glob("*.npy")} - {Path(other.pixels.filename).name}
    os.utime(paths[0], ns=(1, 1))
    rebuilt = decode_cached(paths, 16, cache_dir=tmp_path / "c", workers=1)
    assert np.array_equal(rebuilt.pixels, again.pixels)
    assert not (tmp_path / "c" / stale).exists() and not (tmp_path / "c" / stale).with_suffix(".json").exists()
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2
    assert np.array_equal(first.pixels, rebuilt.pixels), "a process reading the removed cache keeps its data"
    decode_cached(paths, 24, cache_dir=tmp_path / "c", workers=1)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 3, "other sizes stay"
    assert not list((tmp_path / "c").glob("*.tmp*"))


@pytest.mark.parametrize("content", [b"", b"not a jpeg at all", "truncated"], ids=["zero-byte", "non-image", "truncated"])
def test_bad_training_file_fails_or_is_skipped_with_a_count(tmp_path, content):
    root = make_dataset(tmp_path / "d", per_class={"train": 2}, splits=("train",))
    bad = root / "barcelona" / "train" / "monocyte" / "bad.jpg"
    if content == "truncated":
        good = (root / "barcelona" / "train" / "monocyte" / "mo_0.jpg").read_bytes()
        content = good[: len(good) // 2]
    bad.write_bytes(content)
    paths = _paths(root)
    with pytest.raises(ImageDecodeError, match="bad.jpg"):
        decode_cached(paths, 16, cache_dir=tmp_path / "c", workers=1)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        decoded = decode_cached(paths, 16, cache_dir=tmp_path / "c", workers=1, skip_bad_images=True)
    assert decoded.pixels.shape[0] == len(paths) - 1
    assert decoded.bad_files == (str(bad),)
    with pytest.raises(ImageDecodeError, match="bad.jpg"):
        decode_cached(paths, 16, cache_dir=tmp_path / "c", workers=1)
    bad.with_name("bad2.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageDecodeError, match=r"^2 unreadable image files: .*/bad\.jpg: .*; .*/bad2\.jpg: not an image file \(accepted: [^;]*\)$"):
        decode_cached(_paths(root), 16, cache_dir=tmp_path / "c", workers=1)


def test_datamodule_batches_and_augmentation(synthetic_data, tmp_path):
    module = BarcelonaDataModule(synthetic_data, image_size=24, batch_size=8, limit_per_class=5, cache_dir=tmp_path / "c")
    module.setup("fit")
    assert len(module.datasets["train"]) == 40 and len(module.datasets["valid"]) == 32
    images, targets = next(iter(module.train_dataloader()))
    assert images.shape == (8, 3, 24, 24) and images.dtype == torch.uint8 and targets.dtype == torch.int64
    valid = module.datasets["valid"]
    assert torch.equal(valid[0][0], valid[0][0]), "validation images are not augmented"
    train = module.datasets["train"]
    views = {train[0][0].numpy().tobytes() for _ in range(20)}
    assert len(views) > 1, "training images are augmented"
    assert len(module.fingerprint) == 16


def test_limit_per_class_is_seeded_and_balanced(synthetic_data, tmp_path):
    first = load_split(synthetic_data, "train", 16, limit_per_class=3, cache_dir=tmp_path)
    second = load_split(synthetic_data, "train", 16, limit_per_class=3, cache_dir=tmp_path)
    assert first.paths == second.paths
    assert np.bincount(first.targets).tolist() == [3] * 8


def test_non_utf8_file_names_load_and_cache(tmp_path):
    root = make_dataset(tmp_path / "d", per_class={"valid": 1}, splits=("valid",))
    source = next((root / "barcelona" / "valid" / "ig").glob("*.jpg"))
    odd = source.with_name(os.fsdecode(b"ig-\xe9\xff.jpg"))
    source.rename(odd)
    dataset = load_split(root, "valid", 16, cache_dir=tmp_path / "c")
    assert odd.name in [os.path.basename(p) for p in dataset.paths] and len(dataset) == 8


def test_balanced_sampling_draws_each_class_about_equally_often(tmp_path):
    root = make_dataset(tmp_path / "d", per_class={"train": 30, "valid": 2})
    keep = {name: 6 for name in CLASS_NAMES} | {"basophil": 2, "neutrophil": 30}
    for name, count in keep.items():
        for extra in sorted((root / "barcelona" / "train" / name).iterdir())[count:]:
            extra.unlink()

    def drawn(sampling):
        module = BarcelonaDataModule(root, image_size=16, batch_size=8, augment="none", sampling=sampling, cache_dir=tmp_path / "c")
        module.setup("fit")
        loader = module.train_dataloader()
        targets = torch.cat([batch[1] for _ in range(40) for batch in loader])
        return np.bincount(targets.numpy(), minlength=8) / len(targets)

    shuffled, balanced = drawn("shuffle"), drawn("balanced")
    neutrophil, basophil = CLASS_NAMES.index("neutrophil"), CLASS_NAMES.index("basophil")
    assert shuffled[neutrophil] > 0.3 and shuffled[basophil] < 0.05
    assert np.all(np.abs(balanced - 1 / 8) < 0.04), balanced
    with pytest.raises(ValueError, match="unknown sampling 'weighted'"):
        BarcelonaDataModule(root, image_size=16, batch_size=8, sampling="weighted")


def test_commands_that_take_a_data_dir_download_it_first_with_download(tmp_path, monkeypatch, archive_server):
    from click.testing import CliRunner

    from wbc.cli import cli

    archive, url = archive_server
    monkeypatch.setattr(dataset_module, "ARCHIVE_URL", url)
    monkeypatch.setattr(dataset_module, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    data = tmp_path / "fresh"
    arguments = ["train", "--download", "--data-dir", str(data), "--arch", "scratch", "--mode", "scratch", "--epochs", "1",
                 "--image-size", "16", "--batch-size", "8", "--no-shiftbench", "--no-onnx", "--output-dir", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"{data / 'barcelona' / 'train'}: 8 images" in result.output and (data / "barcelona" / "valid").is_dir()
    assert "val_acc" in result.output or "accuracy" in result.output

    monkeypatch.setattr(dataset_module, "ARCHIVE_MD5", "0" * 32)
    refused = CliRunner().invoke(cli, ["evaluate", "--download", "--data-dir", str(tmp_path / "corrupt"), "--no-track"])
    assert refused.exit_code == 1 and refused.output.strip().splitlines()[-1].startswith("Error: ")
    assert "corrupt" in refused.output and "Traceback" not in refused.output
