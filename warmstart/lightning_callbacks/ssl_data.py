"""``SSLDataModule``: unlabeled images -> batches of augmented views, for ``SSLModule`` or any Lightning loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .._optional import require

L = require("lightning", "lightning")


class EpochShuffleSampler(Sampler[int]):
    """A random order that depends only on ``(seed, epoch)``, so a resumed run sees the same batches.

    (A plain ``shuffle=True`` draws from the global RNG, whose state a checkpoint does not restore.)
    Lightning calls ``set_epoch`` before every epoch.

    Example:
        >>> s = EpochShuffleSampler(5, seed=0)
        >>> a = list(s); s.set_epoch(1); b = list(s); s.set_epoch(0)
        >>> sorted(a), a == list(s), a == b
        ([0, 1, 2, 3, 4], True, False)
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch = int(size), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class SSLDataModule(L.LightningDataModule):
    """Unlabeled images (folder, list of paths or Dataset) with a method's multi-view transform.

    Batches are lists of view tensors ``[(B, 3, H, W), ...]``. ``drop_last`` keeps every batch full (contrastive
    losses and BatchNorm dislike a tiny last batch); corrupt files are skipped and counted by
    ``UnlabeledImages`` (``.dataset.skipped``). Under DDP Lightning's DistributedSampler shards and shuffles.

    Example:
        >>> import numpy as np, tempfile
        >>> from warmstart.core.data import write_image_folder
        >>> from warmstart.core.ssl import get_method
        >>> from torch import nn
        >>> root = write_image_folder(np.zeros((4, 32, 32, 3), np.uint8), None, tempfile.mkdtemp())
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> dm = SSLDataModule(root, get_method("simclr", net, 32).transform, batch_size=2)
        >>> dm.setup("fit")
        >>> [tuple(v.shape) for v in next(iter(dm.train_dataloader()))]
        [(2, 3, 32, 32), (2, 3, 32, 32)]
    """

    def __init__(self, data: str | Path | list | Dataset, transform: Callable, batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0, drop_last: bool = True, pin_memory: bool = False) -> None:
        super().__init__()
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 for self-supervised losses, got {batch_size}")
        self.data, self.transform = data, transform
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.drop_last, self.pin_memory = drop_last, pin_memory
        self.dataset: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            from ..core.data import UnlabeledImages

            if isinstance(self.data, UnlabeledImages):  # already scanned (pretrain validates data up front)
                self.data.transform = self.transform
                self.dataset = self.data
            else:
                self.dataset = UnlabeledImages(self.data, transform=self.transform)

    @property
    def skipped(self) -> int:
        """Files skipped as unreadable so far (0 before ``setup``)."""
        return int(getattr(self.dataset, "skipped", 0) or 0)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        distributed = self.trainer is not None and self.trainer.world_size > 1
        kwargs: dict[str, Any] = {}
        if distributed:
            kwargs["shuffle"] = True  # Lightning swaps in a DistributedSampler (seeded, set_epoch per epoch)
        else:
            kwargs["sampler"] = EpochShuffleSampler(len(self.dataset), self.seed)
        return DataLoader(
            self.dataset, batch_size=self.batch_size, drop_last=self.drop_last, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory, collate_fn=collate_views,
            # Own generator: creating the loader's iterator then draws its worker seed from here, not from the
            # global RNG that SSLModule reseeds per epoch (else a resumed epoch would get different augmentations).
            generator=torch.Generator().manual_seed(self.seed), **kwargs,
        )


def collate_views(items: list) -> list[torch.Tensor]:
    """Stack per-image view lists into one (B, 3, H, W) tensor per view; extra fields (index, path) are dropped.

    Example:
        >>> views = collate_views([[torch.zeros(3, 4, 4), torch.ones(3, 2, 2)]] * 2)
        >>> [tuple(v.shape) for v in views]
        [(2, 3, 4, 4), (2, 3, 2, 2)]
    """
    per_image = [_views_of(item) for item in items]
    return [torch.stack([views[i] for views in per_image]) for i in range(len(per_image[0]))]


def _views_of(item: Any) -> list[torch.Tensor]:
    # UnlabeledImages returns transform(image); some datasets return (views, index/path): keep the views.
    if isinstance(item, torch.Tensor):
        return [item]
    if isinstance(item, (list, tuple)) and item and isinstance(item[0], (list, tuple)):
        return list(item[0])
    if isinstance(item, (list, tuple)) and all(isinstance(v, torch.Tensor) and v.ndim == 3 for v in item):
        return list(item)
    if isinstance(item, (list, tuple)) and item and isinstance(item[0], torch.Tensor):
        return [item[0]]
    raise TypeError(f"cannot find image views in a dataset item of type {type(item).__name__}")
