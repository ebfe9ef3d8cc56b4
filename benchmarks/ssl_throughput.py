"""Images/s of ``warmstart.pretrain`` vs a minimal hand-written torch loop doing the same math.

Same backbone (torchvision resnet18, random init), same lightly SimCLR transform (32 px, warmstart's small-image
defaults) and NTXent loss, same projection head, batch 32, same images (scikit-learn digits upscaled to 32 px,
written as PNGs), same optimizer (AdamW, fused on the CPU exactly when SSLModule fuses it), same layout
(channels_last on the CPU, SSLModule's ``memory_format="auto"``), ``num_workers=0``.
The hand loop does exactly the math SSLModule does (one backbone pass over both views concatenated), so the
ratio measures framework overhead only: Lightning's loop, logging (CSV + TensorBoard), the per-epoch checkpoint
and the LR schedule. Runs are interleaved in one process (ABAB...) so machine load affects both alike; the median
images/s over rounds is reported.

    python benchmarks/ssl_throughput.py [--rounds 3] [--epochs 2] [--images 512]

LightlyTrain is compared in ``benchmarks/ssl_vs_lightly_train.py`` (its own venv, a subprocess: it is AGPL and is
never imported here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import Recorder, spread  # noqa: E402
from ssl_vs_lightly_train import bare_loop  # noqa: E402

BATCH, SIZE = 32, 32


def write_digits(root: Path, n: int) -> Path:
    """``n`` real scikit-learn digit scans upscaled to 32 px RGB PNGs (repeated if n > 1797)."""
    from sklearn.datasets import load_digits

    from warmstart.testing import write_image_folder

    d = load_digits()
    idx = np.arange(n) % len(d.images)
    images = np.stack([np.asarray(Image.fromarray((d.images[i] / 16 * 255).astype(np.uint8))
                                  .resize((SIZE, SIZE), Image.BILINEAR).convert("RGB")) for i in idx])
    return write_image_folder(images, None, root)


def hand_loop(data: Path, epochs: int) -> float:
    """The minimal loop a lightly user writes by hand (``ssl_vs_lightly_train.bare_loop``, with the engine's fused
    optimizer kernel and layout, so the ratio measures the framework, not those choices). Returns images/s."""
    run = bare_loop(data, BATCH, epochs, SIZE, num_workers=0, fused=True, memory_format="auto")
    return run["images"] / run["train_s"]


def warmstart_run(data: Path, epochs: int, out: Path) -> float:
    from warmstart.pretraining import pretrain

    summary = pretrain(out, data, "torchvision/resnet18", method="simclr", epochs=epochs, batch_size=BATCH,
                       image_size=SIZE, accelerator="cpu", devices=1, progress=False, overwrite=True,
                       num_workers=0)  # as the hand loop: the ratio is the framework, not the worker count
    return float(summary["images_per_s"])


def summarize(runs: list[dict], config: dict) -> dict:
    """warmstart / hand loop images/s per round (median, min..max) and each arm's images/s.

    Example:
        >>> runs = [{"round": 0, "arm": "hand_loop", "images_per_s": 40.0},
        ...         {"round": 0, "arm": "warmstart", "images_per_s": 39.0}]
        >>> summarize(runs, {"images": 8, "epochs": 1, "rounds": 1})["rows"][0][1]
        '0.975 (0.975..0.975, n=1)'
    """
    ips = {(r["round"], r["arm"]): r["images_per_s"] for r in runs}
    rounds = sorted({k for k, arm in ips if (k, "hand_loop") in ips and (k, "warmstart") in ips})
    ratios = [ips[(k, "warmstart")] / ips[(k, "hand_loop")] for k in rounds]
    rows = [["warmstart.pretrain / hand-written torch + lightly loop, images/s (target >= 0.95)", spread(ratios),
             ", ".join(f"{x:.3f}" for x in ratios)]]
    for arm in ("hand_loop", "warmstart"):
        values = [v for (k, a), v in ips.items() if a == arm]
        if values:
            rows.append([f"{arm} images/s", spread(values, "{:.1f}"), ", ".join(f"{v:.1f}" for v in values)])
    return {"title": f"SSL pretraining throughput: SimCLR, resnet18, {SIZE} px, batch {BATCH}, {config['images']} "
                     f"digit PNGs x {config['epochs']} epochs per run, {config['rounds']} interleaved rounds",
            "columns": ["what", "median (min..max)", "per round"], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    config = {**vars(args), "threads": torch.get_num_threads()}
    recorder = Recorder("ssl_throughput", config)
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_digits(tmp / "data", args.images)
        results: dict[str, list[float]] = {"hand_loop": [], "warmstart": []}
        warmstart_run(data, 1, tmp / "warmup")  # first-import / first-call costs paid outside the timing
        for r in range(args.rounds):
            runs = [("hand_loop", lambda: hand_loop(data, args.epochs)),
                    ("warmstart", lambda: warmstart_run(data, args.epochs, tmp / "ws"))]
            for order, (name, fn) in enumerate(runs if r % 2 == 0 else runs[::-1]):
                results[name].append(fn())
                records.append({"round": r, "arm": name, "order": order, "images_per_s": round(results[name][-1], 2)})
                print(f"round {r}: {name} {results[name][-1]:.1f} images/s", flush=True)
        med = {k: statistics.median(v) for k, v in results.items() if v}
        report = {"images_per_s_median": {k: round(v, 1) for k, v in med.items()},
                  "warmstart_over_hand_loop": round(med["warmstart"] / med["hand_loop"], 3),
                  "overhead_percent": round(100 * (1 - med["warmstart"] / med["hand_loop"]), 1),
                  "per_round_warmstart_over_hand_loop": [round(w / h, 3) for w, h in
                                                         zip(results["warmstart"], results["hand_loop"])],
                  "setup": {"backbone": "torchvision/resnet18", "image_size": SIZE, "batch_size": BATCH,
                            "images": args.images, "epochs": args.epochs, "rounds": args.rounds,
                            "threads": torch.get_num_threads()}}
        print(json.dumps(report, indent=2))
    recorder.write(records, summarize)


if __name__ == "__main__":
    main()
