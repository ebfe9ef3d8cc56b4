"""The demo's experiment: pretrain once, then every (labeled fraction x method) cell with the same budget."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import labeled_subset, load_digit_images, split_indices, to_tensor
from .finetune import METHODS, PRETRAINED, train_one
from .model import DigitNet


@dataclass
class DemoConfig:
    """Everything that determines the demo's results (the same config and seed give the same table).

    Example:
        >>> DemoConfig(seed=1).pretrain_epochs
        10
        >>> DemoConfig.quick().epochs < DemoConfig().epochs
        True
    """

    fractions: tuple[float, ...] = (0.01, 0.05, 0.2)
    methods: tuple[str, ...] = ("scratch", "probe", "finetune", "lora")
    ssl_method: str = "simclr"
    image_size: int = 16
    width: int = 16
    pretrain_epochs: int = 10
    pretrain_batch_size: int = 128
    epochs: int = 16
    samples_per_epoch: int = 128
    lr: float = 3e-3
    test_fraction: float = 0.3
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """The reduced size CI runs (``--quick``): fewer epochs, two fractions, the three key methods."""
        base = {"fractions": (0.01, 0.2), "methods": ("scratch", "finetune", "lora"), "pretrain_epochs": 4,
                "epochs": 10}
        return cls(**{**base, **overrides})

    def validate(self) -> None:
        """Raise ValueError naming the bad option and the fix."""
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown fine-tuning method(s) {bad}; choose from {', '.join(METHODS)}")
        if not self.fractions or any(not 0.0 < f <= 1.0 for f in self.fractions):
            raise ValueError(f"--fractions must be numbers in (0, 1], e.g. 0.01,0.05,0.2; got {self.fractions}")
        for name in ("pretrain_epochs", "epochs", "image_size", "width", "samples_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 8:
            raise ValueError(f"--image-size must be >= 8 (the digits are 8x8), got {self.image_size}")


def _deterministic(seed: int) -> None:
    # Same seed -> same table on CPU: seeded RNGs, deterministic kernels, one intra-op thread pool size.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    np.random.seed(seed)


def knn_accuracy(backbone: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, labeled: np.ndarray,
                 test: np.ndarray) -> float:
    """1-nearest-neighbour (cosine) accuracy on ``test`` using only the ``labeled`` examples' features.

    Example:
        >>> x, y = torch.randn(20, 3, 16, 16), torch.arange(20) % 10
        >>> 0.0 <= knn_accuracy(DigitNet(4, 0), x, y, np.arange(10), np.arange(10, 20)) <= 1.0
        True
    """
    backbone.eval()
    with torch.no_grad():
        feats = torch.nn.functional.normalize(backbone(x), dim=1)
    nearest = (feats[test] @ feats[labeled].T).argmax(1)
    return round(float((y[labeled][nearest] == y[test]).float().mean()), 4)


def run_experiment(config: DemoConfig, out: Path, progress: bool = True) -> dict:
    """Run the whole demo into ``out`` and return the results (also what ``results.json`` holds).

    Example:
        >>> import tempfile
        >>> cfg = DemoConfig(fractions=(0.05,), methods=("scratch",), pretrain_epochs=1, epochs=1)
        >>> run_experiment(cfg, Path(tempfile.mkdtemp()), progress=False)["rows"][0]["method"]  # doctest: +SKIP
        'scratch'
    """
    config.validate()
    _deterministic(config.seed)
    start = time.perf_counter()
    images, labels = load_digit_images(config.image_size)
    pool, test = split_indices(labels, config.test_fraction, config.seed)
    x_all, y_all = to_tensor(images), torch.from_numpy(labels)

    weights, pretrain_summary = None, None
    if any(m in PRETRAINED for m in config.methods):
        _say(progress, f"[1/2] {config.ssl_method} pretraining on {len(pool)} unlabeled digit images "
                       f"({config.pretrain_epochs} epochs, labels unused)")
        from .pretraining import pretrain_backbone

        pretrain_summary = pretrain_backbone(
            images[pool], out / "pretrain", width=config.width, image_size=config.image_size,
            method=config.ssl_method, epochs=config.pretrain_epochs, batch_size=config.pretrain_batch_size,
            seed=config.seed, progress=progress)
        weights = Path(pretrain_summary["exported"]["safetensors"])

    rows, knn = [], {}
    cells = [(f, m) for f in config.fractions for m in config.methods]
    for i, (fraction, method) in enumerate(cells, 1):
        labeled = labeled_subset(pool, labels, fraction, config.seed)
        _say(progress, f"[2/2] run {i}/{len(cells)}: {method} with {fraction:.0%} of the labels "
                       f"({len(labeled)} images); held-out test set: {len(test)} images")
        row = train_one(method, x_all[labeled], y_all[labeled], x_all[test], y_all[test],
                        weights=weights if method in PRETRAINED else None, width=config.width,
                        epochs=config.epochs, lr=config.lr, seed=config.seed,
                        samples_per_epoch=config.samples_per_epoch, progress=progress)
        rows.append({"fraction": fraction, **row})
        if weights is not None and fraction not in knn:
            knn[fraction] = _knn_pair(config, weights, x_all, y_all, labeled, test)

    return {"config": asdict(config), "rows": rows, "knn_1nn": {str(k): v for k, v in knn.items()},
            "pretrain": _brief(pretrain_summary), "n_test": int(len(test)), "n_pool": int(len(pool)),
            "total_wall_time_s": round(time.perf_counter() - start, 2)}


def _knn_pair(config: DemoConfig, weights: Path, x: torch.Tensor, y: torch.Tensor, labeled: np.ndarray,
              test: np.ndarray) -> dict:
    """1-NN accuracy of random-init vs SSL features with the same labeled set: the gain before any fine-tuning."""
    from ..core.checkpoints import load_backbone_weights

    torch.manual_seed(config.seed)
    random_net = DigitNet(config.width, 0)
    ssl_net = DigitNet(config.width, 0)
    load_backbone_weights(ssl_net, weights)
    return {"random_init": knn_accuracy(random_net, x, y, labeled, test),
            "ssl": knn_accuracy(ssl_net, x, y, labeled, test)}


def _brief(summary: dict | None) -> dict | None:
    if summary is None:
        return None
    keys = ("method", "epochs", "steps", "images_seen", "final_loss", "train_time_s", "images_per_s", "wall_time_s")
    return {k: summary.get(k) for k in keys} | {"weights": summary.get("exported", {}).get("safetensors")}


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)
