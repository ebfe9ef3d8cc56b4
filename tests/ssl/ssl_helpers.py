"""Shared helpers for the SSL engine tests: a tiny CNN, digits images on disk, single-thread torch."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn


def tiny_cnn(width: int = 16) -> nn.Sequential:
    """A 3-conv CNN with pooled (B, 2*width) features: fast enough for many Lightning steps on CPU."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, 1, 1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def digits(n: int, size: int = 32, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scikit-learn digits (real 8x8 scans) upscaled to ``size`` px RGB uint8, and their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images[offset:offset + n] / 16.0 * 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR).convert("RGB"))
                    for im in images])
    return big, d.target[offset:offset + n]


def digit_folder(root: Path, n: int = 48, labeled: bool = False, offset: int = 0) -> Path:
    """Write ``n`` digits as PNGs under ``root`` (class subfolders when ``labeled``)."""
    from warmstart.testing import write_image_folder

    images, labels = digits(n, offset=offset)
    return write_image_folder(images, labels if labeled else None, root)


class StopAfterFirstEpoch(L.Callback):
    """Simulates an interrupted run: stops after epoch 0, when last.ckpt has just been written."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread (and the shared CI box is oversubscribed); restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
