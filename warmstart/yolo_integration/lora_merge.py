"""Checkpoints that plain Ultralytics can load, and LoRA adapters that survive resume.

Ultralytics pickles the whole EMA model object into ``last.pt`` / ``best.pt``. A model with peft layers or our
BatchNorm pins inside would need peft and warmstart to unpickle, so every checkpoint gets a *clean copy*: LoRA
merged into the convolutions, pins removed. The adapters themselves go to a small safetensors file next to
``last.pt``; on resume the trainer re-injects LoRA and splits the merged weights back into base + adapter.
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


def save_adapters(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s LoRA tensors to ``path`` (safetensors, atomic: a kill mid-save keeps the old file)."""
    return save_weights(adapter_state(model), path)


@torch.no_grad()
def restore_adapters(model: nn.Module, path: str | Path) -> nn.Module:
    """Load saved adapters into a freshly LoRA-injected ``model`` whose base weights hold the *merged* weights.

    Subtracting each adapter's delta from its base layer gives back base + adapter with the same outputs as the
    merged checkpoint, so resume continues the same LoRA run (same trainable tensors, same optimizer state).
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
