"""Optimizer param groups with an explicit learning rate per layer group (discriminative LR / layer decay).

Each group carries its real ``lr`` (so any torch, Lightning, HF or Ultralytics scheduler scales it, keeping
the ratios), plus ``lr_scale``, ``name`` and ``param_names`` for logging and resume. All parameters are
included, frozen ones too, so unfreezing later never needs a new group (ARCHITECTURE.md rule 2).

Note: timm's own schedulers multiply ``lr`` by a group's ``lr_scale`` a second time. With a timm scheduler,
pass ``scale_key="warmstart_lr_scale"`` so the scale is recorded under a key timm does not read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from .layers import LayerGroup, group_names, layer_groups
from .validation import check_finite_positive, check_has_parameters, check_non_negative, check_range

# Tensors that should never be weight-decayed: decaying positional/class embeddings or norm scales
# towards zero hurts transfer (standard practice in BERT, ViT and timm recipes).
_NO_DECAY_NAMES = ("pos_embed", "position_embedding", "pos_embedding", "cls_token", "class_token",
                   "dist_token", "reg_token", "relative_position_bias_table", "absolute_pos_embed")


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """True for biases, 1-d parameters (norm weights) and position/class embeddings.

    Example:
        >>> import torch
        >>> is_no_decay("fc.bias", torch.nn.Parameter(torch.zeros(3))), is_no_decay("fc.weight",
        ...     torch.nn.Parameter(torch.zeros(3, 3)))
        (True, False)
    """
    return param.ndim <= 1 or name.endswith(".bias") or any(k in name for k in _NO_DECAY_NAMES)


def check_lr_options(*, lr: Any = None, layer_decay: Any = None, group_lrs: Any = None,
                     backbone_lr_ratio: Any = None, weight_decay: Any = None) -> None:
    """Raise ``ValueError`` for a bad number among :func:`param_groups`' options (``None`` = not given).

    Needs no model, so front ends call it in their constructors: a NaN fails where the user wrote it.

    Example:
        >>> check_lr_options(lr=1e-3, layer_decay=0.8, weight_decay=0.05)
        >>> check_lr_options(group_lrs={"head": float("inf")})
        Traceback (most recent call last):
        ...
        ValueError: group_lrs['head'] must be >= 0 and finite, got inf
    """
    if lr is not None:
        check_finite_positive("lr", lr)
    if layer_decay is not None:
        # 0 would give every non-head group lr 0; above 1 would train the stem faster than the head.
        check_range("layer_decay", layer_decay, 0, 1, low_open=True, hint="0.65-0.9 is typical")
    if backbone_lr_ratio is not None:
        check_non_negative("backbone_lr_ratio", backbone_lr_ratio)
    if weight_decay is not None:
        check_non_negative("weight_decay", weight_decay)
    if group_lrs is not None:
        if not isinstance(group_lrs, Mapping):
            raise ValueError(f"group_lrs must be a dict {{group name or regex: lr}}, got {group_lrs!r}")
        for key, value in group_lrs.items():
            check_non_negative(f"group_lrs[{key!r}]", value)  # 0 is allowed: it freezes a group by lr


def group_scales(groups: Sequence[LayerGroup], lr: float, *, layer_decay: float | None = None,
                 group_lrs: dict[str, float] | None = None,
                 backbone_lr_ratio: float | None = None) -> list[float]:
    """The lr multiplier of each layer group (head = 1 unless ``group_lrs`` says otherwise).

    Example:
        >>> gs = [LayerGroup("a", "stem"), LayerGroup("b", "body"), LayerGroup("c", "head")]
        >>> group_scales(gs, 1.0, layer_decay=0.5)
        [0.25, 0.5, 1.0]
    """
    given = [x is not None for x in (layer_decay, group_lrs, backbone_lr_ratio)]
    if sum(given) > 1:
        raise ValueError("pass only one of layer_decay, group_lrs, backbone_lr_ratio")
    check_finite_positive("lr", lr)  # required here: None is not "not given"
    check_lr_options(layer_decay=layer_decay, group_lrs=group_lrs, backbone_lr_ratio=backbone_lr_ratio)
    n = len(groups)
    if layer_decay is not None:
        return [layer_decay ** (n - 1 - i) for i in range(n)]
    if backbone_lr_ratio is not None:
        return [1.0 if g.role == "head" else backbone_lr_ratio for g in groups]
    if group_lrs is not None:
        return _scales_from_group_lrs(groups, lr, group_lrs)
    return [1.0] * n


def _scales_from_group_lrs(groups: Sequence[LayerGroup], lr: float, group_lrs: dict[str, float]) -> list[float]:
    names = group_names(groups)
    scales = [1.0] * len(groups)
    for key, value in group_lrs.items():
        if key in names:
            hits = [names.index(key)]
        else:
            try:
                rx = re.compile(key)
            except re.error as err:
                raise ValueError(f"group_lrs key {key!r} is neither a group name nor a valid regex: {err}") from err
            hits = [i for i, nm in enumerate(names) if rx.fullmatch(nm)]
        if not hits:
            raise ValueError(f"group_lrs key {key!r} matches no layer group; valid groups are {names}")
        for i in hits:
            scales[i] = value / lr
    return scales


def param_groups(model: nn.Module, lr: float, *, layer_decay: float | None = None,
                 group_lrs: dict[str, float] | None = None, backbone_lr_ratio: float | None = None,
                 weight_decay: float = 0.0, layer_patterns: Sequence[str] | None = None,
                 groups: Sequence[LayerGroup] | None = None,
                 no_decay: Callable[[str, nn.Parameter], bool] = is_no_decay,
                 scale_key: str = "lr_scale") -> list[dict]:
    """Param groups holding **all** of ``model``'s parameters with an explicit lr per layer group.

    ``lr * layer_decay ** distance_from_head``, or ``group_lrs`` (group name or regex -> lr; others get ``lr``),
    or ``backbone_lr_ratio`` (every non-head group gets ``lr * ratio``). Groups are named
    ``"<layer-group>/decay"`` and ``"<layer-group>/no_decay"``.

    Example:
        >>> import torch, torchvision
        >>> m = torchvision.models.resnet18(num_classes=3)
        >>> opt = torch.optim.AdamW(param_groups(m, 1e-3, layer_decay=0.5, weight_decay=0.05))
        >>> [(g["name"], g["lr"]) for g in opt.param_groups][-2:]
        [('head/decay', 0.001), ('head/no_decay', 0.001)]
    """
    # Checked before the layer map is built: an empty model would otherwise give [] and a NaN lr NaN weights.
    check_has_parameters(model, "param_groups")
    check_finite_positive("lr", lr)
    check_lr_options(layer_decay=layer_decay, group_lrs=group_lrs, backbone_lr_ratio=backbone_lr_ratio,
                     weight_decay=weight_decay)
    groups = list(groups) if groups is not None else layer_groups(model, layer_patterns)
    scales = group_scales(groups, lr, layer_decay=layer_decay, group_lrs=group_lrs,
                          backbone_lr_ratio=backbone_lr_ratio)
    params = dict(model.named_parameters())
    grouped = [n for g in groups for n in g.param_names]
    missing, unknown = set(params) - set(grouped), set(grouped) - set(params)
    if missing or unknown or len(grouped) != len(set(grouped)):
        # A parameter left out of the optimizer would silently never train (ARCHITECTURE.md rule 2).
        raise ValueError(f"`groups` must hold every parameter of the model exactly once; missing "
                         f"{sorted(missing)[:3]}, unknown {sorted(unknown)[:3]}. Build them with layer_groups(model).")
    out = []
    for group, scale in zip(groups, scales):
        for kind in ("decay", "no_decay"):
            names = [n for n in group.param_names if (kind == "no_decay") == no_decay(n, params[n])]
            if not names:
                continue
            out.append({
                "params": [params[n] for n in names],
                "param_names": names,
                "lr": lr * scale,
                scale_key: scale,
                "weight_decay": weight_decay if kind == "decay" else 0.0,
                "name": f"{group.name}/{kind}",
            })
    return out


def group_lr_table(optimizer) -> dict[str, float]:
    """``{group name: current lr}`` of an optimizer built from :func:`param_groups`, for logging and tests.

    Example:
        >>> import torch
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> group_lr_table(torch.optim.SGD(param_groups(m, 0.1, layer_decay=0.5), lr=0.1))
        {'0/decay': 0.05, '0/no_decay': 0.05, '1/decay': 0.1, '1/no_decay': 0.1}
    """
    return {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
