"""Step 1 of the demo: self-supervised pretraining of ``DigitNet`` on the unlabeled train-pool images.

Digits are not flip-invariant and are grayscale, so the views are random resized crops of 50-100% of the image
plus small rotations, with no flips, colour jitter or blur (what we measured to give a clear gain; the 224 px
ImageNet recipe, or hflip with strong crops, gives much less at 16 px). They are passed to ``warmstart.pretrain``
as its ``transform``: ``DigitViews`` does lightly's ``SimCLRTransform(min_scale=0.5, rr_prob=0.5, rr_degrees=15,
hf_prob=0, cj_prob=0, ...)`` in two PIL calls per view, because at 16 px the torchvision v2 pipeline's per-call
overhead (~2 ms a view) was 3/4 of the pretraining time; the saved time buys more pretraining epochs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .data import MEAN, STD
from .model import DigitNet

# Per-method options passed to warmstart.pretrain (method kwargs), tuned for 16 px digits and a few CPU minutes.
# DINO gets two global views only (like simclr/byol): local crops of a 16 px digit are a few pixels of stroke.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "simclr": {"temperature": 0.2, "output_dim": 64},
    "byol": {"hidden_dim": 256, "output_dim": 64},
    "dino": {"hidden_dim": 256, "bottleneck_dim": 64, "output_dim": 512, "n_local_views": 0},
}
# Peak pretraining lr (AdamW, warmup + cosine): 2e-3 learns more in a few hundred steps than the engine's 1e-3.
PRETRAIN_LR: dict[str, float] = {"simclr": 2e-3, "byol": 2e-3, "dino": 1e-3}


class DigitViews:
    """Two augmented views of a digit: a random resized crop of 50-100% of the area (aspect 3/4-4/3), then with
    probability 0.5 a rotation of up to 15 degrees; no flips. Uses torch's RNG, so seeded runs repeat exactly.

    Example:
        >>> views = DigitViews(16)(Image.new("RGB", (16, 16)))
        >>> len(views), tuple(views[0].shape)
        (2, (3, 16, 16))
    """

    def __init__(self, image_size: int, n_views: int = 2, min_scale: float = 0.5, rotation_prob: float = 0.5,
                 degrees: float = 15.0) -> None:
        self.image_size, self.n_views, self.min_scale = int(image_size), int(n_views), float(min_scale)
        self.rotation_prob, self.degrees = float(rotation_prob), float(degrees)
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def _box(self, width: int, height: int) -> tuple[float, float, float, float]:
        # torchvision's RandomResizedCrop sampling (area and log-aspect uniform, 10 tries, then the full image).
        r = torch.rand(40).tolist()
        for i in range(10):
            area = width * height * (self.min_scale + (1.0 - self.min_scale) * r[4 * i])
            aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * r[4 * i + 1])
            w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
            if w <= width and h <= height:
                left, top = r[4 * i + 2] * (width - w), r[4 * i + 3] * (height - h)
                return left, top, left + w, top + h
        return 0.0, 0.0, float(width), float(height)

    def view(self, image: Image.Image) -> torch.Tensor:
        """One augmented view as a normalized (3, image_size, image_size) tensor."""
        size = (self.image_size, self.image_size)
        out = image.resize(size, Image.BILINEAR, box=self._box(*image.size))
        coin, angle = torch.rand(2).tolist()
        if coin < self.rotation_prob:
            out = out.rotate(self.degrees * (2.0 * angle - 1.0), Image.NEAREST)  # fill 0, like T.RandomRotation
        x = torch.from_numpy(np.asarray(out, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (x - self.mean) / self.std

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        image = image.convert("RGB")
        return [self.view(image) for _ in range(self.n_views)]


def digit_views(image_size: int, method: str = "simclr") -> DigitViews:
    """The views ``method`` pretrains on (``DigitViews``; every supported method takes two).

    Example:
        >>> digit_views(16).n_views
        2
    """
    return DigitViews(image_size)


def pretrain_backbone(images: np.ndarray, out: Path, *, width: int, image_size: int, method: str, epochs: int,
                      batch_size: int, seed: int, progress: bool = True) -> dict:
    """Write ``images`` (labels unused) to ``out/unlabeled`` and pretrain ``DigitNet`` on them with ``method``.

    Returns ``warmstart.pretrain``'s summary; the weights are in ``summary["exported"]["safetensors"]``.

    Example:
        >>> import tempfile
        >>> imgs = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
        >>> s = pretrain_backbone(imgs, Path(tempfile.mkdtemp()), width=4, image_size=16, method="simclr",
        ...                       epochs=1, batch_size=4, seed=0, progress=False)  # doctest: +SKIP
        >>> s["steps"]  # doctest: +SKIP
        2
    """
    if method not in METHOD_OPTIONS:
        raise ValueError(f"unknown --method {method!r}; the demo supports {', '.join(METHOD_OPTIONS)}")
    from ..pretraining import pretrain
    from ..testing import write_image_folder

    folder = write_image_folder(images, None, Path(out) / "unlabeled")
    return pretrain(
        Path(out) / "run", folder, DigitNet(width=width, num_classes=0), method=method, epochs=epochs,
        batch_size=min(batch_size, len(images)), image_size=image_size, devices=1, accelerator="cpu",
        num_workers=0, seed=seed, lr=PRETRAIN_LR.get(method), progress=progress,
        transform=digit_views(image_size, method),
        **METHOD_OPTIONS[method],
    )
