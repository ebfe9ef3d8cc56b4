"""Layer-wise LR decay (LLRD) for ``transformers.Trainer`` via ``Trainer(optimizer_cls_and_kwargs=...)``.

Why this hook: the Trainer's default optimizer (i) leaves out parameters that are frozen when it is built, so
gradual unfreezing could never train them, and (ii) has one lr for every group. Of the Trainer's hooks,

- ``optimizers=(opt, None)`` works (the Trainer builds its scheduler on our optimizer) but needs the optimizer
  before the Trainer exists, is incompatible with ``model_init`` and fixes the parameter objects early;
- ``optimizer_cls_and_kwargs=(cls, kwargs)`` (transformers >= 4.47) builds the optimizer when training starts.
  Its first element must be a ``torch.optim.Optimizer`` subclass: 4.x calls it as ``cls(default_groups,
  **kwargs)``, and 5.x calls anything else as a factory ``cls()(model, **kwargs)``. :class:`LayerDecayOptimizer`
  is such a subclass whose constructor returns the real optimizer built over every parameter of the model the
  kwargs carry, so one path works on both versions; a ``"params"`` kwarg is avoided because ``create_optimizer``
  *pops* it from the stored dict (a second ``Trainer`` from the same tuple would silently get the default groups).

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

from .plan import _MODEL_KEY, PlanOptimizer, _factory, shared_controller  # noqa: E402


def _llrd_plan(layer_decay: float, weight_decay: float | None, layer_patterns: Sequence[str] | None) -> FinetunePlan:
    return FinetunePlan(layer_decay=layer_decay, weight_decay=weight_decay,
                        layer_patterns=list(layer_patterns) if layer_patterns is not None else None)


class LayerDecayOptimizer(PlanOptimizer):
    """The optimizer class :func:`llrd_optimizer` hands the Trainer; ``LayerDecayOptimizer()(model, ...)`` directly.

    A shell over :class:`~warmstart.hf_integration.plan.PlanOptimizer` with the plan fragment
    ``{layer_decay, weight_decay, layer_patterns}``: the model's shared controller builds the param groups (every
    parameter, frozen ones included; an explicit ``lr`` per layer group), head groups first so the
    ``learning_rate`` the Trainer logs (``param_groups[0]``) is the peak lr. ``lr``, ``weight_decay`` and
    ``optimizer_cls`` left as ``None`` come from the building Trainer's ``TrainingArguments``.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> opt = LayerDecayOptimizer()(m, lr=1e-3, layer_decay=0.5)
        >>> [(g["name"], g["lr"]) for g in opt.param_groups if g["name"].endswith("/decay")]
        [('2/decay', 0.001), ('1/decay', 0.0005), ('0/decay', 0.00025)]
    """

    def __call__(self, model: nn.Module, *, lr: float | None = None, layer_decay: float = 0.8,
                 weight_decay: float | None = None, optimizer_cls: type[torch.optim.Optimizer] | None = None,
                 layer_patterns: Sequence[str] | None = None, **optim_kwargs: Any) -> torch.optim.Optimizer:
        plan = _llrd_plan(layer_decay, weight_decay, layer_patterns).to_dict()
        return super().__call__(model, plan=plan, lr=lr, optimizer_cls=optimizer_cls, **optim_kwargs)


def llrd_optimizer(model: nn.Module, lr: float | None = None, layer_decay: float = 0.8,
                   weight_decay: float | None = None, optimizer_cls: type[torch.optim.Optimizer] | None = None, *,
                   layer_patterns: Sequence[str] | None = None,
                   **optim_kwargs: Any) -> tuple[type[LayerDecayOptimizer], dict[str, Any]]:
    """``(LayerDecayOptimizer, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)``: LLRD over all parameters.

    The plan fragment ``FinetunePlan(layer_decay=..., weight_decay=...)`` through the model's shared controller
    (so it composes with ``GradualUnfreezing`` and LoRA on the same model). Group ``i`` of ``n`` layer groups
    (embeddings -> layers -> head) gets ``lr * layer_decay ** (n - 1 - i)``; biases, norm weights and
    position/class embeddings get no weight decay. What you leave out comes from the ``TrainingArguments`` when the
    Trainer builds the optimizer: ``lr`` from ``learning_rate``, ``weight_decay`` from ``weight_decay``, the
    optimizer class and its arguments from ``optim`` (``adamw_torch``, ``adamw_torch_fused``, ``sgd``,
    ``adafactor``, ... with ``adam_beta1/2``, ``adam_epsilon``); explicit arguments here win. The Trainer's
    scheduler, warmup, clipping and checkpointing apply as usual. Validates now (bad numbers, a model without layer
    structure, unknown optimizer arguments). Works with transformers >= 4.47.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> cls, kwargs = llrd_optimizer(m, lr=2e-5, layer_decay=0.9, weight_decay=0.01)
        >>> kwargs["layer_decay"], cls()(m, **kwargs).param_groups[0]["lr"]
        (0.9, 2e-05)

        With a Trainer: ``Trainer(model, TrainingArguments(learning_rate=5e-5, weight_decay=0.01, ...),
        optimizer_cls_and_kwargs=llrd_optimizer(model, layer_decay=0.8))``.
    """
    if lr is not None:
        check_finite_positive("lr", lr)
    check_lr_options(layer_decay=layer_decay, weight_decay=0.0 if weight_decay is None else weight_decay)
    check_has_parameters(model, "llrd_optimizer")
    plan = _llrd_plan(layer_decay, weight_decay, layer_patterns)
    _, checked = _factory(model, plan, lr, None, optimizer_cls, "optimizer", dict(optim_kwargs))  # validates
    groups = shared_controller(model, plan, "optimizer").group_names
    if len(groups) < 2:
        raise ValueError(
            f"layer-wise LR decay found no layer structure in {type(model).__name__} (a single group "
            f"{groups}), so every parameter would get the same lr. Pass layer_patterns=[...] "
            "(one regex per group, input to output), or use the Trainer's default optimizer."
        )
    kwargs = dict(lr=lr, layer_decay=layer_decay, weight_decay=weight_decay, optimizer_cls=optimizer_cls,
                  layer_patterns=list(layer_patterns) if layer_patterns is not None else None, **optim_kwargs)
    return LayerDecayOptimizer, {**kwargs, _MODEL_KEY: checked[_MODEL_KEY]}
