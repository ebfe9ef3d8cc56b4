"""Map a model to ordered layer groups, from input (stem) to output (head).

Every front end needs the same answer to "what are this model's layers, in depth order?": freezing
counts groups from the top, layer-wise LR decay scales by distance from the head. We answer it once here,
per model family, without importing any framework: families are recognised by class and module names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

ROLES = ("stem", "body", "backbone", "neck", "head")


@dataclass
class LayerGroup:
    """One depth level of a model: a name, a role and the parameters (by qualified name) in it.

    Example:
        >>> g = LayerGroup("head", "head", ["fc.weight", "fc.bias"], ["fc"])
        >>> g.role, len(g.param_names)
        ('head', 2)
    """

    name: str
    role: str
    param_names: list[str] = field(default_factory=list)
    module_names: list[str] = field(default_factory=list)


# A "plan" is a list of (group name, role, [module prefixes]) relative to a root module; it is turned into
# LayerGroups by assigning each parameter to the plan entry whose prefix it starts with.
Plan = list[tuple[str, str, list[str]]]


def layer_groups(model: nn.Module, patterns: Sequence[str] | None = None) -> list[LayerGroup]:
    """Return ``model``'s parameters as ordered groups from input to output; the last is the head.

    Every parameter is in exactly one group. ``patterns`` overrides detection with an ordered list of
    regexes (one per group, input to output; a parameter goes to the first pattern it matches).

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
    plan = _plan(model, "")
    groups = _assign(model, plan)
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


# ---------------------------------------------------------------------------------------------- families


def _mro_names(module: nn.Module) -> set[str]:
    return {c.__name__ for c in type(module).__mro__}


# Transparent wrappers and the attribute holding the real model: torch.compile, (Distributed)DataParallel.
_WRAPPERS = {"OptimizedModule": "_orig_mod", "DistributedDataParallel": "module", "DataParallel": "module"}


def _family(module: nn.Module) -> str:
    mod = type(module).__module__
    names = _mro_names(module)
    if type(module).__name__ in _WRAPPERS and mod.startswith("torch."):
        return "torch_wrapper"
    if "PeftModel" in names:
        return "peft_model"
    if "BaseTuner" in names:
        return "peft_tuner"
    if any(c.__module__ == "ultralytics.engine.model" for c in type(module).__mro__):
        return "ultralytics_wrapper"
    if mod.startswith("ultralytics.") and isinstance(getattr(module, "model", None), nn.Sequential):
        return "ultralytics"
    if mod.startswith("timm.") and hasattr(module, "group_matcher"):
        return "timm"
    if mod.startswith("torchvision.models"):
        return "torchvision"
    if "PreTrainedModel" in names:
        return "hf"
    return "generic"


def _plan(model: nn.Module, prefix: str) -> Plan:
    family = _family(model)
    # Wrappers (peft, the Ultralytics YOLO object, torch.compile, DDP) keep their inner model's group names.
    # The inner plan is built unprefixed so a generic inner model's group names do not pick up the wrapper path.
    if family == "torch_wrapper":
        attr = _WRAPPERS[type(model).__name__]
        return _prefixed(_plan(getattr(model, attr), ""), f"{prefix}{attr}.")
    if family == "peft_model":
        return _prefixed(_plan(model.base_model, ""), f"{prefix}base_model.")
    if family in ("peft_tuner", "ultralytics_wrapper"):
        return _prefixed(_plan(model.model, ""), f"{prefix}model.")
    if family == "ultralytics":
        return _prefixed(_ultralytics_plan(model), prefix)
    if family == "timm":
        return _prefixed(_timm_plan(model), prefix)
    if family == "torchvision":
        plan = _torchvision_plan(model)
        if plan is not None:
            return _prefixed(plan, prefix)
    if family == "hf":
        return _prefixed(_hf_plan(model), prefix)
    return _generic_plan(model, prefix)


def _prefixed(plan: Plan, prefix: str) -> Plan:
    return [(name, role, [prefix + m if m else prefix.rstrip(".") for m in mods]) for name, role, mods in plan]


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _generic_plan(model: nn.Module, prefix: str) -> Plan:
    """Top-level children in registration order; a child of a known family expands into its own groups."""
    root_params = [n for n, _ in model.named_parameters(recurse=False)]
    children = [(n, c) for n, c in model.named_children() if _has_params(c)]
    if not root_params and len(children) == 1 and _family(children[0][1]) == "generic":
        # A thin wrapper (e.g. a LightningModule holding one nn.Sequential): its child is the real model.
        name, child = children[0]
        if len([c for c in child.children() if _has_params(c)]) > 1:
            return _generic_plan(child, f"{prefix}{name}.")
    plan: Plan = []
    if root_params:
        # Root-level tensors (cls tokens, scales) are input-side in practice: they form the first group.
        plan.append((prefix.rstrip(".") or "root", "stem", [prefix + n for n in root_params]))
    for i, (name, child) in enumerate(children):
        last = i == len(children) - 1
        if _family(child) == "generic":
            plan.append((f"{prefix}{name}", "head" if last else "body", [f"{prefix}{name}"]))
            continue
        for sub_name, role, mods in _plan(child, f"{prefix}{name}."):
            if role == "head" and not last:  # a backbone's own classifier is not this model's head
                role = "body"
            plan.append((f"{prefix}{name}.{sub_name}", role, mods))
    return plan


def _torchvision_plan(model: nn.Module) -> Plan | None:
    cls = type(model).__name__
    if cls == "ResNet":
        return [("stem", "stem", ["conv1", "bn1"])] + [
            (f"layer{i}", "body", [f"layer{i}"]) for i in range(1, 5)
        ] + [("head", "head", ["fc"])]
    if cls == "VisionTransformer":
        layers = [n for n, _ in model.encoder.layers.named_children()]
        return [("stem", "stem", ["conv_proj", "class_token", "encoder.pos_embedding"])] + [
            (f"encoder.layers.{n}", "body", [f"encoder.layers.{n}"]) for n in layers
        ] + [("head", "head", ["encoder.ln", "heads"])]
    if hasattr(model, "features") and isinstance(model.features, nn.Sequential):
        # ConvNeXt, EfficientNet, MobileNet, Swin, VGG, ...: stem + stages in `features`, then a classifier.
        feats = [n for n, c in model.features.named_children() if _has_params(c)]
        head = [n for n, c in model.named_children() if n != "features" and _has_params(c)]
        plan: Plan = [(f"features.{n}", "stem" if i == 0 else "body", [f"features.{n}"]) for i, n in enumerate(feats)]
        return plan + [("head", "head", head)]
    return None


def _timm_plan(model: nn.Module) -> Plan:
    """Use the model's own ``group_matcher`` (its declared depth structure), at block granularity."""
    from timm.models import group_parameters  # timm is already imported: the model is a timm model

    try:
        grouped = group_parameters(model, model.group_matcher(coarse=False))
    except (NotImplementedError, AttributeError, TypeError):
        return _generic_plan(model, "")  # a matcher some timm models declare but do not implement
    plan: Plan = []
    ordered = [list(names) for names in grouped.values()]
    classifier = _timm_classifier_params(model)
    for i, names in enumerate(ordered):
        if i == len(ordered) - 1 and len(ordered) > 1 and classifier & set(names):
            plan.append(("head", "head", names))
        elif i == 0:
            plan.append(("stem", "stem", names))
        else:
            others = [n for j, group in enumerate(ordered) if j != i for n in group]
            plan.append((_group_label(names, others), "body", names))
    return plan


def _timm_classifier_params(model: nn.Module) -> set[str]:
    """Names of the classifier's parameters: with ``num_classes=0`` there are none, and then the last group is
    the last block (the head by position, but not to be *named* "head")."""
    try:
        clf = model.get_classifier()
    except Exception:  # noqa: BLE001 - any failure just means "no known classifier"
        return set()
    modules = clf if isinstance(clf, tuple | list) else (clf,)
    ids = {id(p) for m in modules if isinstance(m, nn.Module) for p in m.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _group_label(names: Sequence[str], others: Sequence[str]) -> str:
    """The shortest module prefixes that hold exactly ``names``, joined by "+" (e.g. "blocks.11+norm").

    A plain common prefix would mislabel groups that share a parent with other groups: timm's ConvNeXt puts
    ``stages.1.downsample`` with ``stages.1.blocks.0``, and calling that group "stages.1" would make
    ``freeze(model, "stages.1")`` look like it froze the whole stage.

    Example:
        >>> _group_label(["blocks.11.w", "norm.w"], ["blocks.10.w", "head.w"])
        'blocks.11+norm'
    """
    taken = {".".join(parts[:k]) for parts in (n.split(".") for n in others) for k in range(1, len(parts) + 1)}
    labels: dict[str, None] = {}
    for name in names:
        parts = name.split(".")
        prefix = name
        for k in range(1, len(parts) + 1):
            if ".".join(parts[:k]) not in taken:
                prefix = ".".join(parts[:k])
                break
        labels[prefix] = None
    return "+".join(labels)


def _hf_plan(model: nn.Module) -> Plan:
    """Embeddings, each transformer/conv stage, then everything after (pooler, final norm, classifier)."""
    layers_prefix = _largest_layer_list(model)
    if layers_prefix is None:
        return _generic_plan(model, "")
    order = [n for n, _ in model.named_parameters()]
    before, after = [], []
    seen_layers = False
    for n in order:
        if n.startswith(layers_prefix + "."):
            seen_layers = True
        elif seen_layers:
            after.append(n)
        else:
            before.append(n)
    plan: Plan = []
    if before:
        plan.append(("embeddings", "stem", before))
    # Children by their real names (a Sequential may name them), so no layer silently falls into the head.
    blocks = model.get_submodule(layers_prefix).named_children()
    plan += [(f"{layers_prefix}.{n}", "body", [f"{layers_prefix}.{n}"]) for n, c in blocks if _has_params(c)]
    if after:
        plan.append(("head", "head", after))
    return plan


def _largest_layer_list(model: nn.Module) -> str | None:
    best, best_size = None, 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList | nn.Sequential) and len(mod) >= 2 and name:
            size = sum(p.numel() for p in mod.parameters())
            # a list of repeated blocks holding most of the model is the depth axis
            if size > best_size:
                best, best_size = name, size
    return best


def _ultralytics_plan(model: nn.Module) -> Plan:
    n_backbone = len(model.yaml.get("backbone", [])) if isinstance(getattr(model, "yaml", None), dict) else 0
    layers = list(model.model.named_children())
    plan: Plan = []
    for idx, (name, layer) in enumerate(layers):
        if not _has_params(layer):
            continue
        if idx == len(layers) - 1:
            role = "head"
        elif idx < n_backbone:
            role = "backbone"
        else:
            role = "neck"
        plan.append((f"model.{name}", role, [f"model.{name}"]))
    return plan


# ---------------------------------------------------------------------------------------------- assignment


def _assign(model: nn.Module, plan: Plan) -> list[LayerGroup]:
    groups = [LayerGroup(name, role, [], list(mods)) for name, role, mods in plan]
    # Longest prefix wins, so "encoder.layers.1" beats "encoder" when both are listed.
    prefixes = sorted(
        ((m, i) for i, (_, _, mods) in enumerate(plan) for m in mods), key=lambda t: len(t[0]), reverse=True
    )
    leftovers = []
    for name, _ in model.named_parameters():
        for pre, i in prefixes:
            if name == pre or name.startswith(pre + "."):
                groups[i].param_names.append(name)
                break
        else:
            leftovers.append(name)
    groups = [g for g in groups if g.param_names]
    if leftovers:
        # Parameters no family rule named (extra heads, adapters at the root) are output-side additions.
        if groups and groups[-1].role == "head":
            groups[-1].param_names.extend(leftovers)
        else:
            groups.append(LayerGroup("head", "head", leftovers, []))
    return groups
