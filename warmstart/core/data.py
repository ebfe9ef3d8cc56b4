"""Image folders for pretraining and evaluation: recursive scan, robust decode, bad files skipped and counted.

Real unlabeled folders contain zero-byte files, half-copied JPEGs, ``.txt`` files named ``.jpg``, symlinks
(even loops) and palette/RGBA/grayscale images. A run must neither crash on them mid-epoch nor silently
shrink, so the datasets here walk the folder once (``image_scan``: links followed once, every file used,
skipped or ignored by a rule, reported in ``.scan``), decode every image once up front (JPEGs in draft
mode, in a thread pool: PIL releases the GIL), drop the ones that fail with one warning, and keep the count
in ``.skipped`` for the run summary. A decode that still fails later (a file changed on disk) is replaced by
the next readable item, label included, instead of raising.

A missing folder or a folder without images fails here, before any model or trainer is built.

``channels=N`` (1 for X-ray/depth, 4+ for multi-band) switches to ``warmstart.core.channels``: files (and ``.npy``
arrays) are read at full precision as float ``(C, H, W)`` tensors instead of RGB PIL images, and a file with
another channel count is an error before training starts. ``channels=None`` (default) is the RGB path as before.
"""

from __future__ import annotations

import os
import stat
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from . import channels as _channels
from .image_scan import IMAGE_SUFFIXES, ScanReport, walk_images

_SUFFIX_HINT = f".jpg, .png, .gif, .webp, .tif ... ({len(IMAGE_SUFFIXES)} suffixes PIL reads)"
_SCAN_THREADS = min(8, os.cpu_count() or 1)


def find_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursive, sorted, suffix case-insensitive; hidden files skipped).

    Symlinks are followed once (no loops, one path per real file); see ``walk_images`` for the full report.
    Raises FileNotFoundError if ``root`` does not exist and ValueError if it holds no image files.

    Example:
        >>> import tempfile, numpy as np
        >>> root = write_image_folder(np.zeros((2, 8, 8, 3), np.uint8), None, tempfile.mkdtemp())
        >>> [p.name for p in find_images(root)]
        ['00000.png', '00001.png']
    """
    return _walk(root).used


def _walk(root: str | Path, extra_suffixes: tuple[str, ...] = ()) -> ScanReport:
    """``walk_images`` with the errors a user can act on: missing folder, a non-image file, no images."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist. Pass the folder that holds your images "
                                f"(searched recursively for {_SUFFIX_HINT}).")
    if root.is_file() and root.suffix.lower() not in IMAGE_SUFFIXES + extra_suffixes:
        raise ValueError(f"{root} is a file, not an image folder; pass the folder that holds your images.")
    report = walk_images(root, extra_suffixes)
    if not report.used:
        counts = report.counts()
        why = ", ".join(f"{k}: {n}" for k, n in {**counts["skipped_reasons"], **counts["ignored_rules"]}.items())
        raise ValueError(f"no image files under {root} (searched recursively for {_SUFFIX_HINT}; found "
                         f"{counts['found']} other files{f' ({why})' if why else ''}). Point data= at the folder "
                         "that contains your images.")
    return report


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully and convert it to RGB (grayscale, palette, RGBA, CMYK, 16-bit all handled).

    Example:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> p = f"{tempfile.mkdtemp()}/gray.png"
        >>> Image.fromarray(np.zeros((4, 4), np.uint8)).save(p)
        >>> load_rgb(p).mode
        'RGB'
    """
    with _pil_open(path) as img:
        img.load()
        return _to_rgb(img)


def check_image(path: str | Path) -> str | None:
    """Why ``path`` is not a readable image (``"empty file"``, ``"truncated"``, ...), or None if it decodes.

    JPEGs decode in draft mode (1/8 scale): just as strict about truncation, several times faster.
    A FIFO or device is never opened (reading it can block forever).

    Example:
        >>> import tempfile
        >>> p = f"{tempfile.mkdtemp()}/notes.jpg"
        >>> _ = open(p, "w").write("not an image")
        >>> check_image(p)
        'not an image'
    """
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if info.st_size == 0:
            return "empty file"
        with _pil_open(path) as img:
            img.draft("RGB", (1, 1))
            img.load()
    except FileNotFoundError:
        return "broken symlink" if path.is_symlink() else "missing"
    except Image.UnidentifiedImageError:
        return "not an image"
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        text = str(err)
        return "truncated" if "truncated" in text.lower() else f"{type(err).__name__}: {text}"[:200]
    return None


def scan_images(paths: Sequence[str | Path], *, progress: bool = False) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Split ``paths`` into readable images and ``(path, reason)`` for the rest, decoding each once.

    Example:
        >>> import tempfile, numpy as np
        >>> root = write_image_folder(np.zeros((2, 8, 8), np.uint8), None, tempfile.mkdtemp())
        >>> _ = open(f"{root}/bad.png", "wb")
        >>> good, bad = scan_images(sorted(root.iterdir()))
        >>> len(good), [(p.name, why) for p, why in bad]
        (2, [('bad.png', 'empty file')])
    """
    paths = [Path(p) for p in paths]
    with ThreadPoolExecutor(max_workers=_SCAN_THREADS) as pool:
        results = pool.map(check_image, paths)
        if progress and len(paths) >= 500:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(paths), desc="checking images", unit="img")
        reasons = list(results)
    good = [p for p, why in zip(paths, reasons) if why is None]
    bad = [(p, why) for p, why in zip(paths, reasons) if why is not None]
    return good, bad


class UnlabeledImages(Dataset):
    """Images from a folder (recursive), a list of paths, or another Dataset, as RGB PIL images.

    Returns ``transform(image)`` (or the PIL image when ``transform`` is None). Unreadable files are dropped
    when the dataset is built, with one warning; ``.skipped`` counts them and ``.skipped_files`` says why.
    ``.scan`` (a ``ScanReport``) accounts for every file: used, skipped with a reason, or ignored by a rule
    (hidden, not an image, duplicate through a symlink...); ``.scan.counts()`` is what a run summary records.
    For a list of paths or a Dataset the scan covers the given items (a list is taken as given: no
    de-duplication). ``.files`` lists the images in item order (None for a Dataset source). ``check=False``
    skips the up-front decode (faster start on huge folders; bad files are then replaced at load time and
    counted only in the process that met them, so use it with ``num_workers=0`` when the count matters).

    ``channels=N``: items are float ``(N, H, W)`` tensors read at full precision (16-bit kept; ``.npy`` arrays
    ``(H, W[, C])`` accepted) instead of RGB PIL images; the up-front check also reads each file's channel count
    and raises ValueError, naming the files, if any differs from ``N`` (a Dataset source: its first item).

    Example:
        >>> import tempfile, numpy as np
        >>> root = write_image_folder(np.zeros((3, 8, 8, 4), np.uint8), None, tempfile.mkdtemp())
        >>> _ = open(f"{root}/broken.jpg", "wb")
        >>> _ = open(f"{root}/notes.txt", "w")
        >>> import warnings
        >>> with warnings.catch_warnings(record=True):
        ...     ds = UnlabeledImages(root)
        >>> len(ds), ds.skipped, ds[0].mode
        (3, 1, 'RGB')
        >>> {k: ds.scan.counts()[k] for k in ("found", "used", "skipped", "ignored")}
        {'found': 5, 'used': 3, 'skipped': 1, 'ignored': 1}
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path] | Dataset,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        check: bool = True,
        progress: bool = True,
        channels: int | None = None,
    ) -> None:
        self.transform = transform
        self.channels = None if channels is None else _channels._check_channels(channels)
        self.dataset: Dataset | None = None
        self.files: list[Path] | None = None
        self.skipped_files: list[tuple[Path, str]] = []
        self._runtime_bad: set[int] = set()
        if isinstance(source, Dataset):
            self.dataset = source
            if len(source) == 0:  # type: ignore[arg-type]
                raise ValueError("the dataset passed as data is empty.")
            self.scan = ScanReport(dataset_items=len(source))  # type: ignore[arg-type]
            if self.channels is not None:
                _channels.check_channel_counts([(Path("item 0"), self.dataset_image(0).shape[0])], self.channels)
            return
        if isinstance(source, (str, Path)):
            self.scan = _walk(source, _channels.ARRAY_SUFFIXES if self.channels is not None else ())
        elif isinstance(source, Sequence):
            if not source:
                raise ValueError("the list of image paths is empty.")
            self.scan = ScanReport(used=[Path(p) for p in source])
        else:
            raise ValueError(f"data must be an image folder, a list of image paths or a torch Dataset, "
                             f"got {type(source).__name__}.")
        if check:
            _check_scan(self.scan, progress, self.channels)
        self.skipped_files = list(self.scan.skipped)
        if not self.scan.used:
            raise ValueError(f"none of the {len(self.skipped_files)} image files could be read "
                             f"(e.g. {self.skipped_files[0][0]}: {self.skipped_files[0][1]}).")
        self.files = list(self.scan.used)

    @property
    def skipped(self) -> int:
        """Files left out: found unreadable up front, plus any that failed to decode later in this process."""
        return len(self.skipped_files) + len(self._runtime_bad)

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        if self.dataset is not None:
            img = self.dataset_image(index)
        else:
            img = _load_readable(self.files, index, self._runtime_bad, self.scan,  # type: ignore[arg-type]
                                 self.channels)[1]
        return self.transform(img) if self.transform is not None else img

    def dataset_image(self, index: int) -> Image.Image | torch.Tensor:
        """Item ``index`` of a wrapped Dataset as an RGB image (first element of tuples; tensors/arrays converted).

        With ``channels``: a float ``(C, H, W)`` tensor (tensors taken as ``(C, H, W)``, arrays as ``(H, W, C)``).

        Example:
            >>> ds = UnlabeledImages(_ListDataset([(np.zeros((4, 4, 3), np.float32), 0)]))
            >>> ds.dataset_image(0).size
            (4, 4)
        """
        item = self.dataset[index]  # type: ignore[index]
        if isinstance(item, (tuple, list)):
            item = item[0]
        if self.channels is not None:
            return _channel_item(item)
        return to_pil(item)


class LabeledImageFolder(Dataset):
    """Class-per-subfolder images (``root/<class>/**/*.png``) returning ``(tensor, label)``.

    ``.classes`` are the sorted subfolder names (label = index). Without ``transform``, images become float
    tensors (C, H, W) in [0, 1]. ``channels=N``: files (``.npy`` too) are read at full precision as float
    ``(N, H, W)`` tensors (see :class:`UnlabeledImages`), and a file with another channel count raises
    ValueError, naming it, before anything is returned. Unreadable files are skipped with one warning and counted
    in ``.skipped``; ``.scan`` accounts for every file under ``root`` (a file outside the class folders is
    ignored as "not in a class folder"). A file that breaks after the scan is replaced by the next readable
    ``(image, label)`` pair: an image is never served with another file's label.

    Example:
        >>> import tempfile, numpy as np
        >>> root = write_image_folder(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 1, 0], tempfile.mkdtemp(),
        ...                           class_names=["cat", "dog"])
        >>> ds = LabeledImageFolder(root)
        >>> ds.classes, ds.targets, tuple(ds[0][0].shape), ds.scan.counts()["used"]
        (['cat', 'dog'], [0, 0, 1, 1], (3, 8, 8), 4)
        >>> bands = Path(tempfile.mkdtemp())
        >>> for name in ("field", "forest"):
        ...     (bands / name).mkdir()
        ...     np.save(bands / name / "a.npy", np.full((8, 8, 5), 65535, np.uint16))
        >>> x, y = LabeledImageFolder(bands, channels=5, progress=False)[1]
        >>> tuple(x.shape), float(x.max()), y
        ((5, 8, 8), 1.0, 1)
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        check: bool = True,
        progress: bool = True,
        channels: int | None = None,
    ) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"labeled image folder {root} does not exist (expected root/<class>/<images>).")
        self.channels = None if channels is None else _channels._check_channels(channels)
        self.scan = walk_images(root, _channels.ARRAY_SUFFIXES if self.channels is not None else ())
        # A class is a top-level folder holding image files (readable or not: a class whose files are all
        # broken still exists, so labels do not shift when one folder is damaged).
        in_class = [p for p in self.scan.used if len(p.relative_to(root).parts) > 1]
        loose = [p for p in self.scan.used if len(p.relative_to(root).parts) == 1]
        self.scan.ignored += [(p, "not in a class folder") for p in loose]
        self.scan.ignored.sort(key=lambda item: str(item[0]))
        self.scan.used = in_class
        self.classes: list[str] = sorted({p.relative_to(root).parts[0] for p in in_class})
        if not self.classes:
            raise ValueError(f"no class subfolders with images under {root}; a labeled folder needs one "
                             "subfolder per class: root/<class name>/<images>.")
        if check:
            _check_scan(self.scan, progress, self.channels)
        self.skipped_files = list(self.scan.skipped)
        label = {name: i for i, name in enumerate(self.classes)}
        samples = [(p, label[p.relative_to(root).parts[0]]) for p in self.scan.used]
        self.samples = sorted(samples, key=lambda s: (s[1], str(s[0])))  # grouped by class, then by path
        self.targets = [y for _, y in self.samples]
        self.files = [p for p, _ in self.samples]
        self.transform = transform
        self._runtime_bad: set[int] = set()

    @property
    def skipped(self) -> int:
        """Files left out: found unreadable up front, plus any that failed to decode later in this process."""
        return len(self.skipped_files) + len(self._runtime_bad)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        # The label comes from the item actually served: a replacement image keeps its own label.
        i, img = _load_readable(self.files, index, self._runtime_bad, self.scan, self.channels)
        if self.transform is not None:
            return self.transform(img), self.targets[i]
        return (img if self.channels is not None else pil_to_tensor(img)), self.targets[i]


def write_image_folder(
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray | None,
    out_dir: str | Path,
    *,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` as PNGs; with ``labels``, into one subfolder per class.

    Class folders are ``class_names[label]`` or the zero-padded label (so sorted order = label order).
    Returns ``out_dir``.

    Example:
        >>> import tempfile, numpy as np
        >>> root = write_image_folder(np.zeros((3, 8, 8), np.uint8), [0, 2, 10], tempfile.mkdtemp())
        >>> sorted(p.name for p in root.iterdir())
        ['00', '02', '10']
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (got {images.dtype}); convert with "
                         "(x * 255).clip(0, 255).astype(np.uint8) for floats in [0, 1].")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"images must have shape (N, H, W) or (N, H, W, C) with C in 1/3/4, got {images.shape}.")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(len(images) - 1)))
    if labels is not None:
        labels = [int(v) for v in labels]
        pad = len(str(max(labels))) if labels else 1
    for i, img in enumerate(images):
        folder = out
        if labels is not None:
            name = class_names[labels[i]] if class_names is not None else f"{labels[i]:0{pad}d}"
            folder = out / name
            folder.mkdir(exist_ok=True)
        arr = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
        Image.fromarray(arr).save(folder / f"{i:0{width}d}.png")
    return out


def to_pil(item: Any) -> Image.Image:
    """A PIL image, a (C, H, W) tensor, or an (H, W[, C]) array as an RGB PIL image.

    Float tensors/arrays are taken as [0, 1]; uint8 as [0, 255].

    Example:
        >>> import torch
        >>> to_pil(torch.ones(3, 4, 5)).size
        (5, 4)
    """
    if isinstance(item, Image.Image):
        return _to_rgb(item)
    if isinstance(item, torch.Tensor):
        t = item.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        item = t.numpy()
    arr = np.asarray(item)
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.float32).clip(0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return _to_rgb(Image.fromarray(arr))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [0, 1], without needing torchvision.

    Example:
        >>> from PIL import Image
        >>> tuple(pil_to_tensor(Image.new("RGB", (5, 4))).shape)
        (3, 4, 5)
    """
    arr = np.asarray(_to_rgb(img), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


# ------------------------------------------------------------------------------------------------- helpers


class _ListDataset(Dataset):
    """A list as a Dataset (for examples and tests)."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


def _pil_open(path: str | Path) -> Image.Image:
    """``PIL.Image.open``, minus wrappers other libraries install over it.

    Ultralytics replaces ``Image.open`` at import with a wrapper that, for a file PIL cannot identify, runs
    ``check_requirements("pi-heif")`` (a pip install when online) and re-raises anything else. A text file
    named ``.jpg`` in a data folder must simply be skipped, so we call PIL's own function when we can find it.
    """
    opener = Image.open
    if getattr(opener, "__module__", "PIL.Image") != "PIL.Image":
        original = getattr(sys.modules.get(opener.__module__), "_image_open", None)
        if getattr(original, "__module__", None) == "PIL.Image":
            opener = original
    return opener(path)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # palette transparency must go through RGBA, or PIL warns and drops it
    if img.mode in ("RGBA", "LA"):
        # Composite on white: transparent pixels are usually background, not black.
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        span = float(arr.max() - arr.min()) or 1.0
        img = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8))
    return img.convert("RGB")


def _check_scan(report: ScanReport, progress: bool, channels: int | None = None) -> None:
    """Decode ``report.used`` once; move the unreadable files to ``report.skipped`` and warn once.

    With ``channels``, files are read as ``warmstart.core.channels`` reads them, and any readable file with
    another channel count raises (a wrong ``channels=`` is the user's to fix, not a bad file to skip)."""
    if channels is None:
        good, bad = scan_images(report.used, progress=progress)
    else:
        with ThreadPoolExecutor(max_workers=_SCAN_THREADS) as pool:
            results = pool.map(_channels.probe, report.used)
            if progress and len(report.used) >= 500:
                from tqdm.auto import tqdm

                results = tqdm(results, total=len(report.used), desc="checking images", unit="img")
            probes = list(results)
        good = [p for p, (count, _) in zip(report.used, probes) if count is not None]
        bad = [(p, why) for p, (count, why) in zip(report.used, probes) if count is None]
        _channels.check_channel_counts([(p, c) for p, (c, _) in zip(report.used, probes) if c is not None],
                                       channels)
    report.used = good
    report.skipped = sorted(report.skipped + bad, key=lambda item: str(item[0]))
    _warn_skipped(report.skipped, len(good) + len(report.skipped))


def _load_readable(files: list[Path], index: int, bad: set[int], scan: ScanReport,
                   channels: int | None = None) -> tuple[int, Any]:
    """``(i, image)`` for the first readable item from ``index`` on (wrapping around), so a caller serves item
    ``i``'s label with it. Never crash mid-epoch: a failing file is remembered in ``bad``, warned about once,
    and moved from ``scan.used`` to ``scan.skipped``. With ``channels`` the image is a float (C, H, W) tensor;
    a file with another channel count raises (it was not checked up front: ``check=False``)."""
    n = len(files)
    if not -n <= index < n:
        raise IndexError(f"index {index} out of range for {n} images")  # ends `for x in dataset` loops
    for step in range(n):
        i = (index + step) % n
        if i in bad:
            continue
        try:
            if channels is not None:
                image = _channels.to_tensor(_channels.read_array(files[i]))
            else:
                return i, load_rgb(files[i])
        except Exception as err:
            if not bad:
                warnings.warn(f"skipping unreadable image {files[i]} ({type(err).__name__}: {err}); "
                              "later failures in this process are counted in .skipped without a warning.",
                              stacklevel=3)
            bad.add(i)
            if files[i] in scan.used:
                scan.used.remove(files[i])
            scan.skipped.append((files[i], "unreadable at load time"))
            continue
        _channels.check_channel_counts([(files[i], image.shape[0])], channels)  # type: ignore[arg-type]
        return i, image
    raise RuntimeError("no image in this dataset can be decoded any more; check the image folder.")


def _channel_item(item: Any) -> torch.Tensor:
    """A Dataset item for ``channels=``: tensors are ``(C, H, W)`` (2-D: one channel), arrays ``(H, W[, C])``."""
    if isinstance(item, torch.Tensor):
        x = item[None] if item.ndim == 2 else item
        if x.ndim != 3:
            raise ValueError(f"dataset items must be (C, H, W) tensors for channels=, got shape {tuple(item.shape)}")
        return x.float() if x.dtype != torch.uint8 else x.float().div(255)
    if isinstance(item, Image.Image):
        return _channels.to_tensor(_channels._pil_array(item, 16 if item.mode.startswith("I;16") else 8))
    return _channels.to_tensor(np.asarray(item))


def _warn_skipped(bad: list[tuple[Path, str]], total: int) -> None:
    if not bad:
        return
    examples = "; ".join(f"{p.name} ({why})" for p, why in bad[:5])
    more = f"; ... (+{len(bad) - 5} more)" if len(bad) > 5 else ""
    warnings.warn(f"skipped {len(bad)} of {total} image files that cannot be decoded: {examples}{more}. "
                  "They are left out of training and counted in the run summary.", stacklevel=4)
