"""Steps 2-3 of the demo: train ``DigitNet`` on a few labels with a real Lightning Trainer + warmstart callbacks.

Every run gets the same budget: ``epochs`` x ``samples_per_epoch`` labeled samples drawn with replacement (so
1% and 20% of the labels get the same number of optimizer steps) and the same optimizer and schedule.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from .._optional import require
from .model import DigitNet

# method -> what it is, for the table and --help.
METHODS: dict[str, str] = {
    "scratch": "random init, all layers train",
    "probe": "SSL weights, Freeze: only the head trains",
    "finetune": "SSL weights, the declared few-label recipe (head alone for 30% of the run, then one more layer "
                "group every 10%, layer decay 0.5, BatchNorm statistics kept while a group is frozen)",
    "lora": "SSL weights, LoRA r=4 on every conv (+ head, BatchNorm)",
}
PRETRAINED = ("probe", "finetune", "lora")
# Learning-rate multiplier per method: a lone head and low-rank adapters start from zero-ish outputs and need a
# larger step than full training (the usual practice for linear probes and LoRA).
LR_SCALE = {"scratch": 1.0, "probe": 3.0, "finetune": 1.0, "lora": 3.0}


def make_classifier(width: int, lr: float, epochs: int) -> Any:
    """The LightningModule used by every run: ``self.net`` is a ``DigitNet``; AdamW + cosine decay per epoch.

    Example:
        >>> m = make_classifier(width=4, lr=1e-3, epochs=2)
        >>> type(m.net).__name__
        'DigitNet'
    """
    L = require("lightning", "lightning")

    class DigitClassifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = DigitNet(width=width, num_classes=10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self) -> Any:
            # All parameters from the start (frozen ones get no grad, so no update): ARCHITECTURE.md rule 2.
            opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=1e-4)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1), eta_min=0.0)
            return {"optimizer": opt, "lr_scheduler": sched}

    return DigitClassifier()


def callbacks_for(method: str, weights: Path | None, epochs: int) -> list:
    """The warmstart callbacks of one method (``weights``: the pretrained backbone file, unused by scratch).

    Example:
        >>> [type(c).__name__ for c in callbacks_for("scratch", None, 10)]
        []
    """
    if method not in METHODS:
        raise ValueError(f"unknown fine-tuning method {method!r}; valid: {', '.join(METHODS)}")
    if method == "scratch":
        return []
    if weights is None:
        raise ValueError(f"method {method!r} needs pretrained weights")
    from ..core.recipes import FEW_LABEL_FINETUNE
    from ..lightning_callbacks import Finetune, Freeze, LoadBackboneWeights, LoRA

    load = LoadBackboneWeights(weights)  # first: LoRA renames the conv weights it wraps
    if method == "probe":
        return [load, Freeze("all_but_head")]
    if method == "lora":
        return [load, LoRA(r=4, alpha=8)]
    # The recipe benchmarks/transfer.py declared for few-label fine-tuning (warmstart.core.recipes), unchanged:
    # the demo shows what a user gets from it, not a setting picked for the digits.
    return [load, Finetune(FEW_LABEL_FINETUNE)]


def train_one(method: str, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
              y_test: torch.Tensor, *, weights: Path | None, width: int, epochs: int, lr: float, seed: int,
              samples_per_epoch: int = 128, batch_size: int = 32, progress: bool = True) -> dict:
    """Train one (method, labeled set) cell and return its held-out accuracy, trainable params and wall time.

    Example:
        >>> x, y = torch.randn(20, 3, 16, 16), torch.arange(20) % 10
        >>> r = train_one("scratch", x, y, x, y, weights=None, width=4, epochs=1, lr=1e-3, seed=0,
        ...               samples_per_epoch=8, batch_size=4, progress=False)  # doctest: +SKIP
        >>> sorted(r)  # doctest: +SKIP
        ['accuracy', 'method', 'n_labeled', 'total_params', 'trainable_params', 'wall_time_s']
    """
    L = require("lightning", "lightning")
    start = time.perf_counter()
    L.seed_everything(seed, workers=True, verbose=False)
    model = make_classifier(width, lr * LR_SCALE[method], epochs)
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(TensorDataset(x_train, y_train), replacement=True, num_samples=samples_per_epoch,
                            generator=generator)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, sampler=sampler, num_workers=0)
    callbacks = callbacks_for(method, weights, epochs)
    if not progress:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=progress, deterministic=True,
                        callbacks=callbacks, num_sanity_val_steps=0)
    trainer.fit(model, train_dataloaders=loader)
    # Trainable count at the end of training: for GradualUnfreezing everything, for LoRA/probe the small subset.
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x_test[i:i + 512]).argmax(1) for i in range(0, len(x_test), 512)])
    return {"method": method, "n_labeled": len(y_train), "accuracy": round(float((pred == y_test).float().mean()), 4),
            "trainable_params": int(trainable), "total_params": int(total),
            "wall_time_s": round(time.perf_counter() - start, 2)}
