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
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import Recorder, spread  # noqa: E402

from warmstart import pretrain  # noqa: E402
from warmstart.testing import write_image_folder  # noqa: E402


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


def summarize(runs: list[dict], config: dict) -> dict:
    """Per-pair ratio batched / pil images/s (median, min..max) and each arm's images/s.

    Example:
        >>> runs = [{"pair": 0, "arm": a, "images_per_s": v} for a, v in (("pil", 10.0), ("batched", 12.0))]
        >>> summarize(runs, {"images": 8, "epochs": 1, "pairs": 1, "workers": 0})["rows"][0][1]
        '1.200 (1.200..1.200, n=1)'
    """
    ips = {(r["pair"], r["arm"]): r["images_per_s"] for r in runs}
    pairs = sorted({p for p, _ in ips if (p, "pil") in ips and (p, "batched") in ips})
    ratios = [ips[(p, "batched")] / ips[(p, "pil")] for p in pairs]
    rows = [["batched / pil views, images/s", spread(ratios), ", ".join(f"{x:.3f}" for x in ratios)]]
    for arm in ("pil", "batched"):
        values = [ips[(p, arm)] for p in pairs]
        rows.append([f"{arm} images/s", spread(values, "{:.1f}"), ", ".join(f"{v:.1f}" for v in values)])
    return {"title": f"Views on the CPU: SimCLR, resnet18, 32 px, batch 64, {config['images']} images x "
                     f"{config['epochs']} epochs per run, {config['workers']} workers, {config['pairs']} "
                     "interleaved pairs",
            "columns": ["what", "median (min..max)", "per pair"], "rows": rows}


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
    recorder = Recorder("views_throughput", {**vars(args), "threads": torch.get_num_threads()})
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = write_image_folder(photos(args.images, 32), None, Path(tempfile.mkdtemp(prefix="views_data_")))
    print(f"resnet18 SimCLR, 32 px, batch 64, {args.images} images x {args.epochs} epochs per run, "
          f"{torch.get_num_threads()} threads, {args.workers} workers")
    ratios, runs = [], []
    for pair in range(args.pairs):
        start = time.perf_counter()
        got = {}
        for order, arm in enumerate(("pil", "batched") if pair % 2 == 0 else ("batched", "pil")):
            got[arm] = run(arm, data, args)
            runs.append({"pair": pair, "arm": arm, "order": order, "images_per_s": round(got[arm], 2)})
        pil, batched = got["pil"], got["batched"]
        ratios.append(batched / pil)
        print(f"pair {pair + 1}: pil {pil:7.1f} img/s  batched {batched:7.1f} img/s  ratio {ratios[-1]:.3f}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"median ratio batched/pil over {len(ratios)} pairs: {statistics.median(ratios):.3f} "
          f"(all: {', '.join(f'{r:.3f}' for r in ratios)})")
    recorder.write(runs, summarize)


if __name__ == "__main__":
    main()
