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


def warmup_fraction(fraction: float) -> dict:
    """TrainingArguments for a warmup over ``fraction`` of the run: ``warmup_ratio`` before transformers 5, a
    fractional ``warmup_steps`` from 5 on (where ``warmup_ratio`` is deprecated)."""
    major = int(transformers.__version__.split(".")[0])
    return {"warmup_steps": fraction} if major >= 5 else {"warmup_ratio": fraction}


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


def _group_lr_ratios(groups: list[dict]) -> dict[str, float]:
    """lr of each layer group / the head's lr, from optimizer param groups named ``"<layer group>/<kind>"``."""
    lrs = {g["name"].rsplit("/", 1)[0]: g["lr"] for g in groups}
    return {name: lr / lrs["head"] for name, lr in lrs.items()}


def _trainable_groups(model: torch.nn.Module, groups) -> list[str]:
    """Layer groups with at least one parameter that requires grad (read from the model, not the controller)."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    return [g.name for g in groups if any(flags[n] for n in g.param_names)]


class _EpochRecorder(transformers.TrainerCallback):
    """At the first optimizer step of each epoch (after FinetuneCallback acted): trainable groups and lr ratios."""

    def __init__(self, finetune) -> None:
        self.finetune = finetune
        self.per_epoch: dict[int, tuple[list[str], dict[str, float]]] = {}

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        epoch = int(state.epoch or 0)
        if epoch not in self.per_epoch:
            self.per_epoch[epoch] = (_trainable_groups(model, self.finetune.controller.groups),
                                     _group_lr_ratios(optimizer.param_groups))


def hf_trainable_and_lr_ratios(model: torch.nn.Module, plan, epochs: int, lr: float = 1e-3,
                               output_dir=None) -> list[tuple[list[str], dict[str, float]]]:
    """Train ``model`` with ``FinetuneCallback(plan)`` + ``plan_optimizer`` in a real ``transformers.Trainer``.

    For the cross-framework test: per epoch, the layer groups with any parameter that requires grad (read from
    the model) and ``{layer group: lr / head lr}`` read from the Trainer's real optimizer (constant scheduler, so
    the ratios are the plan's). ``model`` must take ``TokenDataset`` batches (e.g. :func:`tiny_bert`); 2 optimizer
    steps per epoch, CPU, no checkpoints.
    """
    import tempfile

    from warmstart.hf_integration import FinetuneCallback, plan_optimizer

    with tempfile.TemporaryDirectory() as tmp:
        cb = FinetuneCallback(plan)
        rec = _EpochRecorder(cb)
        args = training_args(output_dir or tmp, num_train_epochs=epochs, lr_scheduler_type="constant",
                             learning_rate=lr)
        transformers.Trainer(model=model, args=args, train_dataset=TokenDataset(16), callbacks=[cb, rec],
                             optimizer_cls_and_kwargs=plan_optimizer(model, plan)).train()
    return [rec.per_epoch[e] for e in range(epochs)]


def controller_trainable_and_lr_ratios(model: torch.nn.Module, plan, epochs: int,
                                       lr: float = 1e-3) -> list[tuple[list[str], dict[str, float]]]:
    """The same per-epoch record from a bare ``FinetuneController`` (no Trainer): the reference."""
    from warmstart.core.controller import FinetuneController

    c = FinetuneController(model, plan)
    out = []
    for epoch in range(epochs):
        c.apply(epoch)
        out.append((_trainable_groups(model, c.groups), _group_lr_ratios(c.param_groups(lr))))
    return out
