"""Worker for test_faults_finetune_kill: Lightning fine-tuning with GradualUnfreezing + DiscriminativeLR.

Run as ``python finetune_kill_lightning.py ROOT`` (the runs and the protocol: ``finetune_kill_common.py``). Each run
trains 5 epochs x 4 steps, appends one JSON line per training step to ``OUT/steps.jsonl`` (epoch, batch, trainable
groups, BatchNorm modes, every param group's lr) and, when ``fit`` returns, writes the final weights to
``OUT/final.pt``. ``ModelCheckpoint`` writes ``OUT/ckpts/last.ckpt`` at every epoch end; the resume continues
from it with ``fit(ckpt_path=...)``.

With the argument ``anchor`` (``python finetune_kill_lightning.py ROOT anchor``) the same schedule and lrs come from
one ``Finetune(plan)`` that also sets ``anchor`` (L2-SP): the resumed run must pull towards the weights the run
*started* from, which only the checkpoint still knows.

Kill point: after the first optimizer step of epoch 2, so epochs 0-1 are in ``last.ckpt`` and one more step
lives only in memory. (Killing "whenever" could land after the run finished, or inside Lightning's checkpoint
write: a flaky test.)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
from finetune_kill_common import hang_here, main
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from warmstart.lightning_callbacks import DiscriminativeLR, Finetune, GradualUnfreezing

GROUPS = ["stem", "block1", "block2", "head"]
STEPS_PER_EPOCH, EPOCHS, HANG_AT_EPOCH = 4, 5, 2
ANCHOR = 0.5 if "anchor" in sys.argv[2:] else None  # strong enough to change the weights visibly


class TinyCNN(L.LightningModule):
    """Four layer groups with BatchNorm; AdamW + per-step cosine so every step's lr is distinct."""

    def __init__(self, total_steps: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 3)
        self.total_steps = total_steps

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=0.05, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.total_steps)  # eta_min=0: exact ratios
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class StepLog(L.Callback):
    """One JSON line per step, flushed to disk at once: what a SIGKILL cannot take back."""

    def __init__(self, out: Path, hang: bool) -> None:
        self.path, self.hang = out / "steps.jsonl", hang

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # The warmstart callbacks come first in the list, so this epoch's schedule is already applied.
        params = dict(pl_module.named_parameters())
        trainable = [g for g in GROUPS if any(p.requires_grad for n, p in params.items() if n.startswith(g + "."))]
        bn_train = [g for g in GROUPS if any(m.training for n, m in pl_module.named_modules()
                                             if n.startswith(g + ".") and isinstance(m, nn.BatchNorm2d))]
        lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
        line = {"epoch": trainer.current_epoch, "batch": batch_idx, "step": trainer.global_step,
                "trainable": trainable, "bn_train": bn_train, "lrs": lrs}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.hang and trainer.current_epoch == HANG_AT_EPOCH:
            hang_here(self.path.parent, str(trainer.global_step))


def train(out: Path, hang: bool, resume: bool) -> None:
    # Bit-exact replay needs deterministic kernels (and one thread, set before the fork).
    torch.use_deterministic_algorithms(True)
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16 * STEPS_PER_EPOCH, 1, 8, 8, generator=g),
                         torch.randint(0, 3, (16 * STEPS_PER_EPOCH,), generator=g))
    # shuffle=False: Lightning does not checkpoint a RandomSampler's generator, so a shuffled loader would replay
    # different batches after resume; that is Lightning's data-order state, not the fine-tuning state under test.
    loader = DataLoader(data, batch_size=16, shuffle=False, num_workers=0)
    model = TinyCNN(total_steps=EPOCHS * STEPS_PER_EPOCH)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=out / "ckpts", save_last=True, every_n_epochs=1,
        # save_top_k must not be 0: Lightning 2.6 writes last.ckpt at epoch end only when a top-k file was just
        # written (model_checkpoint.py, on_train_epoch_end); with monitor=None and -1 that is every epoch.
        save_top_k=-1)
    plan = [GradualUnfreezing(head_epochs=1, every=1), DiscriminativeLR(layer_decay=0.5)]
    if ANCHOR is not None:
        plan = [Finetune({"head_epochs": 1, "every": 1, "layer_decay": 0.5, "anchor": ANCHOR})]
    callbacks = [*plan, StepLog(out, hang), ckpt]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, logger=False, callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                        num_sanity_val_steps=0, default_root_dir=str(out))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model, loader, ckpt_path=str(out / "ckpts" / "last.ckpt") if resume else None)
    torch.save(model.state_dict(), out / "final.pt")
    torch.save(start, out / "start.pt")


if __name__ == "__main__":
    main(train)
