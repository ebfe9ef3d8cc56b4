"""Decoded-image cache on vs off in `warmstart.pretrain`: images/s and data-wait fraction, interleaved pairs.

Usage: python benchmarks/cache_throughput.py [N_IMAGES=256] [VIEWS=pil|batched]
256 photo-like 256 px JPEGs, tiny CNN, 32 px views, batch 32, 3 epochs per run, 0 workers, one thread. Each pair runs
cache=off then cache=ram on the same images; every pair's values and ratio are printed (none is dropped), then the
median ratio. Whole runs are timed (every hook inside the window).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch import nn

from warmstart.pretraining import pretrain


def photo_folder(n: int, side: int = 256) -> str:
    """Smooth-noise JPEGs: decode cost like a real photo of that size, no download."""
    root = tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side, side), Image.BILINEAR).save(f"{root}/{i:05d}.jpg", quality=90)
    return root


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 256
    views = argv[1] if len(argv) > 1 else "pil"
    torch.set_num_threads(1)
    root = photo_folder(n)
    ratios = []
    for pair in range(3):
        row = []
        for cache in ("off", "ram"):
            start = time.perf_counter()
            s = pretrain(tempfile.mkdtemp(), root, cnn(), epochs=3, batch_size=32, image_size=32, accelerator="cpu",
                         devices=1, progress=False, num_workers=0, cache=cache, checkpoint_every=0, views=views)
            row.append((cache, s["images_per_s"], s["data_wait_fraction"], round(time.perf_counter() - start, 2)))
        ratios.append(row[1][1] / row[0][1])
        print(f"pair {pair}: " + "  ".join(f"cache={c}: {ips} img/s wait={w} wall={wall}s" for c, ips, w, wall in row)
              + f"  ratio on/off={ratios[-1]:.2f}", flush=True)
    print(f"views={views}: median images/s ratio cache on/off = {statistics.median(ratios):.2f} "
          f"(pairs: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main(sys.argv[1:])
