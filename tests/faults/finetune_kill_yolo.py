"""Worker for test_faults_finetune_kill: ``wrap(YOLO("yolov8n.yaml"), unfreeze_schedule=..., layer_decay=...)``.

Run as ``python finetune_kill_yolo.py ROOT DATA_YAML`` (the runs and the protocol: ``finetune_kill_common.py``).
Each run trains 4 epochs on the tiny shapes dataset (imgsz 32, 2 batches per epoch, no per-epoch validation) into
``OUT/run``; Ultralytics writes ``OUT/run/weights/last.pt`` after every epoch. Appends one JSON line per batch,
and one at ``on_train_start``, to ``OUT/batches.jsonl`` (epoch, trainable layer groups by role, lr per param
group, BatchNorm modes). The resume wraps ``YOLO(last.pt)`` with no options and runs ``train(resume=True)``: the
warmstart config must come back from the checkpoint itself.

Kill point: half-way through writing epoch 2's ``last.pt``, after 2 epochs were saved and a third trained: the one
moment a kill can also destroy the checkpoint (Ultralytics alone writes ``last.pt`` in place). See
finetune_kill_lightning.py for why a fixed point and not a race.

``python finetune_kill_yolo.py ROOT DATA_YAML lora``: the same runs with ``lora={"r": 4, "alpha": 8}`` instead of
the schedule. After every save the run writes the EMA's adapters (what ``last.pt`` holds, merged) to
``OUT/saved_adapters_<epoch>.pt``; at ``on_train_start`` the resumed run writes its live adapters to
``OUT/resumed_adapters.pt``. At the kill point, epoch 2's adapters file is already written and its ``last.pt`` not.

``python finetune_kill_yolo.py ROOT DATA_YAML anchor``: the schedule plus ``anchor`` (L2-SP); at ``on_train_start``
the resumed run writes its anchor's starting values and its weights to ``OUT/resumed_anchor.pt``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from finetune_kill_common import hang_here, main
from ultralytics import YOLO
from ultralytics.utils.torch_utils import unwrap_model

from warmstart.core import layer_groups
from warmstart.yolo_integration import wrap
from warmstart.yolo_integration.lora_merge import adapter_state

EPOCHS, HANG_AT_EPOCH = 4, 2
SCHEDULE = {"at": {"head": 0, "neck": 1, "backbone": 3}}  # resumed at epoch 2: neck trains, backbone not yet
DECAY = {"backbone": 0.1, "neck": 0.5}
ARGS = dict(imgsz=32, batch=4, workers=0, device="cpu", plots=False, amp=False, verbose=False, exist_ok=True,
            val=False, nbs=4)  # nbs=batch: one optimizer step per batch


def train(out: Path, hang: bool, resume: bool) -> None:
    data = sys.argv[2]
    log = out / "batches.jsonl"

    def record(trainer, at: str = "batch") -> None:
        model = unwrap_model(trainer.model)
        params = dict(model.named_parameters())
        groups = layer_groups(model)
        roles = {g.name: g.role for g in groups}
        # The fixed DFL conv never trains (Ultralytics' own freeze), so "trainable" = any parameter trains.
        trainable = sorted({g.role for g in groups if any(params[n].requires_grad for n in g.param_names)})
        bn_train = sorted({roles[".".join(n.split(".")[:2])] for n, m in model.named_modules()  # "model.N.*"
                           if "BatchNorm" in type(m).__name__ and m.training})
        lrs = {pg["name"]: pg["lr"] for pg in trainer.optimizer.param_groups}
        epoch = trainer.start_epoch if at == "train_start" else trainer.epoch
        line = {"at": at, "epoch": epoch, "trainable": trainable, "bn_train": bn_train, "lrs": lrs}
        with log.open("a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    if hang:
        write_bytes, saves = Path.write_bytes, []

        def half_then_hang(path: Path, data: bytes) -> int:
            if "last.pt" in path.name:  # whatever name the trainer writes last.pt's bytes to
                saves.append(path.name)
                if len(saves) == HANG_AT_EPOCH + 1:
                    with path.open("wb") as f:
                        f.write(data[: len(data) // 2])
                        f.flush()
                        os.fsync(f.fileno())
                    hang_here(out, f"writing last.pt of epoch {HANG_AT_EPOCH}")
            return write_bytes(path, data)

        Path.write_bytes = half_then_hang  # this forked run only

    lora, anchor = sys.argv[3:] == ["lora"], sys.argv[3:] == ["anchor"]
    options = {"lora": {"r": 4, "alpha": 8}} if lora else {"unfreeze_schedule": SCHEDULE, "layer_decay": DECAY}
    if anchor:
        options["plan"] = {"anchor": 5.0}
    if resume:
        yolo = wrap(YOLO(str(out / "run" / "weights" / "last.pt"), verbose=False))
    else:
        yolo = wrap(YOLO("yolov8n.yaml", verbose=False), **options)
    # on_train_start: after setup (and, when resuming, after the checkpoint is loaded), before the first epoch.
    yolo.add_callback("on_train_start", lambda trainer: record(trainer, "train_start"))
    yolo.add_callback("on_train_batch_end", record)
    if anchor and resume:  # after the checkpoint is loaded, before any step: what the resumed run pulls towards
        yolo.add_callback("on_train_start", lambda trainer: torch.save(
            {"anchor": {k: v.cpu() for k, v in trainer.controller.anchor.values.items()},
             "weights": {k: v.detach().clone() for k, v in unwrap_model(trainer.model).state_dict().items()}},
            out / "resumed_anchor.pt"))
    if lora:
        yolo.add_callback("on_model_save", lambda trainer: torch.save(
            adapter_state(trainer.ema.ema), out / f"saved_adapters_{trainer.epoch}.pt"))
        if resume:
            yolo.add_callback("on_train_start", lambda trainer: torch.save(
                adapter_state(unwrap_model(trainer.model)), out / "resumed_adapters.pt"))
    if resume:
        yolo.train(resume=True, data=data, **ARGS)
    else:
        yolo.train(data=data, epochs=EPOCHS, project=str(out), name="run", seed=0, **ARGS)


if __name__ == "__main__":
    main(train)
