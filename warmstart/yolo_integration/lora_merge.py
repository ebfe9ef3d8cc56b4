"""Checkpoints that plain Ultralytics can load, and LoRA adapters that survive resume.

Ultralytics pickles the whole EMA model object into ``last.pt`` / ``best.pt``. A model with peft layers or our
BatchNorm pins inside would need peft and warmstart to unpickle, so every checkpoint gets a *clean copy*: LoRA
merged into the convolutions, pins removed. The adapters themselves go to a small safetensors file next to
``last.pt``; on resume the trainer re-injects LoRA and splits the merged weights back into base + adapter.

The adapters file and ``last.pt`` are two files, so no single write makes both new at once. Each save writes the
epoch's adapters to a pending file (epoch in its header) *before* ``last.pt`` and renames it to the adapters file
*after*: a kill at any point leaves one of the two files holding the adapters of the epoch that ``last.pt`` holds,
and :func:`adapters_file_for` picks that one.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch import nn

from .._optional import require

require("ultralytics")

from ..core import clear_bn_policy, has_lora, merge_lora  # noqa: E402
from ..core.checkpoints import read_weights, save_weights  # noqa: E402

ADAPTER_FILE = "last_lora.safetensors"
PENDING_ADAPTER_FILE = ".last_lora.pending.safetensors"  # this epoch's adapters until its last.pt is in place


def clean_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with LoRA merged and no warmstart objects inside: safe to pickle for anyone.

    Example:
        >>> import torch.nn as nn
        >>> from warmstart.core import set_bn_policy
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)); set_bn_policy(m, "eval")
        >>> "train" in clean_copy(m)[1].__dict__
        False
    """
    out = copy.deepcopy(model)
    clear_bn_policy(out)
    if "peft" in sys.modules and has_lora(out):  # no peft imported -> no adapters (and no slow peft import)
        out = merge_lora(out)
    return out


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``model`` (keys as in its ``state_dict``), float32 and contiguous."""
    return {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items() if ".lora_" in k}


def save_adapters(model: nn.Module, path: str | Path, epoch: int | None = None) -> Path:
    """Write ``model``'s LoRA tensors to ``path`` (safetensors, atomic: a kill mid-save keeps the old file), with
    the ``epoch`` whose ``last.pt`` they belong to in the header."""
    return save_weights(adapter_state(model), path, metadata=None if epoch is None else {"epoch": str(epoch)})


def saved_epoch(path: str | Path) -> int | None:
    """The epoch an adapters file was saved at (``None``: no epoch in its header, or not readable).

    Example:
        >>> import tempfile, torch
        >>> path = save_adapters(nn.Module(), Path(tempfile.mkdtemp()) / "a.safetensors", epoch=3)
        >>> saved_epoch(path), saved_epoch(path.with_name("missing.safetensors"))
        (3, None)
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            value = (handle.metadata() or {}).get("epoch")
    except Exception:  # missing or damaged: restore_adapters names the problem when it reads the file
        return None
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def adapters_file_for(folder: str | Path, epoch: int | None) -> Path:
    """The adapters file in ``folder`` that belongs to a ``last.pt`` of ``epoch``.

    The pending file when it was saved at ``epoch`` (a kill came after ``last.pt`` was replaced and before the
    rename), else the adapters file; a mismatch is reported by :func:`restore_adapters`.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = save_adapters(nn.Module(), folder / ADAPTER_FILE, epoch=1)
        >>> _ = save_adapters(nn.Module(), folder / PENDING_ADAPTER_FILE, epoch=2)  # killed before last.pt
        >>> adapters_file_for(folder, 1).name, adapters_file_for(folder, 2).name
        ('last_lora.safetensors', '.last_lora.pending.safetensors')
    """
    folder = Path(folder)
    pending = folder / PENDING_ADAPTER_FILE
    if epoch is not None and pending.is_file() and saved_epoch(pending) == epoch:
        return pending
    return folder / ADAPTER_FILE


@torch.no_grad()
def restore_adapters(model: nn.Module, path: str | Path, epoch: int | None = None) -> nn.Module:
    """Load saved adapters into a freshly LoRA-injected ``model`` whose base weights hold the *merged* weights.

    Subtracting each adapter's delta from its base layer gives back base + adapter with the same outputs as the
    merged checkpoint, so resume continues the same LoRA run (same trainable tensors, same optimizer state).
    ``epoch``: the checkpoint's epoch; adapters saved at another epoch are refused (files written before the
    epoch was recorded carry none and are taken as they are).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot resume a LoRA run: the adapter file {path} is missing (it is written next to "
                         "last.pt at every save); start a new run instead")
    try:
        state = read_weights(path)  # a truncated or foreign file: a ValueError naming it and what is wrong
    except ValueError as err:
        raise ValueError(f"cannot resume a LoRA run: {err} Start a new run, or resume from a checkpoint whose "
                         "adapter file is intact.") from None
    found = saved_epoch(path)
    if epoch is not None and found is not None and found != epoch:
        raise ValueError(f"cannot resume a LoRA run: the adapter file {path} is from epoch {found}, but the "
                         f"checkpoint is from epoch {epoch}; start a new run instead")
    own = model.state_dict()
    missing = sorted(k for k in own if ".lora_" in k and k not in state)
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise ValueError(f"adapter file {path} does not match this model's LoRA layers "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was the run started with other "
                         "lora options?")
    for key, value in state.items():
        own[key].copy_(value)
    for _, layer in model.named_modules():
        if isinstance(layer, BaseTunerLayer) and hasattr(layer, "get_delta_weight"):
            base = layer.get_base_layer()
            for adapter in layer.active_adapters:
                base.weight.sub_(layer.get_delta_weight(adapter).to(base.weight.dtype))
    return model
