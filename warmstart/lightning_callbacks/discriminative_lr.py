"""``DiscriminativeLR``: give the optimizer from ``configure_optimizers`` one explicit lr per layer group.

The callback contributes the plan's lr rule; the lr scale of each group is the shared controller's. The rewrite
below is Lightning plumbing (it is also what ``Finetune`` uses when its plan has an lr rule).

How: at ``on_fit_start`` (after Lightning built the optimizer and scheduler configs, before any step and before a
checkpoint's optimizer state is restored) we replace the param groups of the user's optimizer *in place* with
``FinetuneController.param_groups`` (every parameter, ``lr = user lr * scale``) and stretch each scheduler's
per-group state to the new groups, scaled the same way. We considered re-creating the optimizer and the schedulers
from their classes and constructor arguments; that is fragile (``OneCycleLR`` and ``CyclicLR`` keep their arguments
in private phase tables or in the param groups, user schedulers take arbitrary arguments, and Lightning's
``LRSchedulerConfig`` plus any reference the user kept, e.g. ``self.sched``, would point at stale objects). In
place, the optimizer and scheduler objects are the ones the user built, every scheduler value that is an lr is
multiplied by the group's scale (``base_lrs``, ``initial_lr``, ``max_lr``, ``min_lr``, ``min_lrs`` ...) and
everything else (lambdas, momentum cycles, step counts) is copied, so each group follows the user's schedule shape
exactly and the ratio between groups holds at every step (a scalar ``eta_min`` floor of ``CosineAnnealingLR`` is the
one thing that is not per group: use ``eta_min=0`` to keep ratios exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._optional import require
from ..core.controller import FinetuneController
from ..core.param_groups import check_lr_options, group_lr_table, is_no_decay
from ..core.plan import FinetunePlan
from ..core.validation import check_has_parameters
from ._plan import PlanCallback

L = require("lightning", "lightning")
rank_zero_info = L.pytorch.utilities.rank_zero_info

# Per-param-group lists that torch schedulers keep on themselves: lr-valued ones are scaled, the rest copied.
_SCALED_ATTRS = ("base_lrs", "_last_lr", "min_lrs", "max_lrs")
_COPIED_ATTRS = ("lr_lambdas", "base_momentums", "max_momentums")
# Group keys the new groups take from core.param_groups rather than from the user's group.
_OWN_KEYS = ("params", "param_names", "name", "weight_decay", "lr_scale")


class DiscriminativeLR(PlanCallback):
    """One explicit learning rate per layer group for the optimizer your ``configure_optimizers`` returns.

    Exactly one of ``layer_decay`` (``lr * decay ** distance_from_head``), ``group_lrs`` (group name or regex ->
    absolute lr; others keep the optimizer's lr) or ``backbone_lr_ratio`` (non-head groups get ``lr * ratio``):
    the plan's lr rule (with ``weight_decay``), merged with the other warmstart callbacks on the same ``module``;
    the controller gives each group its scale. ``lr`` is the optimizer's own ``lr`` (its constructor default); the
    head keeps it, so the head's lr curve is what it would be without this callback. The optimizer ends up holding
    **all** parameters (frozen ones too), in groups named ``"<layer-group>/decay|no_decay"``; no-decay groups
    (biases, norms) get weight decay 0. ``weight_decay`` overrides the optimizer's value for the decay groups.
    Works with any torch scheduler (``LambdaLR``, ``OneCycleLR``, ``CosineAnnealingLR``, ``ReduceLROnPlateau``,
    ...), which keeps its shape. This callback never changes which parameters train.

    Example:
        >>> import types, torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> cb = DiscriminativeLR(layer_decay=0.5)
        >>> trainer = types.SimpleNamespace(callbacks=[cb], optimizers=[opt], lr_scheduler_configs=[])
        >>> cb.setup(trainer, net, "fit")
        >>> cb.on_fit_start(trainer, net)
        >>> [(g["name"], g["lr"]) for g in opt.param_groups]
        [('0/decay', 0.05), ('0/no_decay', 0.05), ('1/decay', 0.1), ('1/no_decay', 0.1)]
    """

    _owns = ("optimizer",)
    _drives_trainable = False

    def __init__(self, layer_decay: float | None = None, group_lrs: dict[str, float] | None = None,
                 backbone_lr_ratio: float | None = None, weight_decay: float | None = None,
                 module: str | None = None, layer_patterns: Sequence[str] | None = None) -> None:
        given = [x is not None for x in (layer_decay, group_lrs, backbone_lr_ratio)]
        if sum(given) != 1:
            raise ValueError("DiscriminativeLR needs exactly one of layer_decay=, group_lrs= or backbone_lr_ratio= "
                             "(e.g. DiscriminativeLR(layer_decay=0.7)).")
        # The numbers fail here, where the user wrote them; names that need the model fail at setup.
        check_lr_options(layer_decay=layer_decay, group_lrs=group_lrs, backbone_lr_ratio=backbone_lr_ratio,
                         weight_decay=weight_decay)
        self.layer_decay, self.group_lrs, self.backbone_lr_ratio = layer_decay, group_lrs, backbone_lr_ratio
        self.weight_decay, self.module = weight_decay, module
        self.layer_patterns = list(layer_patterns) if layer_patterns is not None else None
        self._loaded_scales: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module=self.module, layer_decay=self.layer_decay, group_lrs=self.group_lrs,
                                        backbone_lr_ratio=self.backbone_lr_ratio)

    @property
    def scales(self) -> dict[str, float]:
        """lr scale of each param group (by name) once the optimizer is rebuilt."""
        return dict(self._shared.scales) if self._shared is not None and self._shared.scales else \
            dict(self._loaded_scales)

    def plan_fragment(self, sub: nn.Module) -> FinetunePlan:
        check_has_parameters(sub, "DiscriminativeLR")  # an empty module would give no groups, silently
        return FinetunePlan(layer_decay=self.layer_decay, group_lrs=self.group_lrs,
                            backbone_lr_ratio=self.backbone_lr_ratio, weight_decay=self.weight_decay,
                            layer_patterns=self.layer_patterns)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scales": self.scales}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The groups are rebuilt deterministically from the model; Lightning then restores the optimizer's
        # state (and lrs) from the checkpoint onto them. Keeping the scales lets a mismatch be spotted.
        self._loaded_scales = dict(state_dict.get("scales", {}))
        super().load_state_dict(state_dict)


def rebuild_for_trainer(trainer: Any, pl_module: nn.Module, controller: FinetuneController,
                        module: str | None) -> dict[str, float]:
    """Rebuild the trainer's one optimizer (and its schedulers) with the controller's per-group lrs, in place."""
    optimizers = list(trainer.optimizers)
    if len(optimizers) != 1:
        raise ValueError(f"DiscriminativeLR supports one optimizer; configure_optimizers returned "
                         f"{len(optimizers)}. Use FinetuneController.param_groups in configure_optimizers for the "
                         "others.")
    opt = getattr(optimizers[0], "_optimizer", optimizers[0])
    schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if _optimizer_of(c.scheduler) is opt]
    return rebuild(opt, pl_module, controller, module, schedulers)


def rebuild(opt: torch.optim.Optimizer, pl_module: nn.Module, controller: FinetuneController,
            module: str | None = None, schedulers: Sequence[Any] = ()) -> dict[str, float]:
    """Replace ``opt``'s param groups with the controller's per-layer-group ones and rebind ``schedulers``."""
    source = _single_source_group(opt)
    base_lr = float(opt.defaults.get("lr", source.get("initial_lr", source["lr"])))
    wd = controller.plan.weight_decay
    weight_decay = wd if wd is not None else source.get("weight_decay", 0.0)
    groups = _core_groups(pl_module, controller, module, base_lr, weight_decay)
    old_count = len(opt.param_groups)
    opt.param_groups.clear()
    for g in groups:
        new = {k: _scaled(k, v, g["lr_scale"]) for k, v in source.items() if k not in _OWN_KEYS}
        new.update({k: g[k] for k in _OWN_KEYS})
        opt.add_param_group(new)
    scales = [g["lr_scale"] for g in groups]
    for sched in schedulers:
        _rebind(sched, scales, old_count)
    table = ", ".join(f"{k} {v:.3g}" for k, v in group_lr_table(opt).items() if k.endswith("/decay"))
    rank_zero_info(f"warmstart DiscriminativeLR: {len(groups)} param groups; lr per group: {table}")
    return {g["name"]: g["lr_scale"] for g in groups}


def _core_groups(pl_module: nn.Module, controller: FinetuneController, module: str | None, lr: float,
                 weight_decay: float) -> list[dict]:
    groups = controller.param_groups(lr, weight_decay=weight_decay)
    if controller.model is pl_module:
        return groups
    # Parameters outside `module` (e.g. a separate head or a loss with weights) train at the base lr.
    prefix = module + "."
    for g in groups:
        g["param_names"] = [prefix + n for n in g["param_names"]]
    inside = {id(p) for g in groups for p in g["params"]}
    rest = [(n, p) for n, p in pl_module.named_parameters() if id(p) not in inside]
    for kind in ("decay", "no_decay"):
        chosen = [(n, p) for n, p in rest if (kind == "no_decay") == is_no_decay(n, p)]
        if chosen:
            groups.append({"params": [p for _, p in chosen], "param_names": [n for n, _ in chosen], "lr": lr,
                           "lr_scale": 1.0, "weight_decay": weight_decay if kind == "decay" else 0.0,
                           "name": f"rest/{kind}"})
    return groups


def _optimizer_of(scheduler: Any) -> Any:
    opt = getattr(scheduler, "optimizer", None)
    return getattr(opt, "_optimizer", opt)  # LightningOptimizer wraps the real one


def _single_source_group(opt: torch.optim.Optimizer) -> dict:
    """The user's (single) hyperparameter set; several groups are fine only if they share it."""
    first = opt.param_groups[0]
    for g in opt.param_groups[1:]:
        differ = [k for k in first if k not in ("params", "param_names") and not _same(first[k], g.get(k))]
        if differ:
            raise ValueError(
                f"DiscriminativeLR rebuilds the optimizer's param groups, but configure_optimizers returned groups "
                f"that differ in {differ}. Return one group (e.g. AdamW(self.parameters(), lr=...)) and let "
                "DiscriminativeLR set per-layer lrs (group_lrs= for explicit ones)."
            )
    return first


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and bool(torch.equal(a, b))
    return a == b


def _scaled(key: str, value: Any, scale: float) -> Any:
    """lr-valued hyperparameters (lr, initial_lr, max_lr, min_lr) scale; everything else is copied."""
    if "lr" in key and isinstance(value, int | float | torch.Tensor) and not isinstance(value, bool):
        return value * scale
    return value.clone() if isinstance(value, torch.Tensor) else value


def _rebind(sched: Any, scales: list[float], old_count: int) -> None:
    """Stretch a scheduler's per-group lists from ``old_count`` groups to one entry per new group."""
    for inner in getattr(sched, "_schedulers", []):  # SequentialLR, ChainedScheduler
        _rebind(inner, scales, old_count)
    for attr in _SCALED_ATTRS + _COPIED_ATTRS:
        values = getattr(sched, attr, None)
        if not isinstance(values, list | tuple) or len(values) != old_count:
            continue
        if any(v is not values[0] and not _same(v, values[0]) for v in values[1:]):
            raise ValueError(f"{type(sched).__name__}.{attr} differs between your param groups; DiscriminativeLR "
                             "needs one schedule for all of them (one group in configure_optimizers).")
        if attr in _SCALED_ATTRS:
            setattr(sched, attr, [values[0] * s for s in scales])
        else:
            setattr(sched, attr, [values[0] for _ in scales])
