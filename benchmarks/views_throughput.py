"""Training throughput on the CPU: PIL views in a DataLoader worker vs batched views, with and without the worker.

Three arms, each ``warmstart.pretrain`` (SimCLR, torchvision resnet18, 32 px, batch 64, RAM cache) for whole epochs
on the same folder of 32 px PNGs, reporting the summary's ``images_per_s`` (the training loop, epoch-end
checkpoints included). One change per arm:

- ``pil``: PIL views per image in ``W`` DataLoader workers (``W`` = what ``num_workers="auto"`` gives the PIL
  path here: cores - 1), the CPU default before this benchmark;
- ``batched``: the same ``W`` workers, views made a batch at a time with kornia in the training process;
- ``batched_no_workers``: batched views, 0 workers (the loader only gathers cached tensors): today's default
  (``views="auto"``, ``num_workers="auto"``).

With ``--channels N`` the images are N-band 16-bit ``.npy`` arrays and every arm passes ``channels=N``. Per-image
views of such images cannot use the RAM cache (it keeps the loader's resized output, and the per-image path reads
the uncropped files), so the chain is four arms, one change each: ``pil_stream`` (per-image views, files read every
epoch, ``W`` workers: the only path ``channels=`` had before), ``batched_stream`` (batched views, same streaming and
workers), ``batched`` (+ the float32 RAM cache), ``batched_no_workers`` (0 workers: today's default).

Arms rotate order from round to round so drift in the machine's load hits all alike; every round's ratios are
kept. On a GPU the batched views also leave the CPU entirely (not measured here).

Usage: python benchmarks/views_throughput.py [--rounds 3] [--images 512] [--epochs 2] [--threads N] [--channels N]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import Recorder, spread  # noqa: E402

from warmstart import pretrain  # noqa: E402
from warmstart.pretraining.ssl_data import resolve_num_workers  # noqa: E402
from warmstart.testing import write_image_folder  # noqa: E402


def photos(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth, colourful uint8 images (random low-frequency waves), cheap to make and not flat like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    freq, phase = rng.uniform(1, 8, (n, 3, 2)), rng.uniform(0, 6.3, (n, 3))
    waves = np.sin(freq[..., 0, None, None] * x + freq[..., 1, None, None] * y + phase[..., None, None])
    return ((0.5 + 0.4 * waves).transpose(0, 2, 3, 1) * 255).astype(np.uint8)


ARMS = ("pil", "batched", "batched_no_workers")
# (numerator, denominator, what the ratio isolates)
RATIOS = (("batched", "pil", "views in batches instead of per image (same workers)"),
          ("batched_no_workers", "batched", "no DataLoader worker (same batched views)"),
          ("batched_no_workers", "pil", "today's default vs the previous CPU default"))
CHANNEL_ARMS = ("pil_stream", "batched_stream", "batched", "batched_no_workers")
CHANNEL_RATIOS = (("batched_stream", "pil_stream", "views in batches instead of per image (streamed, same workers)"),
                  ("batched", "batched_stream", "float32 RAM cache instead of reading the files every epoch"),
                  ("batched_no_workers", "batched", "no DataLoader worker (same cached batched views)"),
                  ("batched_no_workers", "pil_stream", "today's channels default vs the previous (only) path"))


def arms_and_ratios(channels: int | None) -> tuple[tuple, tuple]:
    """The arm chain of an RGB run (``channels`` None) or of a ``--channels`` run.

    Example:
        >>> arms_and_ratios(None)[0], arms_and_ratios(4)[0][0]
        (('pil', 'batched', 'batched_no_workers'), 'pil_stream')
    """
    return (ARMS, RATIOS) if channels is None else (CHANNEL_ARMS, CHANNEL_RATIOS)


def bands(n: int, size: int, channels: int) -> np.ndarray:
    """``channels``-band 16-bit images (H, W, C): the waves of :func:`photos`, one wave per band.

    Example:
        >>> a = bands(2, 8, 5)
        >>> a.shape, a.dtype
        ((2, 8, 8, 5), dtype('uint16'))
    """
    waves = np.concatenate([photos(n, size, seed=k) for k in range(-(-channels // 3))], axis=-1)[..., :channels]
    return waves.astype(np.uint16) * 257  # the full 16-bit range: 255 -> 65535


def run(arm: str, data: Path, workers: int, epochs: int, channels: int | None = None) -> float:
    out = Path(tempfile.mkdtemp(prefix=f"views_{arm}_"))
    views = "pil" if arm.startswith("pil") else "batched"
    try:
        summary = pretrain(out, data, "torchvision/resnet18", method="simclr", epochs=epochs, batch_size=64,
                           image_size=32, accelerator="cpu", devices=1, progress=False, views=views,
                           num_workers=0 if arm == "batched_no_workers" else workers,
                           cache="off" if arm.endswith("_stream") else "ram", channels=channels)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # checkpoints + export, ~0.3 GB per run: deleted after timing
    return float(summary["images_per_s"])


def summarize(runs: list[dict], config: dict) -> dict:
    """Per-round ratios of the arms' images/s (median, min..max) and each arm's images/s.

    Example:
        >>> runs = [{"round": 0, "arm": a, "images_per_s": v}
        ...         for a, v in (("pil", 10.0), ("batched", 12.0), ("batched_no_workers", 15.0))]
        >>> [r[1] for r in summarize(runs, {"images": 8, "epochs": 1, "rounds": 1, "workers": 1})["rows"][:3]]
        ['1.200 (1.200..1.200, n=1)', '1.250 (1.250..1.250, n=1)', '1.500 (1.500..1.500, n=1)']
    """
    channels = config.get("channels")
    arms, ratio_defs = arms_and_ratios(channels)
    ips = {(r["round"], r["arm"]): r["images_per_s"] for r in runs}
    rounds = sorted({k for k, _ in ips if all((k, arm) in ips for arm in arms)})
    rows = []
    for top, bottom, what in ratio_defs:
        ratios = [ips[(k, top)] / ips[(k, bottom)] for k in rounds]
        rows.append([f"{top} / {bottom} images/s: {what}", spread(ratios), ", ".join(f"{x:.3f}" for x in ratios)])
    for arm in arms:
        values = [ips[(k, arm)] for k in rounds]
        rows.append([f"{arm} images/s", spread(values, "{:.1f}"), ", ".join(f"{v:.1f}" for v in values)])
    what = ("RAM cache" if channels is None else
            f"{channels}-band 16-bit .npy images (channels={channels}), RAM cache where the arm says")
    return {"title": f"Views on the CPU: SimCLR, resnet18, 32 px, batch 64, {what}, {config['images']} images x "
                     f"{config['epochs']} epochs per run, {config['workers']} worker(s) where used, "
                     f"{config['rounds']} rounds (arm order rotates)",
            "columns": ["what", "median (min..max)", "per round"], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--channels", type=int, default=None, metavar="N",
                        help="N-band 16-bit .npy images and channels=N in every arm (default: RGB PNGs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.channels is not None and args.channels < 1:
        parser.error(f"--channels must be >= 1, got {args.channels}")
    workers = max(1, resolve_num_workers("auto"))
    stem = "views_throughput" if args.channels is None else "views_throughput_channels"
    recorder = Recorder(stem, {**vars(args), "threads": torch.get_num_threads(), "workers": workers})
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data_dir = Path(tempfile.mkdtemp(prefix="views_data_"))
    if args.channels is None:
        data = write_image_folder(photos(args.images, 32), None, data_dir)
    else:
        for i, image in enumerate(bands(args.images, 32, args.channels)):
            np.save(data_dir / f"{i:05d}.npy", image)
        data = data_dir
    arms = arms_and_ratios(args.channels)[0]
    print(f"resnet18 SimCLR, 32 px, batch 64, {args.images} images x {args.epochs} epochs per run, "
          f"{torch.get_num_threads()} threads, {workers} worker(s) where used, channels={args.channels}")
    runs = []
    for k in range(args.rounds):
        order = arms[k % len(arms):] + arms[:k % len(arms)]
        for position, arm in enumerate(order):
            value = run(arm, data, workers, args.epochs, args.channels)
            runs.append({"round": k, "arm": arm, "position": position, "images_per_s": round(value, 2)})
            print(f"round {k + 1} {arm:>20}: {value:7.1f} img/s", flush=True)
    recorder.write(runs, summarize)
    shutil.rmtree(data_dir, ignore_errors=True)
    for row in summarize(runs, recorder.config)["rows"]:
        print(f"{row[0]}: {row[1]}")


if __name__ == "__main__":
    main()
