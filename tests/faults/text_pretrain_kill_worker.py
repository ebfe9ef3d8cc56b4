"""Worker for test_faults_finetune_kill: ``continue_pretraining`` (MLM) killed while it saves a checkpoint.

Run as ``python text_pretrain_kill_worker.py ROOT`` (the runs and the protocol: ``finetune_kill_common.py``).
The worker first saves a 1-layer BERT (dropout off) with a WordPiece vocabulary of the corpus's words to
``ROOT/tiny-bert``. Each run continues pretraining it for 8 steps with a ``checkpoint-N`` every 2 steps (the last 2
kept), logs every step (``OUT/model/logs/csv/metrics.csv``), appends one JSON line per step (step, a checksum of
one weight) to ``OUT/steps.jsonl`` and saves the model to ``OUT/model``. The resume calls
``continue_pretraining(..., resume_from_checkpoint=True)`` in a process that has only what is on disk.

Kill point: inside the save of ``checkpoint-4``, after transformers wrote its weights and optimizer and before its
RNG states and ``trainer_state.json`` (it writes the folder in place, file by file): the newest folder on disk is
then half-written, and the one before it (``checkpoint-2``) is whole. A fixed point, not a timed race: see
finetune_kill_lightning.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import transformers
from finetune_kill_common import hang_here, main

from warmstart.hf_integration import continue_pretraining

STEPS, SAVE_EVERY, HANG_AT_SAVE = 8, 2, 2
TEXTS = [f"the {part} on line {n} shows {fault} again." for n in range(4)
         for part in ("vorkel", "flange", "pump") for fault in ("trisbane", "rust", "a leak", "kalomex")]


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save_tiny_bert(folder: Path) -> Path:
    """A 1-layer BERT MLM and a WordPiece tokenizer over the corpus's words, as a model folder (no download)."""
    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in TEXTS for w in t.replace(".", " .").split()})
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + words) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(SPECIALS) + len(words), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    return folder


class StepLog(transformers.TrainerCallback):
    """One fsynced JSON line per optimizer step: which step, and where one weight is."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_step_end(self, args, state, control, model=None, **kwargs):
        weight = model.bert.encoder.layer[0].attention.self.query.weight
        with self.path.open("a") as f:
            f.write(json.dumps({"step": state.global_step, "checksum": float(weight.double().sum())}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def train(out: Path, hang: bool, resume: bool) -> None:
    torch.use_deterministic_algorithms(True)
    if hang:
        save_rng_state, saves = transformers.Trainer._save_rng_state, []

        def save_then_hang(self, output_dir, *args, **kwargs):
            saves.append(output_dir)
            if len(saves) == HANG_AT_SAVE:
                hang_here(out, Path(output_dir).name)
            return save_rng_state(self, output_dir, *args, **kwargs)

        transformers.Trainer._save_rng_state = save_then_hang  # this forked run only
    args = {"use_cpu": True, "disable_tqdm": True, "logging_steps": 1, "per_device_train_batch_size": 4,
            "dataloader_pin_memory": False, "dataloader_num_workers": 0, "max_steps": STEPS,
            "save_strategy": "steps", "save_steps": SAVE_EVERY, "full_determinism": True}
    continue_pretraining(Path(sys.argv[1]) / "tiny-bert", TEXTS, out / "model", max_length=16, training_args=args,
                         resume_from_checkpoint=True if resume else None, callbacks=[StepLog(out / "steps.jsonl")])


if __name__ == "__main__":
    save_tiny_bert(Path(sys.argv[1]) / "tiny-bert")  # before the runs fork: all three start from the same folder
    main(train)
