"""``FinetuneController``: applies a :class:`FinetunePlan` to one model and owns every decision it implies.

Which parameters train at a position (freeze set, unfreeze schedule and LoRA together), the explicit lr of each
param group, the BatchNorm mode of frozen groups, which weights the plan's ``anchor`` (L2-SP) pulls, whether the
optimizer holds every parameter, and what is saved for resume. Front ends (Lightning callbacks, the HF
TrainerCallback, the Ultralytics trainer) translate their hooks into calls to this object and decide nothing
themselves (ARCHITECTURE.md rules 1 and 10), so one plan gives the same trainable sets and lr ratios in every
framework.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from .anchor import WeightAnchor
from .freezing import _apply_bn_policy, select_groups
from .layers import ROLES, LayerGroup, group_names, layer_groups
from .lora import apply_lora, has_lora
from .param_groups import group_scales, param_groups
from .plan import FinetunePlan
from .validation import check_finite_positive, check_has_parameters

_ADAPTER = re.compile(r"(^|\.)lora_(A|B|embedding_A|embedding_B|magnitude_vector)(\.|$)")


class FinetuneController:
    """One model + one plan: trainable set, param groups, BN policy and resume state.

    LoRA in the plan is applied to ``model`` here (in place) unless the model already has adapters. Positions
    are epochs, optimizer steps or fractions of the run, as ``plan.unit`` says; a front end passes all it knows
    to :meth:`position`.

    Example:
        >>> import torchvision
        >>> m = torchvision.models.resnet18(num_classes=3)
        >>> c = FinetuneController(m, FinetunePlan(head_epochs=1, every=2, layer_decay=0.5))
        >>> c.group_names
        ['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'head']
        >>> c.apply(0), c.apply(1)
        (['head'], ['layer4', 'head'])
        >>> [round(s, 4) for s in c.lr_scales()][-3:]
        [0.25, 0.5, 1.0]
    """

    def __init__(self, model: nn.Module, plan: FinetunePlan | dict) -> None:
        check_has_parameters(model, "a fine-tuning plan")
        self.model, self.plan = model, FinetunePlan.from_dict(plan)
        # Groups are read before LoRA so their names do not depend on peft's wrapping; param names are re-read.
        base = layer_groups(model, self.plan.layer_patterns)
        if self.plan.lora is not None and not has_lora(model):
            lora = self.plan.lora
            apply_lora(model, r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], targets=lora["targets"])
        self.groups: list[LayerGroup] = _regroup(model, base) if has_lora(model) else base
        self.group_names = group_names(self.groups)
        if len(set(self.group_names)) != len(self.group_names):
            raise ValueError(f"layer group names must be unique, got {self.group_names}; pass layer_patterns")
        self.frozen = set(_select(self.groups, self.plan.freeze, "freeze"))
        if self.plan.max_groups is not None and self.plan.max_groups > len(self.groups):
            raise ValueError(f"max_groups={self.plan.max_groups} but the model has {len(self.groups)} layer groups: "
                             f"{self.group_names}")
        self.starts = self._starts()
        if self.plan.at is None and self.plan.max_groups is not None:
            # max_groups leaves the groups below it frozen on purpose: a freeze, not a forgotten group
            self.frozen |= {i for i, s in enumerate(self.starts) if s is None}
        never = [self.group_names[i] for i, s in enumerate(self.starts) if s is None and i not in self.frozen]
        if never:
            raise ValueError(f"the plan never trains group(s) {never}: list them in at=..., or put them in freeze= "
                             f"if that is what you want. Groups: {self.group_names}")
        self.lr_scales_for(1.0)  # unknown group names in lr_scales / group_lrs fail now, with the valid names
        self.position_now: float | None = None
        self.trainable_groups: list[str] = []
        self.masked: list[nn.Parameter] = []  # frozen by gradient masking (apply(mask_grads=True))
        self.anchor: WeightAnchor | None = None
        if self.plan.anchor is not None:
            self.anchor = WeightAnchor(self.anchored_parameters(), self.plan.anchor)

    # ------------------------------------------------------------------------------------------ schedule
    def _starts(self) -> list[float | None]:
        """Position at which each group starts training (None: never)."""
        n, plan = len(self.groups), self.plan
        if plan.at is not None:
            starts: list[float | None] = [None] * n
            for key, start in plan.at.items():
                for i in _select(self.groups, key, f"at[{key!r}]"):
                    starts[i] = float(start)
            head = n - 1
            if starts[head] is None:
                starts[head] = 0.0  # the head always trains unless at= says when
            return starts
        if plan.head_epochs is None:
            return [0.0] * n
        limit = plan.max_groups or n
        out: list[float | None] = []
        for i in range(n):
            depth = n - 1 - i  # 0 = head
            out.append(None if depth >= limit else (0.0 if depth == 0 else plan.head_epochs + (depth - 1) * plan.every))
        return out

    def trainable_at(self, position: float) -> list[str]:
        """Names of the groups that train at ``position`` (freeze set and schedule together).

        Example:
            >>> import torch.nn as nn
            >>> c = FinetuneController(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), {"at": {"0": 3}})
            >>> c.trainable_at(0), c.trainable_at(3)
            (['1'], ['0', '1'])
        """
        return [name for i, name in enumerate(self.group_names)
                if i not in self.frozen and self.starts[i] is not None and position >= self.starts[i] - 1e-9]

    def position(self, *, epoch: float = 0.0, step: int = 0, total_epochs: float | None = None,
                 total_steps: int | None = None) -> float:
        """The schedule position in ``plan.unit`` from what the framework knows (epoch may be fractional)."""
        unit = self.plan.unit
        if unit == "epoch":
            return math.floor(epoch + 1e-6)
        if unit == "step":
            return float(step)
        if total_steps:
            return step / total_steps
        if total_epochs:
            return epoch / total_epochs
        raise ValueError("unit='fraction' needs the run's total steps or epochs from the front end")

    def check_horizon(self, horizon: float) -> None:
        """Check the schedule against the length of training (``horizon`` in ``plan.unit``; ignored for fractions).

        A group the plan names a start for (``at=``, or a ``max_groups`` limit) that starts at or after the end would
        never train: that is an error. An open-ended ``head_epochs``/``every`` schedule that does not reach the
        lowest groups in time is legal (it is how a short run keeps early layers as they are) but rarely intended:
        that is a warning naming the groups. Every front end calls this once at train start.

        Example:
            >>> import torch.nn as nn
            >>> c = FinetuneController(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), {"at": {"0": 5}})
            >>> c.check_horizon(3)
            Traceback (most recent call last):
            ...
            ValueError: the plan starts group(s) ['0'] at epoch 5 or later, but training ends after 3 epochs, ...
        """
        if self.plan.unit == "fraction":
            horizon = 1.0
        late = [(self.group_names[i], s) for i, s in enumerate(self.starts)
                if s is not None and i not in self.frozen and s >= horizon]
        if not late:
            return
        unit = self.plan.unit
        text = (f"the plan starts group(s) {[n for n, _ in late]} at {unit} {min(s for _, s in late):g} or later, but "
                f"training ends after {horizon:g} {unit}s, so they would never train")
        if self.plan.at is not None or self.plan.max_groups is not None:
            raise ValueError(f"{text}; start them earlier or train longer. Groups: {self.group_names}")
        warnings.warn(f"{text}. Shorten head_epochs/every, set max_groups, or train longer.", stacklevel=2)

    # ------------------------------------------------------------------------------------------ apply
    def trainable_parameters(self, groups: Iterable[str]) -> set[str]:
        """Parameter names that train when ``groups`` are active: everything in them, or under LoRA only the
        adapters, the head and BatchNorm affine parameters (the base weights stay frozen)."""
        active = set(groups)
        lora = has_lora(self.model)
        bn = _batchnorm_params(self.model) if lora else set()
        out = set()
        for g in self.groups:
            if g.name not in active:
                continue
            for name in g.param_names:
                if not lora or g.role == "head" or _ADAPTER.search(name) or name in bn:
                    out.add(name)
        return out

    def apply(self, position: float, *, mask_grads: bool = False, keep_frozen: Sequence[str] = ()) -> list[str]:
        """Set ``requires_grad`` and the BN policy for ``position``; returns the trainable group names.

        ``keep_frozen``: parameter-name substrings that the framework itself freezes (Ultralytics: its ``freeze=``
        layers and the fixed DFL convolution); they stay frozen whatever the plan says about their group.

        ``mask_grads=True`` is the DDP-safe way to freeze (DDP without ``find_unused_parameters`` must see the same
        parameters require grad as when it wrapped the model): every parameter the plan ever trains keeps
        ``requires_grad``, and the ones frozen at ``position`` are listed in ``masked`` for
        :meth:`drop_masked_gradients` to clear before each optimizer step. BN policy follows the frozen set either way.
        """
        self.position_now = float(position)
        self.trainable_groups = self.trainable_at(position)
        train = self.trainable_parameters(self.trainable_groups)
        fixed = {n for n, _ in self.model.named_parameters() if any(pattern in n for pattern in keep_frozen)}
        train -= fixed
        for name, p in self.model.named_parameters():
            wanted = name in train
            p.requires_grad_(wanted)
            if not wanted:
                p.grad = None  # a stale gradient would keep Adam moving a frozen weight
        _apply_bn_policy(self.model, self.plan.bn)
        self.masked = []
        if mask_grads:
            ever = self.ever_trainable() - fixed
            self.masked = [p for n, p in self.model.named_parameters() if n in ever and n not in train]
            for p in self.masked:
                p.requires_grad_(True)
        return list(self.trainable_groups)

    def drop_masked_gradients(self) -> None:
        """Clear the gradients of the parameters :meth:`apply` masked (call after backward, before the step)."""
        for p in self.masked:
            p.grad = None

    def ever_trainable(self) -> set[str]:
        """Parameter names the plan trains at some position (frozen groups and LoRA base weights never do)."""
        return self.trainable_parameters(n for i, n in enumerate(self.group_names) if i not in self.frozen)

    def anchored_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters an ``anchor`` pulls: the pretrained ones the plan ever trains (not the new head, not LoRA
        adapters, not groups frozen for the whole run).

        Example:
            >>> import torchvision
            >>> c = FinetuneController(torchvision.models.resnet18(num_classes=3), FinetunePlan(anchor=0.1))
            >>> names = list(c.anchored_parameters())
            >>> names[0], any(n.startswith("fc.") for n in names), len(c.anchor.params) == len(names)
            ('conv1.weight', False, True)
        """
        ever = self.ever_trainable()
        pretrained = {n for g in self.groups if g.role != "head" for n in g.param_names if not _ADAPTER.search(n)}
        return {n: p for n, p in self.model.named_parameters() if n in ever and n in pretrained}

    def unfreeze_all(self) -> None:
        """Everything that can ever train trainable (for DDP wrapping and optimizer construction)."""
        train = self.ever_trainable()
        for name, p in self.model.named_parameters():
            p.requires_grad_(name in train or p.requires_grad)

    # ------------------------------------------------------------------------------------------ learning rates
    def lr_scales(self) -> list[float]:
        """The lr multiplier of each group under the plan's lr rule (head 1 unless the rule says otherwise)."""
        rule = self.plan.lr_rule
        if "lr_scales" in rule:
            scales = [1.0] * len(self.groups)
            for key, value in rule["lr_scales"].items():
                for i in _select(self.groups, key, f"lr_scales[{key!r}]"):
                    scales[i] = float(value)
            return scales
        if "group_lrs" in rule:
            raise ValueError("group_lrs are absolute: ask lr_scales_for(lr) with the base lr")
        return group_scales(self.groups, 1.0, **rule)

    def lr_scales_for(self, lr: float) -> list[float]:
        """Like :meth:`lr_scales`, for any rule (absolute ``group_lrs`` need the base ``lr``)."""
        check_finite_positive("lr", lr)
        if "group_lrs" in self.plan.lr_rule:
            return group_scales(self.groups, lr, group_lrs=self.plan.group_lrs)
        return self.lr_scales()

    def param_groups(self, lr: float, weight_decay: float | None = None) -> list[dict]:
        """Optimizer param groups over **every** parameter, one explicit lr per group (ARCHITECTURE.md rules 2-3).

        ``weight_decay`` is the plan's unless given. Group names are ``"<layer group>/<decay|no_decay>"``.
        """
        wd = self.plan.weight_decay if weight_decay is None else weight_decay
        out = param_groups(self.model, lr, weight_decay=wd or 0.0, groups=self.groups)
        scales = dict(zip(self.group_names, self.lr_scales_for(lr)))
        for g in out:
            scale = scales[g["name"].rsplit("/", 1)[0]]
            g["lr"], g["lr_scale"] = lr * scale, scale
        return out

    def check_optimizer(self, optimizer: Any) -> None:
        """Refuse an optimizer that misses parameters: unfrozen later, they could never train (rule 2)."""
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in self.model.named_parameters() if id(p) not in held]
        if missing:
            raise ValueError(f"the optimizer holds no entry for {len(missing)} parameter(s) (e.g. {missing[:3]}), "
                             "so unfreezing them later could never train them. Build it over all parameters, "
                             "e.g. from FinetuneController.param_groups(lr).")

    # ------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """The plan, the group layout and the position: enough to verify and continue a run."""
        return {"plan": self.plan.to_dict(), "group_names": list(self.group_names),
                "position": self.position_now, "trainable_groups": list(self.trainable_groups)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Verify a checkpoint's layout and plan against this one (a mismatch names both), restore the position."""
        saved = list(state.get("group_names") or [])
        if saved != self.group_names:
            raise ValueError(f"the checkpoint was trained with layer groups {saved}, but this model has "
                             f"{self.group_names}; resume with the same model and layer_patterns.")
        plan = state.get("plan")
        if plan is not None and FinetunePlan.from_dict(plan) != self.plan:
            raise ValueError(f"the checkpoint's plan {plan} differs from this run's {self.plan.to_dict()}; "
                             "resume with the same plan, or start a new run.")
        if state.get("position") is not None:
            self.apply(state["position"])


# ---------------------------------------------------------------------------------------------- helpers


def _select(groups: Sequence[LayerGroup], selector: Any, what: str) -> list[int]:
    """Group indices for a selector; a role name ("backbone", "neck", ...) picks every group with that role."""
    if selector is None:
        return []
    items = selector if isinstance(selector, list | tuple) else [selector]
    names = group_names(groups)
    out: set[int] = set()
    for item in items:
        if isinstance(item, str) and item in ROLES and item not in names:
            hits = [i for i, g in enumerate(groups) if g.role == item]
            if item == "backbone" and not hits:  # non-YOLO models: the backbone is everything but the head
                hits = [i for i, g in enumerate(groups) if g.role != "head"]
        else:
            try:
                hits = select_groups(groups, item)
            except ValueError as err:
                raise ValueError(f"{what}: {err}; roles: {list(ROLES)}") from None
        if not hits:
            raise ValueError(f"{what}: {item!r} matches no layer group. Valid groups: {names}; roles: {list(ROLES)}")
        out.update(hits)
    return sorted(out)


def _regroup(model: nn.Module, base: Sequence[LayerGroup]) -> list[LayerGroup]:
    """The same groups with the model's current parameter names (peft renames ``w`` to ``base_layer.w`` and adds
    adapters): each parameter goes to the group of the module it lives under."""
    owner: dict[str, int] = {}
    for i, g in enumerate(base):
        for name in g.param_names:
            owner[_strip_lora(name)] = i
    out = [LayerGroup(g.name, g.role, [], list(g.module_names)) for g in base]
    for name, _ in model.named_parameters():
        key = _strip_lora(name)
        i = owner.get(key)
        if i is None:  # an adapter: find the group of its wrapped layer's weight
            module = re.split(r"\.lora_[A-Za-z_]+\.", name)[0]
            i = next((owner[k] for k in (f"{module}.weight", f"{module}.bias") if k in owner), len(base) - 1)
        out[i].param_names.append(name)
    return out


def _strip_lora(name: str) -> str:
    return name.replace(".base_layer.", ".")


def _batchnorm_params(model: nn.Module) -> set[str]:
    return {f"{m}.{p}" if m else p for m, mod in model.named_modules()
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) for p, _ in mod.named_parameters(recurse=False)}
