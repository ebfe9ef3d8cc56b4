"""Small, offline data sets for tests, demos and docs: not needed to pretrain or fine-tune anything.

- :func:`write_image_folder`: uint8 arrays -> a folder of PNGs (one subfolder per class when labelled), the input
  ``pretrain``, ``embed`` and the image-folder loaders read.
- :func:`make_shapes_dataset`: a tiny YOLO-format detection dataset of coloured shapes with a ``data.yaml``
  Ultralytics reads directly (real detection labels in seconds; used by the YOLO tests, docs and
  ``benchmarks/yolo_transfer.py``). Class 0 = red filled square, class 1 = blue filled disc, on a grey noisy
  background; one or two objects per image, labels in YOLO format (class cx cy w h, normalised).

Needs only numpy and Pillow (no Ultralytics, no Lightning).

Example:
    >>> import tempfile, numpy as np
    >>> from warmstart.testing import write_image_folder
    >>> root = write_image_folder(np.zeros((2, 8, 8, 3), np.uint8), [0, 1], tempfile.mkdtemp())
    >>> sorted(p.name for p in root.iterdir())
    ['0', '1']
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# The PNG folder writer lives in core.data for now (its tests are there); this is its public home for tests/demos.
from .core.data import write_image_folder

NAMES = {0: "square", 1: "disc"}
COLOURS = {0: (220, 40, 40), 1: (40, 60, 220)}


def _draw(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    background = rng.integers(90, 140, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(background)
    draw = ImageDraw.Draw(img)
    labels = []
    for _ in range(int(rng.integers(1, 3))):
        cls = int(rng.integers(0, 2))
        side = int(rng.integers(size // 4, size // 2))
        x0, y0 = (int(v) for v in rng.integers(0, size - side, size=2))
        box = (x0, y0, x0 + side, y0 + side)
        (draw.rectangle if cls == 0 else draw.ellipse)(box, fill=COLOURS[cls])
        labels.append((cls, (x0 + side / 2) / size, (y0 + side / 2) / size, side / size, side / size))
    return img, labels


def make_shapes_dataset(root: str | Path, n_train: int = 8, n_val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Write ``images/{train,val}``, ``labels/{train,val}`` and ``data.yaml`` under ``root``; return the yaml path.

    Example:
        >>> import tempfile
        >>> p = make_shapes_dataset(tempfile.mkdtemp(), n_train=2, n_val=1)
        >>> p.name, len(list((p.parent / "images" / "train").glob("*.png")))
        ('data.yaml', 2)
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, labels = _draw(rng, size)
            img.save(root / "images" / split / f"{i:04d}.png")
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {k}: {v}" for k, v in NAMES.items())
    data = root / "data.yaml"
    data.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


__all__ = ["NAMES", "make_shapes_dataset", "write_image_folder"]
