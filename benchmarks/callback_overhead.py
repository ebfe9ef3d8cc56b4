"""Cost of warmstart's Lightning callbacks, and what a frozen backbone buys.

1. Overhead: the same gradual-unfreezing + layer-decay training, configured (a) with the callbacks
   ``GradualUnfreezing`` + ``DiscriminativeLR`` and (b) by hand inside the LightningModule (core.param_groups in
   configure_optimizers, core.apply_schedule in on_train_epoch_start). Target: (a)/(b) step time <= 1.02.
2. Speedup: ``Freeze()`` (everything but the head) vs full fine-tuning, step time ratio.

torchvision resnet18 at 32 px on random data (speed only), CPU. Runs are interleaved (a, b, a, b, ...) so load
drift on a shared machine hits both arms alike; each ratio is the median of the per-pair ratios of median step
times (the first steps of every run are dropped as warm-up).

Usage: python benchmarks/callback_overhead.py [--repeats 5] [--steps 12] [--batch-size 32] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import lightning as L
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from warmstart.core import UnfreezeSchedule, apply_schedule, layer_groups, param_groups
from warmstart.lightning_callbacks import DiscriminativeLR, Freeze, GradualUnfreezing

LR, DECAY, EPOCHS, WARMUP = 1e-3, 0.7, 3, 2


class Net(L.LightningModule):
    """resnet18 classifier; ``by_hand=True`` does in its own hooks what the callbacks do."""

    def __init__(self, by_hand: bool = False) -> None:
        super().__init__()
        self.model = torchvision.models.resnet18(num_classes=10)
        self.by_hand = by_hand
        self.schedule = UnfreezeSchedule(num_groups=len(layer_groups(self.model)), head_epochs=1)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def on_train_epoch_start(self) -> None:
        if self.by_hand:
            apply_schedule(self.model, self.schedule, self.current_epoch)

    def configure_optimizers(self):
        if self.by_hand:
            return torch.optim.AdamW(param_groups(self.model, LR, layer_decay=DECAY, weight_decay=0.01), lr=LR)
        return torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=0.01)


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._t)


def run(arm: str, data: DataLoader, steps: int) -> float:
    """Median step time (s) of one short fit."""
    torch.manual_seed(0)
    timer = StepTimer()
    if arm == "callbacks":
        model, cbs = Net(), [GradualUnfreezing(head_epochs=1, module="model"), DiscriminativeLR(
            layer_decay=DECAY, weight_decay=0.01, module="model")]
    elif arm == "by_hand":
        model, cbs = Net(by_hand=True), []
    elif arm == "frozen":
        model, cbs = Net(), [Freeze(module="model")]
    else:
        model, cbs = Net(), []
    trainer = L.Trainer(max_epochs=EPOCHS, limit_train_batches=steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[*cbs, timer])
    trainer.fit(model, data)
    # drop each epoch's first steps (warm-up after the trainable set changed)
    kept = [t for i, t in enumerate(timer.times) if i % steps >= WARMUP]
    return statistics.median(kept)


def compare(a: str, b: str, data: DataLoader, steps: int, repeats: int) -> tuple[float, list[float], list[float]]:
    ta, tb = [], []
    for i in range(repeats):  # interleaved
        ta.append(run(a, data, steps))
        tb.append(run(b, data, steps))
        print(f"  pair {i + 1}/{repeats}: {a} {ta[-1] * 1e3:.1f} ms, {b} {tb[-1] * 1e3:.1f} ms", flush=True)
    ratio = statistics.median(x / y for x, y in zip(ta, tb))
    return ratio, ta, tb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12, help="train steps per epoch (3 epochs per run)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * args.steps
    data = DataLoader(TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)),
                      batch_size=args.batch_size)
    print(f"resnet18 32px batch {args.batch_size}, {EPOCHS} epochs x {args.steps} steps, {args.repeats} interleaved "
          f"repeats, torch threads {torch.get_num_threads()}")
    ratio, ta, tb = compare("callbacks", "by_hand", data, args.steps, args.repeats)
    print(f"overhead: callbacks / by hand step time = {ratio:.3f} "
          f"(median step {statistics.median(ta) * 1e3:.1f} ms vs {statistics.median(tb) * 1e3:.1f} ms)")
    ratio, ta, tb = compare("full", "frozen", data, args.steps, args.repeats)
    print(f"speedup: full fine-tune / Freeze(all_but_head) step time = {ratio:.2f}x "
          f"(median step {statistics.median(ta) * 1e3:.1f} ms vs {statistics.median(tb) * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
