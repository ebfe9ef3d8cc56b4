"""Worker for test_faults_finetune_kill: ``transformers.Trainer`` with warmstart's GradualUnfreezing + LLRD.

Run as ``python finetune_kill_hf.py ROOT`` (the runs and the protocol: ``finetune_kill_common.py``). Each run
trains a 2-layer BERT built from its config (no network), 4 optimizer steps per epoch, 4 epochs, ``checkpoint-N``
every 3 steps; appends one JSON line per step to ``OUT/steps.jsonl`` (step, epoch, trainable groups, every param
group's lr) and writes the final weights to ``OUT/final.pt``. The resume runs
``trainer.train(resume_from_checkpoint=True)`` (the newest checkpoint).

``python finetune_kill_hf.py ROOT anchor``: the same schedule and lrs as one plan with ``anchor`` (L2-SP) through
``FinetuneCallback(plan)`` + ``plan_optimizer``; the starting weights go to ``OUT/start.pt``.

Kill point: once step 10 is done (checkpoint-9 is the newest, one step of epoch 2 lives only in memory; see
finetune_kill_lightning.py for why not a race).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import transformers
from finetune_kill_common import hang_here, main

from warmstart.core import frozen_groups, group_names, layer_groups
from warmstart.hf_integration import FinetuneCallback, GradualUnfreezing, llrd_optimizer, plan_optimizer

EPOCHS, BATCH, SAMPLES = 4, 8, 32  # 4 steps per epoch
HANG_AFTER_STEP = 10


class Tokens(torch.utils.data.Dataset):
    """Learnable toy task: label 1 iff token 5 appears."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(6, 64, (SAMPLES, 8), generator=g)
        self.labels = torch.randint(0, 2, (SAMPLES,), generator=g)
        self.ids[self.labels == 1, 1] = 5

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


class StepLog(transformers.TrainerCallback):
    """One fsynced JSON line per optimizer step; runs after GradualUnfreezing (later in the callback list)."""

    def __init__(self, out: Path, hang: bool) -> None:
        self.path, self.hang = out / "steps.jsonl", hang
        self.line: dict = {}

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        # lrs now are the ones this step uses (the scheduler steps right after optimizer.step()).
        names = group_names(layer_groups(model))
        frozen = frozen_groups(model)
        self.line = {"step": state.global_step + 1, "epoch": state.epoch,
                     "trainable": [n for n in names if n not in frozen],
                     "lrs": {g["name"]: g["lr"] for g in optimizer.param_groups}}

    def on_step_end(self, args, state, control, **kwargs):
        with self.path.open("a") as f:
            f.write(json.dumps(self.line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.hang and state.global_step == HANG_AFTER_STEP:
            hang_here(self.path.parent, str(state.global_step))


def train(out: Path, hang: bool, resume: bool) -> None:
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    # Dropout off: the Trainer restores its RNG states on resume, but dropout would make a mismatch there
    # indistinguishable from lost fine-tuning state.
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertForSequenceClassification(cfg)
    args = transformers.TrainingArguments(
        output_dir=str(out / "run"), report_to=[], use_cpu=True, disable_tqdm=True, logging_strategy="no",
        save_strategy="steps", save_steps=3, per_device_train_batch_size=BATCH, num_train_epochs=EPOCHS,
        lr_scheduler_type="linear", warmup_steps=2, seed=0, full_determinism=True,
        dataloader_num_workers=0, dataloader_pin_memory=False)
    if sys.argv[2:] == ["anchor"]:  # the same schedule and lrs as one plan, plus L2-SP
        plan = {"head_epochs": 1, "every": 1, "layer_decay": 0.5, "anchor": 0.5}
        callback, optimizer = FinetuneCallback(plan), plan_optimizer(model, plan, lr=2e-3, weight_decay=0.01)
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "start.pt")
    else:
        callback = GradualUnfreezing(head_epochs=1, every=1)
        optimizer = llrd_optimizer(model, lr=2e-3, layer_decay=0.5, weight_decay=0.01)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(),
                                   callbacks=[callback, StepLog(out, hang)], optimizer_cls_and_kwargs=optimizer)
    trainer.train(resume_from_checkpoint=True if resume else None)
    torch.save(model.state_dict(), out / "final.pt")


if __name__ == "__main__":
    main(train)
