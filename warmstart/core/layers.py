"""Map a model to ordered layer groups, from input (stem) to output (head).

Every front end needs the same answer to "what are this model's layers, in depth order?": freezing
counts groups from the top, layer-wise LR decay scales by distance from the head. We answer it once here,
from a declarative registry of layer maps (:mod:`.layer_registry`, timm's ``group_matcher`` idea: ordered
regexes per family, :mod:`.layer_families` for the built-in ones), without importing any framework: families
are recognised by class and module names. Wrappers (peft, torch.compile, DDP, the Ultralytics ``YOLO`` object)
are unwrapped first and keep their inner model's group names; a model no family claims is split into its
top-level children, each child of a known family expanding into that family's groups.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from .layer_families import BUILTIN_MAPS, has_params
from .layer_registry import (
    ROLES,
    LayerGroup,
    LayerRule,
    register_layer_map,
    unregister_layer_map,
    user_layer_maps,
)

__all__ = ["ROLES", "LayerGroup", "LayerRule", "group_names", "layer_family", "layer_groups", "register_layer_map",
           "unregister_layer_map"]


def layer_groups(model: nn.Module, patterns: Sequence[str] | None = None) -> list[LayerGroup]:
    """Return ``model``'s parameters as ordered groups from input to output; the last is the head.

    Every parameter is in exactly one group. ``patterns`` overrides detection with an ordered list of
    regexes (one per group, input to output; a parameter goes to the first pattern it matches). The last
    group always has role ``"head"``: a headless model (a feature extractor) keeps its last block's *name*,
    but that block is the head by position, the group that head-first freezing and layer decay start from.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> [(g.name, g.role) for g in layer_groups(m)]
        [('0', 'body'), ('2', 'head')]
        >>> [g.name for g in layer_groups(m, patterns=[r"^0\\.", r"^2\\."])]
        ['^0\\\\.', '^2\\\\.']
    """
    if patterns is not None:
        return _groups_from_patterns(model, patterns)
    groups = [g for g in _groups(model) if g.param_names]
    if groups and not any(g.role == "head" for g in groups):
        groups[-1].role = "head"
    return groups


def group_names(groups: Sequence[LayerGroup]) -> list[str]:
    """Names of ``groups`` in order, for error messages and schedules.

    Example:
        >>> group_names([LayerGroup("stem", "stem"), LayerGroup("head", "head")])
        ['stem', 'head']
    """
    return [g.name for g in groups]


def layer_family(model: nn.Module) -> str:
    """The layer map ``model`` is grouped by (after unwrapping wrappers): a registered name, or ``"generic"``.

    Example:
        >>> import torchvision
        >>> layer_family(torchvision.models.resnet18()), layer_family(torchvision.models.regnet_x_400mf())
        ('torchvision', 'torchvision')
    """
    while (inner := _unwrap(model)) is not None:
        model = inner[0]
    found = _find_map(model)
    return found.name if found is not None else "generic"


# ---------------------------------------------------------------------------------------------- override


def _groups_from_patterns(model: nn.Module, patterns: Sequence[str]) -> list[LayerGroup]:
    if not patterns:
        raise ValueError("layer_patterns must be a non-empty list of regexes, one per group (input to output).")
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as err:
            raise ValueError(f"layer pattern {p!r} is not a valid regex: {err}") from err
    groups = [LayerGroup(p, "body") for p in patterns]
    unassigned = []
    for name, _ in model.named_parameters():
        for i, rx in enumerate(compiled):
            if rx.search(name):
                groups[i].param_names.append(name)
                break
        else:
            unassigned.append(name)
    if unassigned:
        raise ValueError(
            f"layer_patterns leave {len(unassigned)} parameter(s) unassigned, e.g. {unassigned[:3]}; "
            "every parameter must match one pattern (add a catch-all like '.*' as the last pattern)."
        )
    empty = [g.name for g in groups if not g.param_names]
    if empty:
        raise ValueError(f"layer pattern(s) {empty} match no parameter; parameters look like "
                         f"{[n for n, _ in list(model.named_parameters())[:3]]}.")
    groups[-1].role = "head"
    return groups


# ---------------------------------------------------------------------------------------------- dispatch

# Transparent wrappers and the attribute holding the real model: torch.compile, (Distributed)DataParallel.
_TORCH_WRAPPERS = {"OptimizedModule": "_orig_mod", "DistributedDataParallel": "module", "DataParallel": "module"}


def _unwrap(module: nn.Module) -> tuple[nn.Module, str] | None:
    """(inner model, attribute path) for a wrapper whose groups are its inner model's, else None."""
    cls = type(module)
    names = {c.__name__ for c in cls.__mro__}
    if cls.__name__ in _TORCH_WRAPPERS and cls.__module__.startswith("torch."):
        attr = _TORCH_WRAPPERS[cls.__name__]
        return getattr(module, attr), attr
    if "PeftModel" in names:
        return module.base_model, "base_model"
    if "BaseTuner" in names or any(c.__module__ == "ultralytics.engine.model" for c in cls.__mro__):
        return module.model, "model"  # a peft tuner / the Ultralytics YOLO object
    return None


def _find_map(model: nn.Module):
    for layer_map in (*user_layer_maps(), *BUILTIN_MAPS):
        if layer_map.detect(model):
            return layer_map
    return None


def _groups(model: nn.Module) -> list[LayerGroup]:
    """Groups with names relative to ``model``; the head is not yet fixed by position."""
    inner = _unwrap(model)
    if inner is not None:
        # Wrappers keep their inner model's group names; only the parameter names gain the wrapper's path.
        return _prefixed(_groups(inner[0]), inner[1] + ".", rename=False)
    found = _find_map(model)
    if found is not None:
        groups = found.build(model)
        if groups is not None:
            return groups
    return _generic(model)


def _known(module: nn.Module) -> bool:
    return _unwrap(module) is not None or _find_map(module) is not None


def _prefixed(groups: list[LayerGroup], prefix: str, rename: bool) -> list[LayerGroup]:
    return [LayerGroup(prefix + g.name if rename else g.name, g.role, [prefix + n for n in g.param_names],
                       [prefix + m for m in g.module_names]) for g in groups]


def _generic(model: nn.Module, prefix: str = "") -> list[LayerGroup]:
    """Top-level children in registration order; a child of a known family expands into its own groups."""
    root_params = [n for n, _ in model.named_parameters(recurse=False)]
    children = [(n, c) for n, c in model.named_children() if has_params(c)]
    if not root_params and len(children) == 1 and not _known(children[0][1]):
        # A thin wrapper (e.g. a LightningModule holding one nn.Sequential): its child is the real model.
        name, child = children[0]
        if len([c for c in child.children() if has_params(c)]) > 1:
            return _generic(child, f"{prefix}{name}.")
    groups = []
    if root_params:
        # Root-level tensors (cls tokens, scales) are input-side in practice: they form the first group.
        groups.append(LayerGroup(prefix.rstrip(".") or "root", "stem", [prefix + n for n in root_params]))
    for i, (name, child) in enumerate(children):
        last = i == len(children) - 1
        path = f"{prefix}{name}"
        if not _known(child):
            params = [f"{path}.{n}" for n, _ in child.named_parameters()]
            groups.append(LayerGroup(path, "head" if last else "body", params, [path]))
            continue
        for g in _prefixed(_groups(child), path + ".", rename=True):
            if g.role == "head" and not last:  # a backbone's own classifier is not this model's head
                g.role = "body"
            groups.append(g)
    return groups
