"""Layer-wise LR decay (LLRD) for ``transformers.Trainer`` via ``Trainer(optimizer_cls_and_kwargs=...)``.

Why this hook: the Trainer's default optimizer (i) leaves out parameters that are frozen when it is built, so
gradual unfreezing could never train them, and (ii) has one lr for every group. Of the Trainer's hooks,

- ``optimizers=(opt, None)`` works (the Trainer builds its scheduler on our optimizer) but needs the optimizer
  before the Trainer exists, is incompatible with ``model_init`` and fixes the parameter objects early;
- ``optimizer_cls_and_kwargs=(cls, kwargs)`` with a ``"params"`` kwarg works too, but ``create_optimizer``
  *pops* ``"params"`` from the stored dict: a second ``Trainer`` built from the same tuple would silently fall
  back to the default groups;
- ``optimizer_cls_and_kwargs=(factory, kwargs)`` (transformers >= 5: ``create_optimizer`` calls
  ``factory()(model, **kwargs)`` for anything that is not an ``Optimizer`` class) hands us the model the Trainer
  really trains, at the moment it builds the optimizer, and leaves the kwargs untouched. We use this one.

In every case the Trainer creates its own scheduler afterwards (``lr_scheduler_type``, warmup, ...): its
``LambdaLR`` multiplies each group's own initial ``lr``, so the per-layer ratios hold at every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from warmstart._optional import require

require("transformers")

from warmstart.core.param_groups import check_lr_options  # noqa: E402
from warmstart.core.plan import FinetunePlan  # noqa: E402
from warmstart.core.validation import check_finite_positive, check_has_parameters  # noqa: E402

from .plan import PlanOptimizer, _factory, shared_controller  # noqa: E402


def _llrd_plan(layer_decay: float, weight_decay: float, layer_patterns: Sequence[str] | None) -> FinetunePlan:
    return FinetunePlan(layer_decay=layer_decay, weight_decay=weight_decay,
                        layer_patterns=list(layer_patterns) if layer_patterns is not None else None)


class LayerDecayOptimizer:
    """Optimizer factory for the Trainer: ``LayerDecayOptimizer()(model, lr=..., ...)`` -> optimizer.

    A shell over :class:`~warmstart.hf_integration.plan.PlanOptimizer` with the plan fragment
    ``{layer_decay, weight_decay, layer_patterns}``: the model's shared controller builds the param groups (every
    parameter, frozen ones included; an explicit ``lr`` per layer group), head groups first so the
    ``learning_rate`` the Trainer logs (``param_groups[0]``) is the peak lr you asked for.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> opt = LayerDecayOptimizer()(m, lr=1e-3, layer_decay=0.5)
        >>> [(g["name"], g["lr"]) for g in opt.param_groups if g["name"].endswith("/decay")]
        [('2/decay', 0.001), ('1/decay', 0.0005), ('0/decay', 0.00025)]
    """

    def __call__(self, model: nn.Module, *, lr: float, layer_decay: float = 0.8, weight_decay: float = 0.0,
                 optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
                 layer_patterns: Sequence[str] | None = None, **optim_kwargs: Any) -> torch.optim.Optimizer:
        plan = _llrd_plan(layer_decay, weight_decay, layer_patterns).to_dict()
        return PlanOptimizer()(model, plan=plan, lr=lr, optimizer_cls=optimizer_cls, **optim_kwargs)


def llrd_optimizer(model: nn.Module, lr: float, layer_decay: float = 0.8, weight_decay: float = 0.0,
                   optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW, *,
                   layer_patterns: Sequence[str] | None = None,
                   **optim_kwargs: Any) -> tuple[type[LayerDecayOptimizer], dict[str, Any]]:
    """``(factory, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)``: LLRD over all parameters.

    The plan fragment ``FinetunePlan(layer_decay=..., weight_decay=...)`` through the model's shared controller
    (so it composes with ``GradualUnfreezing`` and LoRA on the same model). Group ``i`` of ``n`` layer groups
    (embeddings -> layers -> head) gets ``lr * layer_decay ** (n - 1 - i)``; biases, norm weights and
    position/class embeddings get no weight decay. ``TrainingArguments.learning_rate``, ``weight_decay`` and
    ``optim`` are not used with this optimizer (pass them here); the Trainer's scheduler, warmup, clipping and
    checkpointing are. Validates now (bad numbers, a model without layer structure, unknown optimizer arguments).
    Adam/AdamW run ``fused=True`` like the Trainer's default ``adamw_torch_fused`` unless you pass ``fused`` or
    ``foreach``.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> factory, kwargs = llrd_optimizer(m, lr=2e-5, layer_decay=0.9, weight_decay=0.01)
        >>> kwargs["layer_decay"], factory()(m, **kwargs).param_groups[0]["lr"]
        (0.9, 2e-05)

        With a Trainer: ``Trainer(model, args, optimizer_cls_and_kwargs=llrd_optimizer(model, lr=5e-5), ...)``.
    """
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise ValueError(f"optimizer_cls must be a torch.optim.Optimizer subclass, got {optimizer_cls!r}")
    check_finite_positive("lr", lr)
    check_lr_options(layer_decay=layer_decay, weight_decay=weight_decay)
    check_has_parameters(model, "llrd_optimizer")
    plan = _llrd_plan(layer_decay, weight_decay, layer_patterns)
    _factory(model, plan, lr, None, optimizer_cls, "optimizer", dict(optim_kwargs))  # validates on the model
    groups = shared_controller(model, plan, "optimizer").group_names
    if len(groups) < 2:
        raise ValueError(
            f"layer-wise LR decay found no layer structure in {type(model).__name__} (a single group "
            f"{groups}), so every parameter would get the same lr. Pass layer_patterns=[...] "
            "(one regex per group, input to output), or use the Trainer's default optimizer."
        )
    if optimizer_cls in (torch.optim.AdamW, torch.optim.Adam) and not {"fused", "foreach"} & optim_kwargs.keys():
        optim_kwargs["fused"] = True  # what the Trainer's default optim ("adamw_torch_fused") uses, CPU included
    kwargs = dict(lr=lr, layer_decay=layer_decay, weight_decay=weight_decay, optimizer_cls=optimizer_cls,
                  layer_patterns=list(layer_patterns) if layer_patterns is not None else None, **optim_kwargs)
    return LayerDecayOptimizer, kwargs
