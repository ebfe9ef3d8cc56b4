"""Tiny HF models, toy datasets and a recorder callback shared by the Trainer-integration tests."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from warmstart.core import frozen_groups  # noqa: E402

NUM_LABELS = 2


def tiny_bert(seed: int = 0, layers: int = 2) -> transformers.BertForSequenceClassification:
    """2-layer, hidden-32 BERT classifier; dropout off so resumed and uninterrupted runs compare exactly."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=NUM_LABELS,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(cfg)


def tiny_vit_config(num_labels: int = 3, image_size: int = 32) -> transformers.ViTConfig:
    return transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  image_size=image_size, patch_size=8, num_labels=num_labels)


class TokenDataset(torch.utils.data.Dataset):
    """Learnable toy task: the label is whether token 5 appears in the sequence."""

    def __init__(self, n: int = 32, seq_len: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(6, 64, (n, seq_len), generator=g)
        self.labels = torch.randint(0, NUM_LABELS, (n,), generator=g)
        self.ids[self.labels == 1, 1] = 5

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, size: int = 32, num_labels: int = 3) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, num_labels, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def training_args(tmp_path, **overrides) -> transformers.TrainingArguments:
    kwargs = dict(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
                  disable_tqdm=True, per_device_train_batch_size=8, num_train_epochs=1, learning_rate=1e-3,
                  seed=0, dataloader_num_workers=0, dataloader_pin_memory=False)
    kwargs.update(overrides)
    return transformers.TrainingArguments(**kwargs)


class Recorder(transformers.TrainerCallback):
    """After every optimizer step: which groups were frozen and every param group's lr during that step."""

    def __init__(self) -> None:
        self.frozen: dict[int, list[str]] = {}
        self.lrs: dict[int, dict[str, float]] = {}
        self._lr_before: dict[str, float] = {}

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        # the scheduler steps right after optimizer.step(): read the lr the step used, before it moves
        self._lr_before = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.frozen[state.global_step] = frozen_groups(model)
        self.lrs[state.global_step] = dict(self._lr_before)
