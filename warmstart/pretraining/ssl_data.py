"""``SSLDataModule``: unlabeled images -> batches of augmented views, for ``SSLModule`` or any Lightning loop."""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .._optional import require

L = require("lightning", "lightning")

MAX_AUTO_WORKERS = 8  # beyond this, decoding small images is rarely the bottleneck and each worker costs RAM


def resolve_num_workers(value: int | str, local_devices: int = 1, cpus: int | None = None) -> int:
    """DataLoader workers per device: an int as given; ``"auto"``: ``min(8, cpus // local_devices - 1)``, >= 0.

    ``cpus`` defaults to the cores this process may run on (``os.sched_getaffinity``, which honours taskset,
    cgroups cpusets and SLURM bindings, unlike ``os.cpu_count``). One core per device is left to the training
    process itself, so a single core (or one core per device) means 0 workers: loading then happens in the
    training process, instead of a worker competing with it for the same core.

    Example:
        >>> resolve_num_workers("auto", 1, cpus=1), resolve_num_workers("auto", 1, cpus=2)
        (0, 1)
        >>> resolve_num_workers("auto", 4, cpus=32), resolve_num_workers("auto", 1, cpus=64), resolve_num_workers(3)
        (7, 8, 3)
    """
    if value == "auto":
        if cpus is None:
            try:
                cpus = len(os.sched_getaffinity(0))
            except AttributeError:  # macOS / Windows have no affinity call
                cpus = os.cpu_count() or 1
        return max(0, min(MAX_AUTO_WORKERS, int(cpus) // max(1, int(local_devices)) - 1))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"num_workers must be 'auto' or an integer >= 0, got {value!r}")
    return int(value)


class EpochShuffleSampler(Sampler[int]):
    """A random order that depends only on ``(seed, epoch)``, so a resumed run sees the same batches.

    (A plain ``shuffle=True`` draws from the global RNG, whose state a checkpoint does not restore.)
    Lightning calls ``set_epoch`` before every epoch. ``tag_epoch=True`` yields ``(epoch, index)`` pairs, which
    :class:`SeededViews` turns into per-image augmentation seeds. ``skip_next(epoch, n)`` drops the first ``n``
    indices of that epoch's order once: how a run resumed mid-epoch continues where it stopped.

    Example:
        >>> s = EpochShuffleSampler(5, seed=0)
        >>> a = list(s); s.set_epoch(1); b = list(s); s.set_epoch(0)
        >>> sorted(a), a == list(s), a == b
        ([0, 1, 2, 3, 4], True, False)
        >>> s.skip_next(0, 3); list(s) == a[3:]
        True
    """

    def __init__(self, size: int, seed: int = 0, *, tag_epoch: bool = False) -> None:
        self.size, self.seed, self.epoch, self.tag_epoch = int(size), int(seed), 0, tag_epoch
        self._skip: tuple[int, int] | None = None
        self._resumed_from: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_next(self, epoch: int, count: int) -> None:
        """Leave out the first ``count`` indices the next time epoch ``epoch`` is iterated."""
        self._skip = (int(epoch), int(count))

    def resume(self, state: dict[str, int], batch_size: int, num_batches: int) -> None:
        """Continue after ``state["batches_done"]`` batches of ``state["epoch"]`` (once, however often called).

        Sets the epoch too: Lightning creates the iterator (and worker prefetch) before its own ``set_epoch``.
        """
        key = (int(state.get("epoch", 0)), int(state.get("batches_done", 0)))
        if key == self._resumed_from:
            return
        self._resumed_from = key
        epoch, done = key
        if done >= num_batches:  # saved at the end of an epoch: the next one starts from its first batch
            self.set_epoch(epoch + 1)
            return
        self.set_epoch(epoch)
        self.skip_next(epoch, done * batch_size)

    def __iter__(self) -> Iterator[Any]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self._skip is not None and self._skip[0] == self.epoch:
            order = order[self._skip[1]:]
            self._skip = None
        return iter([(self.epoch, i) for i in order] if self.tag_epoch else order)

    def __len__(self) -> int:
        return self.size


class SeededViews(Dataset):
    """Makes item ``(epoch, index)`` of ``dataset`` with RNGs seeded from ``(seed, epoch, index)``.

    The augmentations of an image then depend on nothing else: not on the worker that made them, not on how
    many images came before, not on whether the run was resumed mid-epoch. That is what lets a run killed at
    any step resume to the same weights (ARCHITECTURE.md rule 11). The caller's RNG state is restored after
    each item. Plain integer indices (e.g. from a DistributedSampler) pass through unseeded.

    Example:
        >>> ds = SeededViews(_RandomItems(), seed=0)
        >>> ds[(0, 1)] == ds[(0, 1)], ds[(0, 1)] == ds[(1, 1)]
        (True, False)
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        epoch, index = key
        seed = (self.seed * 1_000_003 + int(epoch) * 100_003 + int(index)) % (2**31 - 1)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            # The CPU generator only (what the PIL views draw from and fork_rng restores): torch.manual_seed
            # would also queue a lazy CUDA/XPU/MTIA reseed, each capturing a stack trace (0.8 ms vs 0.03 ms per
            # image, measured on 2 busy cores) and leaving the caller's GPU RNG reseeded.
            torch.default_generator.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class IndexedImages(Dataset):
    """The batched-views dataset: item ``(epoch, index)`` (or ``index``) -> ``(image, index)``, or
    ``(image, index, shape)`` for a :class:`~warmstart.pretraining.batched_views.Resized` item.

    ``image`` is whatever the wrapped dataset's transform gives (``LoadResized``: uint8 ``(3, S, S)`` and the
    shape its crops are drawn in); no random number is drawn here. The index travels with the batch, so the views
    made on the device can seed each image from ``(seed, epoch, index)`` (``BatchedViews``), as
    :class:`SeededViews` does for the PIL path.

    Example:
        >>> IndexedImages([10, 11, 12])[(5, 2)]
        (12, 2)
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> tuple[Any, ...]:
        from .batched_views import Resized

        index = int(key[1]) if isinstance(key, tuple) else int(key)
        item = self.dataset[index]
        return (item.image, index, item.shape) if isinstance(item, Resized) else (item, index)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in every Lightning checkpoint.

    ``state_dict`` records the epoch and how many of its batches were trained (``progress``); ``load_state_dict``
    makes the sampler continue after them instead of replaying the epoch. Lightning calls these for "stateful"
    loaders. :class:`SSLDataModule` also restores the same state through its own hooks, because a
    ``configure_optimizers`` that reads ``trainer.estimated_stepping_batches`` builds the loader before Lightning
    restores loop state; applying a state twice is harmless (see :meth:`EpochShuffleSampler.resume`).
    """

    def __init__(self, *args: Any, progress: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        done = int(self.progress()) if self.progress is not None else 0
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if isinstance(self.sampler, EpochShuffleSampler):
            self.sampler.resume(state, int(self.batch_size or 1), len(self))


class SSLDataModule(L.LightningDataModule):
    """Unlabeled images (folder, list of paths or Dataset) with a method's multi-view transform.

    With ``views="pil"`` batches are lists of view tensors ``[(B, 3, H, W), ...]`` made per image by
    ``transform`` in the loader. With ``views="batched"``, ``transform`` only decodes and resizes
    (``LoadResized``) and batches are ``[uint8 images (B, 3, S, S), indices (B,), crop frames (B, 2)]``:
    ``SSLModule(views="batched")`` makes the views on the device. ``drop_last`` keeps every batch full
    (contrastive losses and BatchNorm dislike a tiny last batch); corrupt files are skipped and counted by
    ``UnlabeledImages`` (``.dataset.skipped``). Under DDP Lightning's DistributedSampler shards and shuffles.

    Example:
        >>> import numpy as np, tempfile
        >>> from warmstart.testing import write_image_folder
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
                 num_workers: int | str = 0, seed: int = 0, drop_last: bool = True,
                 pin_memory: bool | str = False, views: str = "pil", cache: str = "off",
                 cache_budget_gb: float | None = None, progress: bool = True) -> None:
        super().__init__()
        from .image_cache import CACHE_MODES

        if views not in ("pil", "batched"):
            raise ValueError(f"views must be 'pil' or 'batched', got {views!r}")
        self.views = views
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 for self-supervised losses, got {batch_size}")
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {', '.join(map(repr, CACHE_MODES))}, got {cache!r}")
        if cache_budget_gb is not None and not (isinstance(cache_budget_gb, (int, float))
                                                and 0 < float(cache_budget_gb) < float("inf")):
            raise ValueError(f"cache_budget_gb must be a positive number of GB, got {cache_budget_gb!r}")
        resolve_num_workers(num_workers)  # a bad value fails here; "auto" is resolved per device in the loader
        self.data, self.transform = data, transform
        self.batch_size, self.num_workers, self.seed = int(batch_size), num_workers, int(seed)
        self.drop_last, self.pin_memory = drop_last, pin_memory
        self.cache, self.cache_budget_gb, self.progress = cache, cache_budget_gb, progress
        self.dataset: Dataset | None = None
        self.cache_info: dict[str, Any] | None = None  # what plan_cache decided (for the run summary)
        self._images: Any = None  # the scanned UnlabeledImages, transform not yet attached
        self._loader: ResumableDataLoader | None = None
        self._resume_state: dict[str, int] | None = None

    def _scanned(self) -> Any:
        if self._images is None:
            from ..core.data import UnlabeledImages

            # pretrain passes an already scanned UnlabeledImages (it validates data up front).
            images = self.data if isinstance(self.data, UnlabeledImages) else UnlabeledImages(self.data)
            images.transform = None  # attached in setup: directly, or behind the cache
            self._images = images
        return self._images

    def plan_cache(self, local_processes: int | None = None) -> dict[str, Any]:
        """Decide (once) whether the decoded images are cached in RAM; raise if ``cache`` cannot be honoured.

        The budget (``cache_budget_gb``, default 25% of the available RAM) is for the machine, so each of the
        ``local_processes`` (default: the trainer's devices on this node) gets its share. ``"auto"`` streams when
        the estimate exceeds it (one warning says so); ``"ram"`` then raises; a budget below one batch raises.

        Example:
            >>> import numpy as np, tempfile
            >>> from warmstart.testing import write_image_folder
            >>> root = write_image_folder(np.zeros((4, 8, 8, 3), np.uint8), None, tempfile.mkdtemp())
            >>> dm = SSLDataModule(root, lambda im: [im], batch_size=2, cache="auto", cache_budget_gb=1.0)
            >>> {k: dm.plan_cache()[k] for k in ("mode", "estimate_bytes")}
            {'mode': 'ram', 'estimate_bytes': 768}
        """
        if self.cache_info is not None:
            return self.cache_info
        from .image_cache import default_budget_gb, estimate_bytes

        images = self._scanned()
        if self.cache == "off":
            self.cache_info = {"mode": "off", "reason": "cache='off'"}
            return self.cache_info
        if local_processes is None:
            local_processes = self.trainer.num_devices if self.trainer is not None else 1
        budget_gb = float(self.cache_budget_gb) if self.cache_budget_gb is not None else default_budget_gb()
        budget = int(budget_gb * 1024**3 / max(1, int(local_processes)))
        need = estimate_bytes(images, self._prepare())
        per_batch = need * self.batch_size // max(1, len(images))
        info = {"budget_bytes": budget, "estimate_bytes": need, "local_processes": int(local_processes)}
        if budget < per_batch:
            raise ValueError(
                f"cache_budget_gb={budget_gb:g} gives {budget / 1024**2:.1f} MB per process, less than one batch "
                f"of decoded images ({per_batch / 1024**2:.1f} MB for batch_size={self.batch_size}). Raise "
                "--cache-budget-gb, or pass --cache off to stream the images from disk.")
        if need > budget:
            message = (f"the decoded images need about {need / 1024**3:.2f} GB, over the cache budget of "
                       f"{budget / 1024**3:.2f} GB per process: streaming from disk (every image is decoded "
                       "every epoch). Raise --cache-budget-gb to cache them.")
            if self.cache == "ram":
                raise ValueError(f"cache='ram': {message.split(': streaming')[0]}. Raise --cache-budget-gb or "
                                 "pass --cache auto (streams when over budget).")
            warnings.warn(message, stacklevel=2)
            self.cache_info = {"mode": "off", "reason": "over budget", **info}
        else:
            self.cache_info = {"mode": "ram", **info}
        return self.cache_info

    def _prepare(self) -> Callable | None:
        # The deterministic loader step to cache: LoadResized for batched views; the PIL path caches the decoded
        # image and keeps making its random views from it.
        return self.transform if self.views == "batched" else None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            images = self._scanned()
            if self.plan_cache()["mode"] == "ram":
                from .image_cache import CachedImages

                # Filled here, in the main process, before any worker starts: see image_cache's docstring.
                cached = CachedImages(images, self._prepare(),
                                      transform=None if self.views == "batched" else self.transform,
                                      progress=self.progress)
                self.cache_info["bytes"] = cached.nbytes  # type: ignore[index]
                self.dataset = cached
            else:
                images.transform = self.transform
                self.dataset = images

    @property
    def skipped(self) -> int:
        """Files skipped as unreadable so far (0 before ``setup``)."""
        return int(getattr(self.dataset, "skipped", 0) or 0)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        distributed = self.trainer is not None and self.trainer.world_size > 1
        workers = self.resolved_num_workers()
        pin = self.pin_memory
        if pin == "auto":  # page-locked host memory only helps (and only works) for copies to a CUDA device
            pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        common: dict[str, Any] = dict(
            batch_size=self.batch_size, drop_last=self.drop_last, num_workers=workers,
            # Persistent: workers start once per run (not per epoch) and keep the cache they inherited.
            persistent_workers=workers > 0, pin_memory=bool(pin),
            collate_fn=collate_views if self.views == "pil" else None,
            # Own generator: creating the loader's iterator then draws its worker seed from here, not from the
            # global RNG that SSLModule reseeds per epoch (else a resumed epoch would get different augmentations).
            generator=torch.Generator().manual_seed(self.seed))
        if distributed:
            # Lightning swaps in a DistributedSampler (seeded, set_epoch per epoch); its integer indices are not
            # tagged with the epoch, so a DDP run resumes from the last epoch boundary (RunCheckpoint knows).
            return DataLoader(self._items(), shuffle=True, **common)
        sampler = EpochShuffleSampler(len(self.dataset), self.seed, tag_epoch=True)
        self._loader = ResumableDataLoader(self._items(), sampler=sampler,
                                           progress=self._batches_trained, **common)
        if self._resume_state is not None:
            self._loader.load_state_dict(self._resume_state)
        return self._loader

    def resolved_num_workers(self) -> int:
        """``num_workers`` with ``"auto"`` resolved: 0 for batched views from the RAM cache, else per device.

        Batched views from the cache leave the loader nothing to do but gather ready uint8 tensors: a worker
        process would only add inter-process copies, and on the CPU it competes with the model's threads.
        Otherwise see :func:`resolve_num_workers`.
        """
        cached = self.cache_info is not None and self.cache_info.get("mode") == "ram"
        if self.num_workers == "auto" and self.views == "batched" and cached:
            return 0
        devices = self.trainer.num_devices if self.trainer is not None else 1
        return resolve_num_workers(self.num_workers, devices)

    def _items(self) -> Dataset:
        # PIL views: seeded per image here. Batched views: no randomness in the loader; the index rides along.
        if self.views == "batched":
            return IndexedImages(self.dataset)  # type: ignore[arg-type]
        return SeededViews(self.dataset, self.seed)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in the epoch (saved in Lightning checkpoints with the data module)."""
        return {"loader": self._loader.state_dict()} if self._loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores the data module before building loaders, so the first loader already resumes.
        self._resume_state = state_dict.get("loader")
        if self._loader is not None and self._resume_state is not None:
            self._loader.load_state_dict(self._resume_state)

    def _batches_trained(self) -> int:
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


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


class _RandomItems(Dataset):
    """Doctest helper: each item is a fresh draw from torch's global RNG."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> float:
        return float(torch.rand(1))
