"""A tiny LightningModule on scikit-learn's digits, an lr recorder and a quiet Trainer factory for the pl tests."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")
pytest.importorskip("sklearn")

# Lightning's advice about dataloader workers and tiny logging intervals is noise for 8-step test runs.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*number of training batches.*")
warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # frozen BatchNorm, pinned on purpose

GROUPS = ["stem", "block1", "block2", "head"]


def digits(n: int = 256) -> TensorDataset:
    """The first ``n`` sklearn digits as (1, 8, 8) float images in [0, 1] and int labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    return TensorDataset(x, torch.tensor(d.target[:n]))


def loader(n: int = 256, batch_size: int = 32) -> DataLoader:
    # shuffle=False: a resumed run must see the same batches as an uninterrupted one
    return DataLoader(digits(n), batch_size=batch_size, shuffle=False)


class DigitsCNN(L.LightningModule):
    """Four layer groups (stem, block1, block2, head) with BatchNorm, and a choice of scheduler."""

    def __init__(self, lr: float = 0.01, optimizer: str = "adam", scheduler: str | None = None,
                 total_steps: int = 100, weight_decay: float = 0.0, trainable_only: bool = False,
                 head_only: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                    nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, 10)
        self.lr, self.optimizer_name, self.scheduler = lr, optimizer, scheduler
        self.total_steps, self.weight_decay, self.trainable_only = total_steps, weight_decay, trainable_only
        self.head_only = head_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(self.stem(x))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        self.log("const_metric", 1.0, on_epoch=True, on_step=False)  # never improves: drives ReduceLROnPlateau
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad] if self.trainable_only else self.parameters()
        params = self.head.parameters() if self.head_only else params
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        s = torch.optim.lr_scheduler
        if self.scheduler is None:
            return opt
        if self.scheduler == "lambda":
            sched = {"scheduler": s.LambdaLR(opt, lambda step: 1.0 / (1.0 + step)), "interval": "step"}
        elif self.scheduler == "onecycle":
            sched = {"scheduler": s.OneCycleLR(opt, max_lr=self.lr, total_steps=self.total_steps), "interval": "step"}
        elif self.scheduler == "cosine":
            sched = {"scheduler": s.CosineAnnealingLR(opt, T_max=self.total_steps), "interval": "step"}
        elif self.scheduler == "plateau":
            sched = {"scheduler": s.ReduceLROnPlateau(opt, factor=0.5, patience=0), "monitor": "const_metric",
                     "interval": "epoch"}
        else:
            raise ValueError(self.scheduler)
        return {"optimizer": opt, "lr_scheduler": sched}


class LrRecorder(L.Callback):
    """Records every param group's lr at each training step, and the trainable group names at each epoch."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.names: list[str] = []
        self.steps = 0
        self.trainable: list[list[str]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # runs after the warmstart callbacks (they come first in the callback list)
        params = dict(pl_module.named_parameters())
        self.trainable.append([g for g in GROUPS if any(p.requires_grad for n, p in params.items()
                                                        if n.startswith(g + "."))])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        opt = trainer.optimizers[0]
        self.names = [g.get("name", str(i)) for i, g in enumerate(opt.param_groups)]
        self.lrs.append([float(g["lr"]) for g in opt.param_groups])
        self.steps += 1


def trainer(tmp_path, callbacks=(), max_epochs: int = 2, **kw) -> L.Trainer:
    """A quiet, deterministic CPU Trainer."""
    args = dict(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    args.update(kw)
    return L.Trainer(callbacks=list(callbacks), **args)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    """Names of state-dict entries (params and BN buffers) that differ from ``before``."""
    after = module.state_dict()
    return {k for k, v in before.items() if v.dtype.is_floating_point and not torch.equal(v, after[k])}


def groups_changed(before: dict[str, torch.Tensor], module: nn.Module) -> list[str]:
    """Layer groups with at least one changed *parameter*."""
    names = changed(before, module) & {n for n, _ in module.named_parameters()}
    return [g for g in GROUPS if any(n.startswith(g + ".") for n in names)]
