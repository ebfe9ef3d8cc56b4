"""What an RGB teacher sees of 1-channel images: ``channels=1`` distillation's gray path vs RGB replication.

Run:  python benchmarks/gray_teacher.py [--images 2000] [--seeds 3] [--datasets fashion5k mnist5k digits]

With ``channels=N`` an RGB teacher is fed the bands' mean as a gray image, placed at ImageNet's average pixel
statistics from the per-band standardised views (``warmstart.core.ssl.distillation.gray_for_teacher``). For 8-bit
grayscale images there is a direct alternative to compare against: the same pixels replicated into R, G and B (what
an RGB run of the same images feeds the teacher). Three arms, one change each against ``rgb``:

- ``rgb``: 8-bit gray pixels in [0, 1] replicated to R, G, B, then the teacher's own normalisation;
- ``gray_path``: the 1-channel images standardised with their ``channel_stats`` (what ``pretrain(channels=1)``
  normalises views with), then ``gray_for_teacher`` and the teacher's normalisation;
- ``rgb_narrow``: as ``rgb``, but the pixels first mapped to [0.1, 0.3], as a 16-bit scan that uses a fifth of its
  range reads (``uint16 / 65535``). The gray path is unchanged by any such affine rescaling (the standardisation
  removes it: tested in tests/ssl/test_pretrain_channels.py), so its row stands for narrow-range data too.

Measured: leave-one-out cosine kNN accuracy (k=10) of the real ImageNet EfficientNet-Lite0 teacher's pooled
features (64 px input, bilinear from 32 px), on ``--images`` images drawn per seed from each dataset of
``benchmarks/transfer.py`` (Fashion-MNIST needs ``bash scripts/install_benchmark_data.sh``; a dataset with fewer
images is used whole, so its seeds repeat one value). A gap between the arms
is what the standardisation costs or gains the distillation target; no training is involved.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import Recorder, spread  # noqa: E402
from transfer import load_dataset  # noqa: E402

from warmstart.core.channels import channel_stats  # noqa: E402
from warmstart.core.ssl.common import knn_accuracy  # noqa: E402
from warmstart.core.ssl.distillation import _renormalize, gray_for_teacher  # noqa: E402

ARMS = ("rgb", "gray_path", "rgb_narrow")
NARROW = (0.1, 0.3)  # the pixel range of the rgb_narrow arm
TEACHER_PX, IMAGE_PX, K = 64, 32, 10


def teacher_inputs(gray: torch.Tensor, teacher_normalize: dict | None) -> dict[str, torch.Tensor]:
    """Both arms' teacher inputs for 1-channel images ``gray`` (B, 1, H, W) in [0, 1].

    Example:
        >>> x = torch.rand(4, 1, 8, 8)
        >>> inputs = teacher_inputs(x, {"mean": [0.5] * 3, "std": [0.5] * 3})
        >>> [tuple(v.shape) for v in inputs.values()], torch.equal(inputs["rgb"][:, 0], inputs["rgb"][:, 2])
        ([(4, 3, 8, 8), (4, 3, 8, 8), (4, 3, 8, 8)], True)
    """
    rgb = _renormalize(gray.expand(-1, 3, -1, -1), None, teacher_normalize)
    stats = channel_stats(list(gray))
    standardised = (gray - stats["mean"][0]) / stats["std"][0]
    views, source = gray_for_teacher(standardised, stats)
    narrow = NARROW[0] + (NARROW[1] - NARROW[0]) * gray
    return {"rgb": rgb, "gray_path": _renormalize(views, source, teacher_normalize),
            "rgb_narrow": _renormalize(narrow.expand(-1, 3, -1, -1), None, teacher_normalize)}


@torch.no_grad()
def features(teacher: torch.nn.Module, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """The teacher's pooled features of ``x`` resized to its input size."""
    out = [teacher(F.interpolate(x[i:i + batch], size=TEACHER_PX, mode="bilinear", align_corners=False))
           for i in range(0, len(x), batch)]
    return torch.cat(out)


def summarize(runs: list[dict], config: dict) -> dict:
    """Per dataset: each arm's kNN accuracy over seeds and the paired differences of the other arms vs rgb.

    Example:
        >>> runs = [{"dataset": "d", "seed": 0, "arm": a, "knn": v}
        ...         for a, v in (("rgb", 0.8), ("gray_path", 0.79), ("rgb_narrow", 0.7))]
        >>> [row[2] for row in summarize(runs, {"images": 10, "seeds": 1})["rows"][3:]]
        ['-0.010 (-0.010..-0.010, n=1)', '-0.100 (-0.100..-0.100, n=1)']
    """
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        value = {(r["seed"], r["arm"]): r["knn"] for r in runs if r["dataset"] == dataset}
        seeds = sorted({s for s, _ in value if all((s, a) in value for a in ARMS)})
        for arm in ARMS:
            vals = [value[(s, arm)] for s in seeds]
            rows.append([dataset, arm, spread(vals), ", ".join(f"{v:.3f}" for v in vals)])
        for arm in ARMS[1:]:
            diffs = [value[(s, arm)] - value[(s, "rgb")] for s in seeds]
            rows.append([dataset, f"{arm} - rgb (paired)", spread(diffs, "{:+.3f}"),
                         ", ".join(f"{v:+.3f}" for v in diffs)])
    return {"title": f"EfficientNet-Lite0 (ImageNet) teacher on 1-channel images: leave-one-out cosine kNN (k={K}) "
                     f"of its features, {config['images']} images per seed, {config['seeds']} seeds, "
                     f"{TEACHER_PX} px teacher input",
            "columns": ["dataset", "arm", "kNN accuracy median (min..max)", "per seed"], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=["fashion5k", "mnist5k", "digits"])
    args = parser.parse_args()
    from warmstart.core.teachers import build_teacher

    recorder = Recorder("gray_teacher", vars(args))
    teacher = build_teacher("efficientnet_lite0", image_size=TEACHER_PX).eval()
    runs = []
    for dataset in args.datasets:
        images, labels = load_dataset(dataset, IMAGE_PX)  # grey images replicated to RGB uint8 (N, H, W, 3)
        for seed in range(args.seeds):
            pick = np.random.default_rng(seed).choice(len(images), min(args.images, len(images)), replace=False)
            gray = torch.from_numpy(images[pick][..., :1]).permute(0, 3, 1, 2).float() / 255
            y = torch.from_numpy(labels[pick])
            for arm, x in teacher_inputs(gray, teacher.normalize).items():
                acc = knn_accuracy(features(teacher, x), y, k=K)
                runs.append({"dataset": dataset, "seed": seed, "arm": arm, "knn": round(float(acc), 4)})
                print(f"[{dataset}] seed {seed} {arm}: kNN {acc:.4f}", flush=True)
    recorder.write(runs, summarize)
    for row in summarize(runs, recorder.config)["rows"]:
        print(" | ".join(row))


if __name__ == "__main__":
    main()
