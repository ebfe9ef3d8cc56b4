"""Shared builders for the tests of warmstart.core backbones / checkpoints / data / embed (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def rgb(seed: int, size: int = 24) -> np.ndarray:
    """A random uint8 RGB image (H, W, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def make_mixed_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """A nested folder of every supported format and colour mode, plus three broken "images".

    Returns (readable image paths, broken image paths); a README.md is also written (not an image, not counted).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub" / "deeper").mkdir(parents=True)
    good = {
        "a_rgb.jpg": Image.fromarray(rgb(0)),
        "b_upper.JPG": Image.fromarray(rgb(1)),
        "c_gray.png": Image.fromarray(rgb(2)[..., 0]),
        "d_rgba.png": Image.fromarray(np.dstack([rgb(3), np.full((24, 24), 128, np.uint8)])),
        "sub/e_palette.png": Image.fromarray(rgb(4)).convert("P"),
        "sub/f.bmp": Image.fromarray(rgb(5)),
        "sub/deeper/g.webp": Image.fromarray(rgb(6)),
        "sub/deeper/h.tif": Image.fromarray(rgb(7)),
        "sub/deeper/i_jpeg.jpeg": Image.fromarray(rgb(8)).convert("L"),
    }
    palette_t = Image.fromarray(rgb(9)).convert("P")
    palette_t.info["transparency"] = 0
    good["sub/j_palette_transparent.png"] = palette_t
    paths = []
    for name, img in good.items():
        img.save(root / name)
        paths.append(root / name)
    (root / "zero.png").write_bytes(b"")
    full = root / "a_rgb.jpg"
    data = full.read_bytes()
    (root / "sub" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "sub" / "notes.jpg").write_text("this is a text file renamed to .jpg\n" * 20)
    (root / "README.md").write_text("not an image")
    bad = [root / "zero.png", root / "sub" / "truncated.jpg", root / "sub" / "notes.jpg"]
    return sorted(paths, key=str), sorted(bad, key=str)
