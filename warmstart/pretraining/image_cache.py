"""Decoded-image cache in RAM: decode each image once, keep it (uint8 RGB, float32 channels), serve it every epoch.

Design (why this shape): the cache is filled **in the main process**, before the first epoch, by one pass over the
dataset (a progress bar from 500 images on). DataLoader workers are then started (persistent, so once per run)
and inherit the filled cache: on Linux they are forked and the pixel buffers, never written, stay shared
copy-on-write; nothing is rebuilt per worker or per epoch. (With the ``spawn`` start method, macOS/Windows, each
worker receives one pickled copy when it starts.) Filling lazily inside workers would decode every image once per
worker and keep N copies.

What is kept is the loader's deterministic part only, at most its working size: for the PIL path the decoded RGB
image (``load_rgb``), for ``views="batched"`` the ``LoadResized`` uint8 ``(3, S, S)`` tensor and the image's crop
frame (with ``channels=N``, the ``LoadResizedChannels`` float32 ``(N, S, S)`` tensor: full precision, 4 bytes per
value). The random views are still made from it every epoch with the same per-image seeds, so a cached run trains
bit-identically to a streamed one.

Example:
    >>> import numpy as np, tempfile
    >>> from warmstart.testing import write_image_folder
    >>> from warmstart.core.data import UnlabeledImages
    >>> ds = UnlabeledImages(write_image_folder(np.zeros((3, 8, 6, 3), np.uint8), None, tempfile.mkdtemp()),
    ...                      progress=False)
    >>> estimate_bytes(ds, None), estimate_bytes(ds, _Square(4))
    (432, 144)
    >>> cached = CachedImages(ds, None, transform=None, progress=False)
    >>> cached.nbytes, cached[2].size
    (432, (6, 8))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .batched_views import Resized

CACHE_MODES = ("auto", "ram", "off")
DEFAULT_BUDGET_FRACTION = 0.25  # of the RAM available when the run starts
PROGRESS_FROM = 500  # images: below this the fill takes well under a second, a bar is noise


def available_ram_bytes() -> int:
    """RAM the OS can give without swapping: psutil if installed, else ``MemAvailable`` in /proc/meminfo.

    Example:
        >>> available_ram_bytes() > 0
        True
    """
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # No way to ask (e.g. macOS without psutil): total physical pages, if the OS exposes them.
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 4 * 1024**3


def default_budget_gb() -> float:
    """The default ``cache_budget_gb``: 25% of the RAM available now.

    Example:
        >>> 0 < default_budget_gb() < 1e6
        True
    """
    return DEFAULT_BUDGET_FRACTION * available_ram_bytes() / 1024**3


def estimate_bytes(dataset: Any, prepare: Callable | None) -> int:
    """Bytes the cache would take for ``dataset`` (an ``UnlabeledImages`` whose transform is None).

    ``prepare`` is the cached loader step: a ``LoadResized`` / ``LoadResizedChannels`` (``.item_bytes``: exactly
    ``n * item_bytes``) or None (decoded RGB images: ``3 * w * h`` from each file's header, which PIL reads without
    decoding the pixels). A Dataset source has no files: its first item's size times the item count.
    """
    n = len(dataset)
    item_bytes = getattr(prepare, "item_bytes", None)
    if prepare is not None and isinstance(item_bytes, int):
        return n * item_bytes
    files = getattr(dataset, "files", None)
    if prepare is None and files:
        from PIL import Image

        total = 0
        for path in files:
            with Image.open(path) as img:  # header only
                total += 3 * img.size[0] * img.size[1]
        return total
    first = prepare(dataset[0]) if prepare is not None else dataset[0]
    if isinstance(first, Resized):
        return n * (_as_array(first.image).nbytes + first.shape.numel() * 8)
    return n * _as_array(first).nbytes


class _Square:
    """Doctest helper: any image -> uint8 ``(3, size, size)`` zeros (a stand-in for ``LoadResized``)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.item_bytes = 3 * size * size

    def __call__(self, image: Any) -> torch.Tensor:
        return torch.zeros(3, self.size, self.size, dtype=torch.uint8)


class CachedImages(Dataset):
    """``dataset`` decoded (and ``prepare``-d) once into arrays in RAM; item ``i`` -> ``transform(cached)``.

    Args:
        dataset: item ``i`` -> PIL image (an ``UnlabeledImages`` with ``transform=None``).
        prepare: the deterministic loader step to cache the output of (``LoadResized``), or None to cache the
            decoded image itself.
        transform: applied to the cached item every time it is served (the PIL path's random views), or None.
        progress: show a progress bar while filling (from 500 images on).

    PIL images come back as PIL images (``Image.fromarray``), tensors as tensors, ``Resized`` items (pixels and
    crop frame) as ``Resized``: the transform sees exactly what it would see without the cache.
    """

    def __init__(self, dataset: Any, prepare: Callable | None, transform: Callable | None = None,
                 progress: bool = True) -> None:
        self.dataset, self.prepare, self.transform = dataset, prepare, transform
        self.items: list[np.ndarray] = []
        frames: list[list[int]] = []  # Resized items: each image's crop frame, kept next to its pixels
        self._tensor = False
        n = len(dataset)
        from tqdm.auto import tqdm

        for i in tqdm(range(n), desc="caching decoded images", unit="img",
                      disable=not progress or n < PROGRESS_FROM):
            item = dataset[i]
            if prepare is not None:
                item = prepare(item)
            if isinstance(item, Resized):
                frames.append([int(v) for v in item.shape])
                item = item.image
            self._tensor = isinstance(item, torch.Tensor)
            self.items.append(_as_array(item))
        # One (N, 2) int64 array, not a tensor per image: under the "spawn" start method every tensor of the dataset
        # would be sent to a worker as its own shared-memory segment (2 file descriptors each).
        self.frames = np.asarray(frames, dtype=np.int64).reshape(-1, 2) if frames else None
        self.nbytes = int(sum(a.nbytes for a in self.items) + (self.frames.nbytes if self.frames is not None else 0))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        array = self.items[index]
        if self.frames is not None:  # shares the buffers: the batched path only reads them
            item: Any = Resized(torch.from_numpy(array), torch.from_numpy(self.frames[index]))
        elif self._tensor:
            item = torch.from_numpy(array)  # shares the buffer; the batched path only reads it
        else:
            from PIL import Image

            item = Image.fromarray(array)
        return self.transform(item) if self.transform is not None else item

    @property
    def skipped(self) -> int:
        """The wrapped dataset's skipped-file count (all decoding happened in this process, so it is complete)."""
        return int(getattr(self.dataset, "skipped", 0) or 0)

    def __getattr__(self, name: str) -> Any:
        # .scan, .files, ... of the wrapped UnlabeledImages (only called for names not found on self).
        if name in ("dataset", "items", "frames"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _as_array(item: Any) -> np.ndarray:
    if isinstance(item, torch.Tensor):
        # uint8 RGB (LoadResized) or float32 channels (LoadResizedChannels): nothing else is a prepared image
        if item.dtype not in (torch.uint8, torch.float32):
            raise TypeError(f"the cache keeps uint8 or float32 images; the loader step gave {item.dtype}")
        return item.contiguous().numpy()
    array = np.asarray(item)
    if array.dtype != np.uint8:
        raise TypeError(f"the cache keeps uint8 images; got {array.dtype}")
    return np.ascontiguousarray(array)
