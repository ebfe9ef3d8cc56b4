"""Training throughput of PIL views (per image, in the DataLoader) vs batched views (on the device, per batch).

Both arms run ``warmstart.pretrain`` (SimCLR, torchvision resnet18, 32 px, batch 64) for whole epochs on the same
folder of 32 px PNGs and report the summary's ``images_per_s`` (the training loop only, setup excluded). The arms
are interleaved (pil, batched, pil, batched, ...) so drift in the machine's load hits both alike; every pair's
ratio batched/pil is printed, then the median. On a CPU the batched views run on the same cores as the model, so
the gain is the per-image Python/PIL overhead saved; on a GPU the views also leave the CPU entirely (not measured
here).

Usage: python benchmarks/views_throughput.py [--pairs 3] [--images 512] [--epochs 2] [--threads N] [--workers 0]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from warmstart import pretrain
from warmstart.testing import write_image_folder


def photos(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth, colourful uint8 images (random low-frequency waves), cheap to make and not flat like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    freq, phase = rng.uniform(1, 8, (n, 3, 2)), rng.uniform(0, 6.3, (n, 3))
    waves = np.sin(freq[..., 0, None, None] * x + freq[..., 1, None, None] * y + phase[..., None, None])
    return ((0.5 + 0.4 * waves).transpose(0, 2, 3, 1) * 255).astype(np.uint8)


def run(arm: str, data: Path, args: argparse.Namespace) -> float:
    out = Path(tempfile.mkdtemp(prefix=f"views_{arm}_"))
    summary = pretrain(out, data, "torchvision/resnet18", method="simclr", epochs=args.epochs, batch_size=64,
                       image_size=32, accelerator="cpu", devices=1, progress=False, views=arm,
                       num_workers=args.workers, checkpoint_every=0)
    return float(summary["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for both arms")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = write_image_folder(photos(args.images, 32), None, Path(tempfile.mkdtemp(prefix="views_data_")))
    print(f"resnet18 SimCLR, 32 px, batch 64, {args.images} images x {args.epochs} epochs per run, "
          f"{torch.get_num_threads()} threads, {args.workers} workers")
    ratios = []
    for pair in range(args.pairs):
        start = time.perf_counter()
        pil = run("pil", data, args)
        batched = run("batched", data, args)
        ratios.append(batched / pil)
        print(f"pair {pair + 1}: pil {pil:7.1f} img/s  batched {batched:7.1f} img/s  ratio {ratios[-1]:.3f}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"median ratio batched/pil over {len(ratios)} pairs: {statistics.median(ratios):.3f} "
          f"(all: {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
