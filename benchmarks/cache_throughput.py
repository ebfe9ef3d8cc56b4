"""Decoded-image cache on vs off in `warmstart.pretrain`: images/s and data-wait fraction, interleaved pairs.

Usage: python benchmarks/cache_throughput.py [N_IMAGES=256] [VIEWS=pil|batched]
256 photo-like 256 px JPEGs, tiny CNN, 32 px views, batch 32, 3 epochs per run, 0 workers, one thread. Each pair
runs cache=off and cache=ram on the same images (order alternating per pair); every pair's values and ratio are
printed (none is dropped), then the median ratio. Whole runs are timed (every hook inside the window).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import Recorder, spread  # noqa: E402

from warmstart.pretraining import pretrain  # noqa: E402


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


def summarize(runs: list[dict], config: dict) -> dict:
    """Per-pair ratio cache on / off images/s (median, min..max), each arm's images/s and data-wait fraction.

    Example:
        >>> runs = [{"pair": 0, "cache": c, "images_per_s": v, "data_wait_fraction": w}
        ...         for c, v, w in (("off", 10.0, 0.5), ("ram", 20.0, 0.1))]
        >>> summarize(runs, {"images": 8, "views": "pil", "pairs": 1})["rows"][0][1]
        '2.000 (2.000..2.000, n=1)'
    """
    by = {(r["pair"], r["cache"]): r for r in runs}
    pairs = sorted({p for p, _ in by if (p, "off") in by and (p, "ram") in by})
    ratios = [by[(p, "ram")]["images_per_s"] / by[(p, "off")]["images_per_s"] for p in pairs]
    rows = [["cache=ram / cache=off, images/s", spread(ratios), ", ".join(f"{x:.2f}" for x in ratios)]]
    for cache in ("off", "ram"):
        ips = [by[(p, cache)]["images_per_s"] for p in pairs]
        wait = [by[(p, cache)]["data_wait_fraction"] for p in pairs]
        rows.append([f"cache={cache}: images/s; data-wait fraction",
                     f"{spread(ips, '{:.1f}')}; {spread(wait, '{:.2f}')}",
                     ", ".join(f"{v:.1f}" for v in ips)])
    return {"title": f"Decoded-image cache: {config['images']} 256 px JPEGs, tiny CNN, 32 px views "
                     f"({config['views']}), batch 32, 3 epochs per run, 0 workers, 1 thread, {config['pairs']} "
                     "interleaved pairs",
            "columns": ["what", "median (min..max)", "per pair"], "rows": rows}


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 256
    views = argv[1] if len(argv) > 1 else "pil"
    torch.set_num_threads(1)
    recorder = Recorder("cache_throughput", {"images": n, "views": views, "pairs": 3})
    root = photo_folder(n)
    ratios, runs = [], []
    for pair in range(3):
        row = []
        for cache in ("off", "ram") if pair % 2 == 0 else ("ram", "off"):
            start, out = time.perf_counter(), tempfile.mkdtemp()
            s = pretrain(out, root, cnn(), epochs=3, batch_size=32, image_size=32, accelerator="cpu",
                         devices=1, progress=False, num_workers=0, cache=cache, checkpoint_every=0, views=views)
            row.append((cache, s["images_per_s"], s["data_wait_fraction"], round(time.perf_counter() - start, 2)))
            shutil.rmtree(out, ignore_errors=True)  # the run's checkpoints and export, after its wall clock
            runs.append({"pair": pair, "cache": cache, "order": len(row) - 1, "images_per_s": s["images_per_s"],
                         "data_wait_fraction": s["data_wait_fraction"], "wall_s": row[-1][3]})
        row.sort(key=lambda r: r[0] != "off")  # off first for the printed line
        ratios.append(row[1][1] / row[0][1])
        print(f"pair {pair}: " + "  ".join(f"cache={c}: {ips} img/s wait={w} wall={wall}s" for c, ips, w, wall in row)
              + f"  ratio on/off={ratios[-1]:.2f}", flush=True)
    print(f"views={views}: median images/s ratio cache on/off = {statistics.median(ratios):.2f} "
          f"(pairs: {', '.join(f'{r:.2f}' for r in ratios)})")
    recorder.write(runs, summarize)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
