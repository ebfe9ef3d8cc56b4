"""The demo's data: scikit-learn's 1,797 real 8x8 digit images, upsampled, with seed-deterministic splits."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .._optional import require

# Images are normalized as the SSL transforms normalize them (lightly's default), so pretrained features see the
# same input distribution during fine-tuning.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 10


def load_digit_images(size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """All digits as uint8 RGB images ``(N, size, size, 3)`` (bilinear upsampling of the 8x8 originals) + labels.

    Example:
        >>> images, labels = load_digit_images(16)
        >>> images.shape, images.dtype, int(labels.max())
        ((1797, 16, 16, 3), dtype('uint8'), 9)
    """
    datasets = require("sklearn.datasets", "demo")
    digits = datasets.load_digits()
    # Pixel values are 0..16 in the original; stretch to 0..255 before resizing so no precision is lost.
    gray = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR).convert("RGB"))
                       for g in gray])
    return images, digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train pool, held-out test) index split; the same seed gives the same split.

    Example:
        >>> train, test = split_indices(np.repeat(np.arange(10), 10), 0.3, seed=0)
        >>> len(train), len(test), len(set(train) & set(test))
        (70, 30, 0)
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.array(train)), np.sort(np.array(test))


def labeled_subset(pool: np.ndarray, labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """``fraction`` of ``pool`` as labeled examples, at least one per class (so 1% still covers every digit).

    Example:
        >>> labels = np.repeat(np.arange(10), 100)
        >>> sub = labeled_subset(np.arange(1000), labels, 0.01, seed=0)
        >>> len(sub), len(set(labels[sub]))
        (10, 10)
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labeled fractions must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[pool])
    n = max(len(classes), int(round(fraction * len(pool))))
    first = [rng.choice(pool[labels[pool] == c]) for c in classes]
    rest = rng.permutation(np.setdiff1d(pool, first))[: n - len(first)]
    return np.sort(np.concatenate([first, rest]).astype(np.int64))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> normalized float ``(N, 3, H, W)``, the classifier's input.

    Example:
        >>> to_tensor(np.zeros((2, 16, 16, 3), np.uint8)).shape
        torch.Size([2, 3, 16, 16])
    """
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
