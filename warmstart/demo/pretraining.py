"""Step 1 of the demo: self-supervised pretraining of ``DigitNet`` on the unlabeled train-pool images.

Digits are not flip-invariant and are grayscale, so the views are random resized crops of 50-100% of the image
plus small rotations, with no flips, colour jitter or blur (what we measured to give a clear gain; the 224 px
ImageNet recipe, or hflip with strong crops, gives much less at 16 px). ``warmstart.pretrain`` has no transform
argument, so ``DigitViews`` installs these views on the pretraining dataset at ``setup``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from .data import MEAN, STD
from .model import DigitNet

# Per-method options passed to warmstart.pretrain (method kwargs), tuned for 16 px digits and a few CPU minutes.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "simclr": {"temperature": 0.2, "output_dim": 64},
    "byol": {"hidden_dim": 256, "output_dim": 64},
    "dino": {"hidden_dim": 256, "bottleneck_dim": 64, "output_dim": 512},
}
# Peak pretraining lr (AdamW, warmup + cosine): 2e-3 learns more in a few hundred steps than the engine's 1e-3.
PRETRAIN_LR: dict[str, float] = {"simclr": 2e-3, "byol": 2e-3, "dino": 1e-3}


def digit_views(image_size: int, method: str = "simclr") -> Any:
    """The two-view lightly transform for digits: crops of 50-100%, rotations up to 15 degrees, no flips.

    Example:
        >>> from PIL import Image
        >>> views = digit_views(16)(Image.new("RGB", (16, 16)))
        >>> len(views), tuple(views[0].shape)
        (2, (3, 16, 16))
    """
    transforms = require("lightly.transforms", "ssl")
    return transforms.SimCLRTransform(
        input_size=image_size, min_scale=0.5, cj_prob=0.0, random_gray_scale=0.0, gaussian_blur=0.0,
        hf_prob=0.0, rr_prob=0.5, rr_degrees=15.0, normalize={"mean": list(MEAN), "std": list(STD)},
    )


def _views_callback(image_size: int, method: str) -> Any:
    L = require("lightning", "lightning")

    class DigitViews(L.Callback):
        """Replace the method's default views with ``digit_views`` once the datamodule has built its dataset."""

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            dataset = trainer.datamodule.dataset if trainer.datamodule is not None else None
            if dataset is None or not hasattr(dataset, "transform"):
                raise RuntimeError("warmstart.demo: cannot install digit views (no datamodule.dataset.transform)")
            dataset.transform = digit_views(image_size, method)

    return DigitViews()


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
    from ..core.data import write_image_folder
    from ..lightning_callbacks.pretraining import pretrain

    folder = write_image_folder(images, None, Path(out) / "unlabeled")
    return pretrain(
        Path(out) / "run", folder, DigitNet(width=width, num_classes=0), method=method, epochs=epochs,
        batch_size=min(batch_size, len(images)), image_size=image_size, devices=1, accelerator="cpu",
        num_workers=0, seed=seed, lr=PRETRAIN_LR.get(method), progress=progress,
        callbacks=[_views_callback(image_size, method)],
        **METHOD_OPTIONS[method],
    )
