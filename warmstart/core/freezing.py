"""Freeze and unfreeze layer groups, with an explicit BatchNorm policy and a gradual-unfreezing schedule.

Freezing only toggles ``requires_grad``: parameters stay in the optimizer (ARCHITECTURE.md rule 2), so a front end
never has to add param groups mid-training.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn

from .layers import LayerGroup, group_names, layer_groups
from .validation import check_has_parameters, check_non_negative, check_positive_int, check_range

BN_POLICIES = ("eval", "train")
GroupSelector = int | str | Sequence[int | str] | None


def select_groups(groups: Sequence[LayerGroup], selector: GroupSelector) -> list[int]:
    """Indices of ``groups`` picked by ``selector``.

    ``selector`` is ``"all"``, ``"all_but_head"``, ``None`` (nothing), an int index (negative counts from the
    head), a group name, a regex over group names (full match, used when no group has that exact name), or a
    list of those.

    Example:
        >>> gs = [LayerGroup("stem", "stem"), LayerGroup("layer1", "body"), LayerGroup("head", "head")]
        >>> select_groups(gs, "all_but_head"), select_groups(gs, [-1, "stem"]), select_groups(gs, "layer[0-9]")
        ([0, 1], [0, 2], [1])
    """
    if selector is None:
        return []
    if selector == "all":
        return list(range(len(groups)))
    if selector == "all_but_head":
        return [i for i, g in enumerate(groups) if g.role != "head"]
    if isinstance(selector, int | str):
        items = [selector]
    elif isinstance(selector, Sequence):
        items = list(selector)
    else:
        raise ValueError(f"group selector {selector!r} must be an int index, a group name or regex, or a list "
                         "of those (or 'all', 'all_but_head')")
    names = group_names(groups)
    picked = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError(f"group selector {item!r} must be an int index or a group name")
        if isinstance(item, int):
            if not -len(groups) <= item < len(groups):
                raise ValueError(f"group index {item} is out of range: the model has {len(groups)} groups {names}")
            picked.add(item % len(groups))
        elif item in names:
            picked.add(names.index(item))
        elif item in ("all", "all_but_head"):
            picked.update(select_groups(groups, item))
        else:
            hits = _regex_hits(names, item)
            if not hits:
                raise ValueError(f"unknown layer group {item!r} (no group has that name and, read as a regex, it "
                                 f"matches none); valid groups are {names} (or 'all', 'all_but_head')")
            picked.update(hits)
    return sorted(picked)


def check_freeze_options(groups: GroupSelector = None, pattern: str | None = None, bn: str = "eval") -> None:
    """Raise ``ValueError`` for a selector, regex or BatchNorm policy that no model could accept.

    Needs no model, so front ends call it in their constructors; names that need the model (an unknown
    group, a regex matching nothing) are checked by :func:`freeze` itself.

    Example:
        >>> check_freeze_options("all_but_head", pattern=r"^layer4")
        >>> check_freeze_options(pattern="(")
        Traceback (most recent call last):
        ...
        ValueError: pattern '(' is not a valid regex: ...
    """
    if bn not in BN_POLICIES:
        raise ValueError(f"bn must be one of {BN_POLICIES}, got {bn!r}")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise ValueError(f"pattern must be a regex string over parameter names, got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"pattern {pattern!r} is not a valid regex: {err}") from err
    if groups is None or isinstance(groups, str):
        return
    items = list(groups) if isinstance(groups, Sequence) else [groups]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError(f"group selector {item!r} must be an int index, a group name or regex, or a list of "
                             "those (or 'all', 'all_but_head')")


def _regex_hits(names: Sequence[str], pattern: str) -> list[int]:
    try:
        rx = re.compile(pattern)
    except re.error:
        return []  # not a regex either: the caller reports it as an unknown group name
    return [i for i, n in enumerate(names) if rx.fullmatch(n)]


def _param_names(model: nn.Module, groups: Sequence[LayerGroup], selector: GroupSelector,
                 pattern: str | None) -> list[str]:
    names = [n for i in select_groups(groups, selector) for n in groups[i].param_names]
    if pattern is not None:
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"pattern {pattern!r} is not a valid regex: {err}") from err
        matched = [n for n, _ in model.named_parameters() if rx.search(n)]
        if not matched:
            example = [n for n, _ in list(model.named_parameters())[:3]]
            raise ValueError(f"pattern {pattern!r} matches no parameter; parameter names look like {example}")
        names += matched
    return list(dict.fromkeys(names))


def freeze(model: nn.Module, groups: GroupSelector = "all_but_head", *, pattern: str | None = None,
           bn: str = "eval", layer_patterns: Sequence[str] | None = None) -> list[str]:
    """Set ``requires_grad=False`` on the selected groups (and/or parameters matching ``pattern``).

    ``bn="eval"`` keeps BatchNorm layers whose parameters are all frozen in eval mode every time the model
    re-enters train mode (frozen running statistics, like FrozenBatchNorm); ``bn="train"`` lets them keep
    updating their running statistics. Returns the names of the parameters frozen.

    Example:
        >>> import torchvision
        >>> m = torchvision.models.resnet18(num_classes=3)
        >>> frozen = freeze(m)  # everything but the head
        >>> _ = m.train(); m.bn1.training, m.fc.weight.requires_grad
        (False, True)
    """
    check_freeze_options(groups, pattern, bn)
    check_has_parameters(model, "freeze")  # else it would silently freeze nothing
    if pattern is not None and groups == "all_but_head":
        groups = None  # a pattern alone means "exactly these parameters"
    lg = layer_groups(model, layer_patterns)
    names = set(_param_names(model, lg, groups, pattern))
    for n, p in model.named_parameters():
        if n in names:
            p.requires_grad_(False)
            # A stale (zero, not None) grad would let Adam-style optimizers keep moving the "frozen" weight
            # with their momentum; None makes every torch optimizer skip it.
            p.grad = None
    _apply_bn_policy(model, bn)
    return [n for n, _ in model.named_parameters() if n in names]


def unfreeze(model: nn.Module, groups: GroupSelector = "all", *, pattern: str | None = None,
             layer_patterns: Sequence[str] | None = None) -> list[str]:
    """Set ``requires_grad=True`` on the selected groups; their BatchNorm layers train normally again.

    Example:
        >>> import torchvision
        >>> m = torchvision.models.resnet18(num_classes=3)
        >>> _ = freeze(m)
        >>> _ = unfreeze(m, "layer4")
        >>> m.layer4[0].conv1.weight.requires_grad, m.layer3[0].conv1.weight.requires_grad
        (True, False)
    """
    check_freeze_options(groups, pattern)
    check_has_parameters(model, "unfreeze")
    if pattern is not None and groups == "all":
        groups = None
    lg = layer_groups(model, layer_patterns)
    names = set(_param_names(model, lg, groups, pattern))
    for n, p in model.named_parameters():
        if n in names:
            p.requires_grad_(True)
    policy = "train"
    for bn_mod in _batchnorms(model):
        if _stays_in_eval(bn_mod):
            policy = "eval"
    _apply_bn_policy(model, policy)
    return [n for n, _ in model.named_parameters() if n in names]


def frozen_groups(model: nn.Module, layer_patterns: Sequence[str] | None = None) -> list[str]:
    """Names of the layer groups whose parameters are all frozen.

    Example:
        >>> import torchvision
        >>> m = torchvision.models.resnet18(num_classes=3)
        >>> _ = freeze(m, ["stem", "layer1"])
        >>> frozen_groups(m)
        ['stem', 'layer1']
    """
    check_has_parameters(model, "frozen_groups")
    params = dict(model.named_parameters())
    return [g.name for g in layer_groups(model, layer_patterns)
            if all(not params[n].requires_grad for n in g.param_names)]


# ---------------------------------------------------------------------------------------------- BatchNorm


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _stay_in_eval(bn: nn.Module, mode: bool = True) -> nn.Module:
    # Replaces BatchNorm.train on frozen layers: model.train() recurses into children, and this keeps the
    # running statistics frozen however often the loop toggles modes. Module-level so models still pickle.
    return nn.Module.train(bn, False)


def _stays_in_eval(bn: nn.Module) -> bool:
    train = bn.__dict__.get("train")
    return isinstance(train, functools.partial) and train.func is _stay_in_eval


def _pin_eval(bn: nn.Module) -> None:
    if not _stays_in_eval(bn):
        bn.train = functools.partial(_stay_in_eval, bn)
    nn.Module.train(bn, False)


def _release(bn: nn.Module, mode: bool) -> None:
    if bn.__dict__.pop("train", None) is not None:
        nn.Module.train(bn, mode)


def _bn_params(model: nn.Module, name: str, bn: nn.Module) -> list[nn.Parameter]:
    """The parameters that decide whether ``bn`` is frozen: its own, or for ``affine=False`` (no parameters)
    those of the nearest enclosing module that has any (the conv block it normalises)."""
    params = list(bn.parameters(recurse=False))
    parts = name.split(".")
    while not params and parts:
        parts.pop()
        params = list(model.get_submodule(".".join(parts)).parameters())
    return params


def _apply_bn_policy(model: nn.Module, policy: str) -> None:
    """BatchNorm whose affine parameters are all frozen follows ``policy``; trainable ones are released."""
    for name, bn in model.named_modules():
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        params = _bn_params(model, name, bn)
        frozen = bool(params) and all(not p.requires_grad for p in params)
        if frozen and policy == "eval":
            _pin_eval(bn)
        else:
            _release(bn, model.training)


def set_bn_policy(module: nn.Module, policy: str) -> None:
    """Pin every BatchNorm under ``module`` in eval mode (``"eval"``) or let them train (``"train"``).

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        >>> set_bn_policy(m, "eval"); _ = m.train(); m[1].training
        False
    """
    if policy not in BN_POLICIES:
        raise ValueError(f"BatchNorm policy must be one of {BN_POLICIES}, got {policy!r}")
    for bn in _batchnorms(module):
        if policy == "eval":
            _pin_eval(bn)
        else:
            _release(bn, module.training)


def clear_bn_policy(module: nn.Module) -> None:
    """Remove warmstart's BatchNorm pins, e.g. before pickling a model for a user without warmstart.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.BatchNorm1d(2)); set_bn_policy(m, "eval"); clear_bn_policy(m)
        >>> _ = m.train(); m[0].training
        True
    """
    for bn in _batchnorms(module):
        _release(bn, module.training)


# ---------------------------------------------------------------------------------------------- schedule


@dataclass
class UnfreezeSchedule:
    """Which layer groups are trainable at each epoch (or step: the unit is the caller's).

    Two forms: head only for ``head_epochs``, then one more group from the top every ``every`` epochs
    (up to ``max_groups``); or explicit ``at[i]`` = the epoch at which group ``i`` becomes trainable.
    Pure: the answer depends only on the epoch, so resuming mid-schedule gives the same frozen set.

    Example:
        >>> s = UnfreezeSchedule(num_groups=4, head_epochs=2, every=1)
        >>> [s.trainable_indices(e) for e in range(5)]
        [[3], [3], [2, 3], [1, 2, 3], [0, 1, 2, 3]]
        >>> UnfreezeSchedule(num_groups=3, at=[4, 2, 0]).trainable_indices(2)
        [1, 2]
    """

    num_groups: int
    head_epochs: int = 1
    every: int = 1
    at: list[int] | None = None
    max_groups: int | None = None

    def __post_init__(self) -> None:
        check_positive_int("num_groups", self.num_groups)
        # Epochs may be fractional (the unit is the caller's), but NaN would compare False forever: never unfreeze.
        check_non_negative("head_epochs", self.head_epochs)
        check_range("every", self.every, 1)
        if self.at is not None:
            for i, a in enumerate(self.at):
                check_range(f"at[{i}]", a)
            self.at = [int(a) for a in self.at]
            if len(self.at) != self.num_groups:
                raise ValueError(
                    f"`at` lists {len(self.at)} epochs but the model has {self.num_groups} layer groups; "
                    "give one unfreeze epoch per group (input to output)."
                )
        if self.max_groups is not None:
            check_positive_int("max_groups", self.max_groups)
        if self.max_groups is not None and not 1 <= self.max_groups <= self.num_groups:
            raise ValueError(
                f"max_groups={self.max_groups} must be between 1 and the model's {self.num_groups} layer groups"
            )

    def trainable_count(self, epoch: int) -> int:
        """How many groups, counted from the head, are trainable at ``epoch``."""
        return len(self.trainable_indices(epoch))

    def trainable_indices(self, epoch: int) -> list[int]:
        """Indices (into the model's layer groups) trainable at ``epoch``."""
        if self.at is not None:
            return [i for i, a in enumerate(self.at) if epoch >= a]
        extra = 0 if epoch < self.head_epochs else 1 + (epoch - self.head_epochs) // self.every
        count = min(1 + extra, self.max_groups or self.num_groups)
        return list(range(self.num_groups - count, self.num_groups))

    def final_epoch(self) -> int:
        """First epoch at which the schedule stops changing."""
        if self.at is not None:
            return max(self.at)
        if (self.max_groups or self.num_groups) == 1:
            return 0  # head only, from the start: nothing ever changes
        return self.head_epochs + ((self.max_groups or self.num_groups) - 2) * self.every

    def state_dict(self) -> dict:
        """Everything needed to rebuild the schedule."""
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        unknown = set(state) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown UnfreezeSchedule state keys {sorted(unknown)}; valid keys are "
                             f"{sorted(asdict(self))}")
        for key, value in state.items():
            setattr(self, key, value)
        self.__post_init__()


def apply_schedule(model: nn.Module, schedule: UnfreezeSchedule, epoch: int, *, bn: str = "eval",
                   layer_patterns: Sequence[str] | None = None) -> list[int]:
    """Make exactly the groups ``schedule`` allows at ``epoch`` trainable; returns their indices.

    Example:
        >>> import torchvision
        >>> m = torchvision.models.resnet18(num_classes=3)
        >>> s = UnfreezeSchedule(num_groups=6, head_epochs=1)
        >>> apply_schedule(m, s, epoch=1)
        [4, 5]
    """
    check_has_parameters(model, "apply_schedule")
    groups = layer_groups(model, layer_patterns)
    if len(groups) != schedule.num_groups:
        raise ValueError(
            f"the schedule was built for {schedule.num_groups} layer groups but the model has {len(groups)} "
            f"({group_names(groups)}); build it with UnfreezeSchedule(num_groups={len(groups)}, ...)"
        )
    trainable = schedule.trainable_indices(epoch)
    params = dict(model.named_parameters())
    for i, g in enumerate(groups):
        for n in g.param_names:
            params[n].requires_grad_(i in trainable)
            if i not in trainable:
                params[n].grad = None  # see freeze(): a stale grad would keep Adam moving the weight
    _apply_bn_policy(model, bn)
    return trainable
