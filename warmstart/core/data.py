"""Image folders for pretraining and evaluation: recursive scan, robust decode, bad files skipped and counted.

Real unlabeled folders contain zero-byte files, half-copied JPEGs, ``.txt`` files named ``.jpg`` and
palette/RGBA/grayscale images. A run must neither crash on them mid-epoch nor silently shrink, so the
datasets here decode every file once up front (JPEGs in draft mode, in a thread pool: PIL releases the GIL),
drop the ones that fail with one warning, and keep the count in ``.skipped`` for the run summary. A decode
that still fails later (a file changed on disk) is replaced by the next readable image instead of raising.

A missing folder or a folder without images fails here, before any model or trainer is built.
"""

from __future__ import annotations

import os
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

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_SCAN_THREADS = min(8, os.cpu_count() or 1)


def find_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursive, sorted, suffix case-insensitive; hidden files skipped).

    Raises FileNotFoundError if ``root`` does not exist and ValueError if it holds no image files.

    Example:
        >>> import tempfile, numpy as np
        >>> root = write_image_folder(np.zeros((2, 8, 8, 3), np.uint8), None, tempfile.mkdtemp())
        >>> [p.name for p in find_images(root)]
        ['00000.png', '00001.png']
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist. Pass the folder that holds your images "
                                f"(searched recursively for {', '.join(IMAGE_SUFFIXES)}).")
    if root.is_file():
        if root.suffix.lower() in IMAGE_SUFFIXES:
            return [root]
        raise ValueError(f"{root} is a file, not an image folder; pass the folder that holds your images.")
    found: list[Path] = []
    others = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        # Hidden folders/files (.git, macOS ._ resource forks) are never training data.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
            else:
                others += 1
    if not found:
        raise ValueError(f"no image files under {root} (searched recursively for {', '.join(IMAGE_SUFFIXES)}; "
                         f"found {others} other files). Point data= at the folder that contains your images.")
    return sorted(found, key=lambda p: str(p))


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

    Example:
        >>> import tempfile
        >>> p = f"{tempfile.mkdtemp()}/notes.jpg"
        >>> _ = open(p, "w").write("not an image")
        >>> check_image(p)
        'not an image'
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with _pil_open(path) as img:
            img.draft("RGB", (1, 1))
            img.load()
    except FileNotFoundError:
        return "missing"
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
    ``.files`` lists the images in item order (None for a Dataset source). ``check=False`` skips the up-front
    decode (faster start on huge folders; bad files are then replaced at load time and counted only in the
    process that met them, so use it with ``num_workers=0`` when the count matters).

    Example:
        >>> import tempfile, numpy as np
        >>> root = write_image_folder(np.zeros((3, 8, 8, 4), np.uint8), None, tempfile.mkdtemp())
        >>> _ = open(f"{root}/broken.jpg", "wb")
        >>> import warnings
        >>> with warnings.catch_warnings(record=True):
        ...     ds = UnlabeledImages(root)
        >>> len(ds), ds.skipped, ds[0].mode
        (3, 1, 'RGB')
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path] | Dataset,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        check: bool = True,
        progress: bool = True,
    ) -> None:
        self.transform = transform
        self.dataset: Dataset | None = None
        self.files: list[Path] | None = None
        self.skipped_files: list[tuple[Path, str]] = []
        self._runtime_bad: set[int] = set()
        if isinstance(source, Dataset):
            self.dataset = source
            if len(source) == 0:  # type: ignore[arg-type]
                raise ValueError("the dataset passed as data is empty.")
            return
        if isinstance(source, (str, Path)):
            paths = find_images(source)
        elif isinstance(source, Sequence):
            paths = [Path(p) for p in source]
            if not paths:
                raise ValueError("the list of image paths is empty.")
        else:
            raise ValueError(f"data must be an image folder, a list of image paths or a torch Dataset, "
                             f"got {type(source).__name__}.")
        if check:
            paths, self.skipped_files = scan_images(paths, progress=progress)
            _warn_skipped(self.skipped_files, len(paths) + len(self.skipped_files))
        if not paths:
            raise ValueError(f"none of the {len(self.skipped_files)} image files could be read "
                             f"(e.g. {self.skipped_files[0][0]}: {self.skipped_files[0][1]}).")
        self.files = paths

    @property
    def skipped(self) -> int:
        """Files left out: found unreadable up front, plus any that failed to decode later in this process."""
        return len(self.skipped_files) + len(self._runtime_bad)

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        img = self.dataset_image(index) if self.dataset is not None else self._file_image(index)
        return self.transform(img) if self.transform is not None else img

    def dataset_image(self, index: int) -> Image.Image:
        """Item ``index`` of a wrapped Dataset as an RGB image (first element of tuples; tensors/arrays converted).

        Example:
            >>> ds = UnlabeledImages(_ListDataset([(np.zeros((4, 4, 3), np.float32), 0)]))
            >>> ds.dataset_image(0).size
            (4, 4)
        """
        item = self.dataset[index]  # type: ignore[index]
        if isinstance(item, (tuple, list)):
            item = item[0]
        return to_pil(item)

    def _file_image(self, index: int) -> Image.Image:
        n = len(self.files)  # type: ignore[arg-type]
        for step in range(n):
            i = (index + step) % n
            if i in self._runtime_bad:
                continue
            try:
                return load_rgb(self.files[i])  # type: ignore[index]
            except Exception as err:
                # Never crash mid-epoch: remember the file, warn once, serve the next readable image.
                if not self._runtime_bad:
                    warnings.warn(f"skipping unreadable image {self.files[i]} ({type(err).__name__}: {err}); "
                                  "later failures in this process are counted in .skipped without a warning.",
                                  stacklevel=2)
                self._runtime_bad.add(i)
        raise RuntimeError("no image in this dataset can be decoded any more; check the image folder.")


class LabeledImageFolder(Dataset):
    """Class-per-subfolder images (``root/<class>/**/*.png``) returning ``(tensor, label)``.

    ``.classes`` are the sorted subfolder names (label = index). Without ``transform``, images become float
    tensors (C, H, W) in [0, 1]. Unreadable files are skipped with one warning and counted in ``.skipped``.

    Example:
        >>> import tempfile, numpy as np
        >>> root = write_image_folder(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 1, 0], tempfile.mkdtemp(),
        ...                           class_names=["cat", "dog"])
        >>> ds = LabeledImageFolder(root)
        >>> ds.classes, ds.targets, tuple(ds[0][0].shape)
        (['cat', 'dog'], [0, 0, 1, 1], (3, 8, 8))
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        check: bool = True,
        progress: bool = True,
    ) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"labeled image folder {root} does not exist (expected root/<class>/<images>).")
        class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        samples: list[tuple[Path, int]] = []
        self.classes: list[str] = []
        for d in class_dirs:
            try:
                paths = find_images(d)
            except ValueError:
                continue  # a folder without images is not a class
            samples += [(p, len(self.classes)) for p in paths]
            self.classes.append(d.name)
        if not samples:
            raise ValueError(f"no class subfolders with images under {root}; a labeled folder needs one "
                             "subfolder per class: root/<class name>/<images>.")
        self.skipped_files: list[tuple[Path, str]] = []
        if check:
            good, self.skipped_files = scan_images([p for p, _ in samples], progress=progress)
            _warn_skipped(self.skipped_files, len(samples))
            keep = set(good)
            samples = [s for s in samples if s[0] in keep]
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.files = [p for p, _ in samples]
        self.transform = transform
        self._images = UnlabeledImages(self.files, check=False)  # shares the robust per-item decode

    @property
    def skipped(self) -> int:
        """Files left out because they could not be decoded."""
        return len(self.skipped_files) + self._images.skipped

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self._images._file_image(index)
        out = self.transform(img) if self.transform is not None else pil_to_tensor(img)
        return out, self.targets[index]


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


def _warn_skipped(bad: list[tuple[Path, str]], total: int) -> None:
    if not bad:
        return
    examples = "; ".join(f"{p.name} ({why})" for p, why in bad[:5])
    more = f"; ... (+{len(bad) - 5} more)" if len(bad) > 5 else ""
    warnings.warn(f"skipped {len(bad)} of {total} image files that cannot be decoded: {examples}{more}. "
                  "They are left out of training and counted in the run summary.", stacklevel=3)
