"""LoRA through ``peft``: target discovery, in-place injection, merging back to a plain model.

peft does the adapter math; what we add is choosing targets from the model's layer map (attention/MLP
linears for transformers, ``groups == 1`` convolutions for CNNs, never the task head) and keeping the
model's own class, so Lightning modules, HF models and Ultralytics models keep working unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._optional import require
from .layers import layer_groups
from .validation import check_finite_positive, check_has_parameters, check_positive_int, check_range

Targets = str | Sequence[str]


def check_lora_options(r: Any, alpha: Any, dropout: Any) -> None:
    """Raise ``ValueError`` for a LoRA setting that cannot train; needs no model, so front ends call it early.

    ``alpha`` must be > 0: the adapter output is scaled by ``alpha / r``, so ``alpha=0`` gives the adapters no
    gradient and they never move (a silent no-op fine-tune).

    Example:
        >>> check_lora_options(r=8, alpha=16, dropout=0.1)
        >>> check_lora_options(r=8, alpha=0, dropout=0.1)
        Traceback (most recent call last):
        ...
        ValueError: LoRA alpha must be > 0 and finite, got 0
    """
    check_positive_int("LoRA rank r", r)
    check_finite_positive("LoRA alpha", alpha)
    check_range("LoRA dropout", dropout, 0, 1, high_open=True)  # p=1 drops every input: adapters see zeros


def _head_modules(model: nn.Module) -> list[str]:
    """Module names that make up the head group (never adapted; kept fully trainable)."""
    check_has_parameters(model, "LoRA")  # else layer_groups(model)[-1] is an IndexError
    head = layer_groups(model)[-1]
    real = [m for m in head.module_names if m and _is_module(model, m)]
    if real and all(any(_under(n, real) for n in [p]) for p in head.param_names):
        return real
    return sorted({n.rsplit(".", 1)[0] for n in head.param_names if "." in n})


def _is_module(model: nn.Module, name: str) -> bool:
    try:
        return isinstance(model.get_submodule(name), nn.Module)
    except AttributeError:
        return False


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _candidates(model: nn.Module, head: Sequence[str]) -> tuple[list[str], list[str]]:
    """(linear, conv) module names outside the head that LoRA can adapt."""
    inside_mha = {f"{n}.{c}" if n else c for n, m in model.named_modules()
                  if isinstance(m, nn.MultiheadAttention) for c, _ in m.named_children()}
    linear, conv = [], []
    for name, m in model.named_modules():
        if not name or _under(name, head) or name in inside_mha:
            continue
        if isinstance(m, nn.Linear):
            linear.append(name)
        elif isinstance(m, nn.Conv2d) and m.groups == 1:
            conv.append(name)
    return linear, conv


def find_lora_targets(model: nn.Module, targets: Targets = "auto") -> list[str]:
    """Qualified names of the modules LoRA will adapt.

    ``"auto"``: the ``nn.Linear`` layers outside the head when the model has any (transformers: attention and
    MLP), else the ``nn.Conv2d`` layers with ``groups == 1`` (CNNs). A list names modules (exact name or a
    ``.suffix`` such as ``"query"``); a string is a regex over module names.

    Example:
        >>> import torchvision
        >>> names = find_lora_targets(torchvision.models.resnet18(num_classes=3))
        >>> names[0], "fc" in names
        ('conv1', False)
    """
    head = _head_modules(model)
    linear, conv = _candidates(model, head)
    candidates = linear + conv
    if targets == "auto":
        chosen = linear or conv
        if not chosen:
            raise ValueError("found no nn.Linear or nn.Conv2d (groups=1) outside the head to adapt; "
                             "pass targets=[...] naming the modules to adapt")
        return chosen
    if isinstance(targets, str):
        try:
            rx = re.compile(targets)
        except re.error as err:
            raise ValueError(f"LoRA targets regex {targets!r} is invalid: {err}") from err
        chosen = [n for n in candidates if rx.fullmatch(n) or rx.search(n)]
    else:
        wanted = list(targets)
        chosen = [n for n in candidates if any(n == t or n.endswith("." + t) for t in wanted)]
        unmatched = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in candidates)]
        if unmatched and chosen:
            raise ValueError(f"LoRA targets {unmatched} match no adaptable module; candidates look like "
                             f"{candidates[:8]}")
    if not chosen:
        raise ValueError(f"LoRA targets {targets!r} match no nn.Linear / nn.Conv2d outside the head; "
                         f"candidates look like {candidates[:8]}")
    return chosen


def lora_config(model: nn.Module, r: int = 8, alpha: int = 16, targets: Targets = "auto",
                dropout: float = 0.0, head: Sequence[str] | None = None, **kwargs):
    """A ``peft.LoraConfig`` for ``model``: explicit target modules, the head in ``modules_to_save``.

    Use it with ``peft.get_peft_model`` when you want a ``PeftModel`` (save_pretrained / from_pretrained).

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> cfg = lora_config(m, r=2)
        >>> sorted(cfg.target_modules), cfg.modules_to_save
        (['0', '2'], ['3'])
    """
    check_lora_options(r, alpha, dropout)
    peft = require("peft", "hf")
    head = list(head) if head is not None else _head_modules(model)
    return peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                           target_modules=_exact_targets(model, find_lora_targets(model, targets)),
                           modules_to_save=head or None, **kwargs)


def _exact_targets(model: nn.Module, chosen: Sequence[str]) -> list[str] | str:
    """``chosen`` in a form peft matches exactly.

    peft reads a list entry as a name *suffix*: ``["conv1"]`` (a ResNet's stem) also adapts every
    ``layerN.M.conv1``. When a list would reach modules we did not choose, pass an anchored regex instead.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
        >>> _exact_targets(m, ["1.0"]), _exact_targets(m, ["0"])
        (['1.0'], '^(?:0)$')
    """
    wanted = set(chosen)

    def reached(name: str) -> bool:  # peft's list rule: exact name or a ".suffix" of it
        parts = name.split(".")
        return any(".".join(parts[k:]) in wanted for k in range(len(parts)))

    extra = [n for n, _ in model.named_modules() if n not in wanted and reached(n)]
    if not extra:
        return list(chosen)
    return "^(?:" + "|".join(re.escape(c) for c in chosen) + ")$"


def apply_lora(model: nn.Module, r: int = 8, alpha: int = 16, targets: Targets = "auto",
               dropout: float = 0.0, head: Sequence[str] | None = None) -> nn.Module:
    """Inject LoRA adapters into ``model`` in place (same object, same class); returns it.

    Afterwards only the adapters, the head and BatchNorm layers are trainable.

    Example:
        >>> import torchvision
        >>> m = apply_lora(torchvision.models.resnet18(num_classes=3), r=4)
        >>> trainable_summary(m)["percent"] < 20
        True
    """
    check_lora_options(r, alpha, dropout)
    peft = require("peft", "hf")
    head = list(head) if head is not None else _head_modules(model)
    config = lora_config(model, r=r, alpha=alpha, targets=targets, dropout=dropout, head=head)
    # modules_to_save would wrap the head in a peft class and change its keys: we keep it trainable instead.
    config.modules_to_save = None
    peft.inject_adapter_in_model(config, model)
    keep_trainable = _batchnorm_param_names(model)
    for name, p in model.named_parameters():
        module = name.rsplit(".", 1)[0] if "." in name else ""
        if _under(module, head) or name in keep_trainable:
            p.requires_grad_(True)
    return model


def _batchnorm_param_names(model: nn.Module) -> set[str]:
    return {f"{m}.{p}" if m else p for m, mod in model.named_modules()
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) for p, _ in mod.named_parameters(recurse=False)}


def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    tuners = require("peft.tuners.tuners_utils", "hf")
    return [(n, m) for n, m in model.named_modules() if isinstance(m, tuners.BaseTunerLayer)]


def has_lora(model: nn.Module) -> bool:
    """True when ``model`` contains peft adapter layers.

    Example:
        >>> import torch.nn as nn
        >>> has_lora(nn.Linear(2, 2))
        False
    """
    try:
        return bool(_lora_layers(model))
    except ImportError:
        return False


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into their base layers and remove every peft class; returns the plain model.

    Accepts a model adapted in place by :func:`apply_lora` or a ``peft.PeftModel``.

    Example:
        >>> import torch, torchvision
        >>> m = apply_lora(torchvision.models.resnet18(num_classes=3).eval(), r=4)
        >>> plain = merge_lora(m)
        >>> any("lora" in n for n, _ in plain.named_parameters())
        False
    """
    if hasattr(model, "merge_and_unload") and callable(model.merge_and_unload):
        return model.merge_and_unload()
    for name, layer in _lora_layers(model):
        if not hasattr(layer, "get_base_layer"):
            continue
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = layer.get_base_layer()
        setattr(parent, child, base)
    # peft's tuner leaves its config dict on the model; a "plain" model must pickle without peft installed.
    model.__dict__.pop("peft_config", None)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What to save for an adapted model: LoRA weights, the head and BatchNorm (params and running stats).

    Example:
        >>> import torchvision
        >>> sd = lora_state_dict(apply_lora(torchvision.models.resnet18(num_classes=3), r=2))
        >>> any("lora_A" in k for k in sd), "fc.weight" in sd, "bn1.running_mean" in sd
        (True, True, True)
    """
    head = _head_modules(model)
    bn_modules = {m for m, mod in model.named_modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)}
    keep = {}
    for key, value in model.state_dict().items():
        module = key.rsplit(".", 1)[0] if "." in key else ""
        if "lora_" in key or _under(module, head) or module in bn_modules:
            keep[key] = value.detach().clone()
    return keep


def trainable_summary(model: nn.Module) -> dict:
    """Trainable vs total parameter counts.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Linear(10, 2); _ = m.bias.requires_grad_(False)
        >>> trainable_summary(m)
        {'trainable': 20, 'total': 22, 'percent': 90.91}
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "percent": round(100.0 * trainable / max(total, 1), 2)}
