"""Where one warmstart SSL training step goes, next to the model alone: a diagnostic, not a ratio benchmark.

Runs ``warmstart.pretrain`` (SimCLR, torchvision resnet18, 32 px, batch 64, its CPU defaults) on ``--images``
digit PNGs for ``--epochs`` epochs with a callback that stamps Lightning's hooks, and times the views and the
forward + loss by wrapping them. Then, in the same process, the model alone (the ``model_only`` arm of
``ssl_vs_lightly_train.py``: forward, backward, fused AdamW on one ready-made view tensor, channels_last) for as
many steps.
Writes ``benchmarks/results/step_profile.json`` (every step's time kept) and prints its table: per-part medians
(the first two steps of each are left out: allocation and lazy init) and the epoch-end checkpoints. Numbers vary
with machine load; run it on a quiet machine, more than once.

    python benchmarks/step_profile.py [--images 512] [--epochs 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_io import Recorder  # noqa: E402
from ssl_vs_lightly_train import _backbone, _head_and_loss, write_digits  # noqa: E402

SKIP = 2  # first steps: allocation and lazy initialisation
PARTS = ("views", "forward+loss", "backward", "optimizer")


def _timed(store: dict[str, list[float]], name: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        store[name].append(time.perf_counter() - start)
        return result

    return wrapper


def profile_warmstart(images: int, epochs: int) -> dict[str, list[float]]:
    """Per-step seconds of warmstart's parts (``views``, ``forward+loss``, ``backward``, ``optimizer``) and of
    its epoch-end checkpoints (``checkpoint``)."""
    import lightning as L

    from warmstart.core.ssl.simclr import SimCLR
    from warmstart.pretraining import pretrain
    from warmstart.pretraining.ssl_module import SSLModule

    parts: dict[str, list[float]] = defaultdict(list)

    class Stamps(L.Callback):
        """Backward = on_before_backward -> on_after_backward; optimizer = on_before_optimizer_step -> batch end;
        checkpoint = the epoch end (where the checkpoint is written) -> the next epoch start or train end."""

        def __init__(self) -> None:
            self.mark: dict[str, float] = {}

        def on_before_backward(self, *args) -> None:
            self.mark["bwd"] = time.perf_counter()

        def on_after_backward(self, *args) -> None:
            parts["backward"].append(time.perf_counter() - self.mark["bwd"])

        def on_before_optimizer_step(self, *args) -> None:
            self.mark["opt"] = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            parts["optimizer"].append(time.perf_counter() - self.mark["opt"])

        def on_save_checkpoint(self, *args) -> None:
            self.mark["save"] = time.perf_counter()

        def _saved(self) -> None:
            if "save" in self.mark:
                parts["checkpoint"].append(time.perf_counter() - self.mark.pop("save"))

        def on_train_epoch_start(self, *args) -> None:
            self._saved()

        def on_train_end(self, *args) -> None:
            self._saved()

    SSLModule.batched_views_of = _timed(parts, "views", SSLModule.batched_views_of)
    SimCLR.training_loss = _timed(parts, "forward+loss", SimCLR.training_loss)
    with tempfile.TemporaryDirectory(prefix="step_profile_") as tmp:
        data = write_digits(Path(tmp) / "data", images)
        pretrain(Path(tmp) / "run", data, "torchvision/resnet18", method="simclr", epochs=epochs, batch_size=64,
                 image_size=32, accelerator="cpu", devices=1, progress=False, callbacks=[Stamps()])
    return parts


def profile_model_only(steps: int) -> dict[str, list[float]]:
    """Per-step seconds of the model alone: ``forward+loss``, ``backward``, ``optimizer``."""
    import torch

    torch.manual_seed(0)
    backbone, (head, criterion) = _backbone(), _head_and_loss()
    views = torch.randn(128, 3, 32, 32)
    backbone.to(memory_format=torch.channels_last)  # the model_only arm's layout: what warmstart uses on the CPU
    opt = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=1e-3, weight_decay=1e-4, fused=True)
    parts: dict[str, list[float]] = defaultdict(list)
    for _ in range(steps):
        t0 = time.perf_counter()
        z0, z1 = head(backbone(views)).chunk(2)
        loss = criterion(z0, z1)
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        parts["forward+loss"].append(t1 - t0)
        parts["backward"].append(t2 - t1)
        parts["optimizer"].append(t3 - t2)
    return parts


def summarize(runs: list[dict], config: dict) -> dict:
    """Median milliseconds per part and arm (steps after the first ``SKIP``), and the checkpoints' total.

    Example:
        >>> runs = [{"arm": "warmstart", "part": "views", "index": i, "seconds": 0.01 * i} for i in range(4)]
        >>> summarize(runs, {"images": 8, "epochs": 1})["rows"][0]
        ['views', '25.0', '-']
    """
    def values(arm: str, part: str) -> list[float]:
        return [r["seconds"] for r in runs if r["arm"] == arm and r["part"] == part
                and (part == "checkpoint" or r["index"] >= SKIP)]

    def cell(arm: str, part: str) -> str:
        found = values(arm, part)
        return f"{1000 * statistics.median(found):.1f}" if found else "-"

    rows = [[part, cell("warmstart", part), cell("model_only", part)] for part in PARTS]
    saves = values("warmstart", "checkpoint")
    rows.append([f"epoch-end checkpoints ({len(saves)}, total)", f"{1000 * sum(saves):.0f}", "-"])
    return {"title": f"One SimCLR step, resnet18 32 px, batch 64, {config['images']} images x {config['epochs']} "
                     f"epochs: warmstart's parts vs the model alone (medians, first {SKIP} steps left out)",
            "columns": ["part", "warmstart ms", "model alone ms"], "rows": rows}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    recorder = Recorder("step_profile", {"images": args.images, "epochs": args.epochs})
    ours = profile_warmstart(args.images, args.epochs)
    alone = profile_model_only(len(ours["backward"]))
    runs = [{"arm": arm, "part": part, "index": i, "seconds": round(seconds, 6)}
            for arm, parts in (("warmstart", ours), ("model_only", alone))
            for part, times in parts.items() for i, seconds in enumerate(times)]
    path = recorder.write(runs, summarize)
    for row in summarize(runs, recorder.config)["rows"]:
        print(" | ".join(row))
    return path


if __name__ == "__main__":
    main()
