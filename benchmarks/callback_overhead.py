"""Cost of warmstart's Lightning callbacks, and what a frozen backbone buys, timed over whole ``fit`` calls.

1. Overhead: the same gradual-unfreezing + layer-decay training, configured (a) with the callbacks
   ``GradualUnfreezing`` + ``DiscriminativeLR`` and (b) by hand inside the LightningModule (core.param_groups in
   configure_optimizers, core.apply_schedule in on_train_epoch_start). Target: (a)/(b) fit time <= 1.02.
2. Speedup: full fine-tuning vs ``Freeze()`` (everything but the head), fit time ratio.

The timed window is the whole ``trainer.fit`` (setup, on_fit_start, every epoch start/end and every step), so
every hook the callbacks run is inside it. torchvision resnet18 at 32 px on random data (speed only), CPU. Arms
run in interleaved pairs, the order alternating per pair (ab, ba, ab, ...) so load drift on a shared machine hits
both alike; one untimed fit per arm first pays import and first-call costs. Every pair is kept: the table shows
the median per-pair ratio and its min..max.

Usage: python benchmarks/callback_overhead.py [--pairs 5] [--steps 12] [--epochs 3] [--batch-size 32] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import Recorder, spread  # noqa: E402

from warmstart.core import UnfreezeSchedule, apply_schedule, layer_groups, param_groups  # noqa: E402
from warmstart.lightning_callbacks import DiscriminativeLR, Freeze, GradualUnfreezing  # noqa: E402

LR, DECAY = 1e-3, 0.7
COMPARISONS = {"overhead": ("callbacks", "by_hand"), "speedup": ("full", "frozen")}
LABELS = {"overhead": "overhead: callbacks / same training by hand (target <= 1.02)",
          "speedup": "speedup: full fine-tune / Freeze(all but head)"}


class Net(L.LightningModule):
    """resnet18 classifier; ``by_hand=True`` does in its own hooks what the callbacks do."""

    def __init__(self, by_hand: bool = False) -> None:
        super().__init__()
        self.model = torchvision.models.resnet18(num_classes=10)
        self.by_hand = by_hand
        self.schedule = UnfreezeSchedule(num_groups=len(layer_groups(self.model)), head_epochs=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


def fit_seconds(arm: str, data: DataLoader, steps: int, epochs: int) -> float:
    """Wall time of one whole ``trainer.fit`` of ``arm`` (the model is built outside the window)."""
    torch.manual_seed(0)
    if arm == "callbacks":
        model, cbs = Net(), [GradualUnfreezing(head_epochs=1, module="model"),
                             DiscriminativeLR(layer_decay=DECAY, weight_decay=0.01, module="model")]
    elif arm == "by_hand":
        model, cbs = Net(by_hand=True), []
    elif arm == "frozen":
        model, cbs = Net(), [Freeze(module="model")]
    else:
        model, cbs = Net(), []
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=cbs)
    start = time.perf_counter()
    trainer.fit(model, data)
    return time.perf_counter() - start


def summarize(runs: list[dict], config: dict) -> dict:
    """Per comparison: median per-pair ratio (min..max over all pairs) and each arm's median fit time.

    Example:
        >>> runs = [{"comparison": "overhead", "pair": 0, "arm": a, "fit_s": 2.0} for a in ("callbacks", "by_hand")]
        >>> summarize(runs, {"pairs": 1, "steps": 2, "epochs": 1, "batch_size": 4})["rows"][0][1]
        '1.000 (1.000..1.000, n=1)'
    """
    rows = []
    for comparison, (a, b) in COMPARISONS.items():
        # a pair is (session, pair index): runs of several invocations of the same command can be pooled
        times = {((r.get("session", 0), r["pair"]), r["arm"]): r["fit_s"] for r in runs
                 if r["comparison"] == comparison}
        pairs = sorted({p for p, _ in times if (p, a) in times and (p, b) in times})
        if not pairs:
            continue
        ratios = [times[(p, a)] / times[(p, b)] for p in pairs]
        rows.append([LABELS[comparison], spread(ratios), spread([times[(p, a)] for p in pairs], "{:.2f}"),
                     spread([times[(p, b)] for p in pairs], "{:.2f}"), ", ".join(f"{x:.3f}" for x in ratios)])
    sessions = len({r.get("session", 0) for r in runs})
    return {"title": f"Lightning callbacks, whole-fit time: resnet18 32 px, batch {config['batch_size']}, "
                     f"{config['epochs']} epochs x {config['steps']} steps per fit, {config['pairs']} interleaved "
                     f"pairs" + (f" in each of {sessions} sessions" if sessions > 1 else ""),
            "columns": ["comparison", "ratio a/b, median (min..max)", "fit a (s)", "fit b (s)", "per-pair ratios"],
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12, help="train steps per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.pairs < 1 or args.steps < 1 or args.epochs < 1:
        parser.error("--pairs, --steps and --epochs must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = {**vars(args), "threads": torch.get_num_threads()}
    recorder = Recorder("callback_overhead", config)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * args.steps
    data = DataLoader(TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)),
                      batch_size=args.batch_size)
    print(f"resnet18 32px batch {args.batch_size}, {args.epochs} epochs x {args.steps} steps per fit, "
          f"{args.pairs} interleaved pairs, torch threads {torch.get_num_threads()}", flush=True)
    runs: list[dict] = []
    for comparison, arms in COMPARISONS.items():
        for arm in arms:  # untimed warm-up fit per arm
            fit_seconds(arm, data, args.steps, args.epochs)
        for pair in range(args.pairs):
            order = arms if pair % 2 == 0 else arms[::-1]
            for arm in order:
                runs.append({"comparison": comparison, "pair": pair, "arm": arm, "order": order.index(arm),
                             "fit_s": round(fit_seconds(arm, data, args.steps, args.epochs), 4)})
            got = {r["arm"]: r["fit_s"] for r in runs[-2:]}
            print(f"  {comparison} pair {pair + 1}/{args.pairs}: {arms[0]} {got[arms[0]]:.2f} s, {arms[1]} "
                  f"{got[arms[1]]:.2f} s, ratio {got[arms[0]] / got[arms[1]]:.3f}", flush=True)
    table = summarize(runs, config)
    for row in table["rows"]:
        print(f"{row[0]}: {row[1]}")
    recorder.write(runs, summarize)


if __name__ == "__main__":
    main()
