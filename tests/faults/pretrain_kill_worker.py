"""A `warmstart.pretrain` run for the kill/resume tests: tiny CNN, one thread, a progress line per batch.

Usage: python pretrain_kill_worker.py OUT DATA EPOCHS [--resume] [--sleep SECONDS] [--channels N]
       [--teacher WEIGHTS] (distillation from a tiny CNN teacher with these weights instead of BYOL)
Writes ``OUT.progress`` lines ``<epoch> <global_step>`` after every batch, so the test can kill the process at a
known point instead of guessing with a timer. The sleep only slows the run down; it changes no number.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn

from warmstart.pretraining import pretrain


class Progress(L.Callback):
    def __init__(self, path: Path, sleep: float) -> None:
        self.path, self.sleep = path, sleep

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with self.path.open("a") as f:
            f.write(f"{trainer.current_epoch} {trainer.global_step}\n")
        time.sleep(self.sleep)


def tiny_cnn(channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def main(argv: list[str]) -> None:
    out, data, epochs = Path(argv[0]), Path(argv[1]), int(argv[2])
    sleep = float(argv[argv.index("--sleep") + 1]) if "--sleep" in argv else 0.0
    channels = int(argv[argv.index("--channels") + 1]) if "--channels" in argv else None
    teacher = argv[argv.index("--teacher") + 1] if "--teacher" in argv else None
    method = {"method": "distillation", "teacher": tiny_cnn(channels or 3), "teacher_weights": teacher} if teacher \
        else {"method": "byol"}
    torch.set_num_threads(1)
    pretrain(out, data, tiny_cnn(channels or 3), epochs=epochs, batch_size=8, image_size=32,
             progress=False, accelerator="cpu", devices=1, resume="--resume" in argv, checkpoint_every=2,
             channels=channels, callbacks=[Progress(Path(f"{out}.progress"), sleep)], **method)


if __name__ == "__main__":
    main(sys.argv[1:])
