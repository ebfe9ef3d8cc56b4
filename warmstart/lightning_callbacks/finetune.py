"""``Finetune``: a whole :class:`~warmstart.core.plan.FinetunePlan` (a dict or YAML) as one Lightning callback."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._optional import require
from ..core.plan import FinetunePlan
from ._plan import MODES, PlanCallback

L = require("lightning", "lightning")


class Finetune(PlanCallback):
    """Apply a fine-tuning plan (freeze, unfreeze schedule, per-group lrs, BatchNorm policy, LoRA) to a LightningModule.

    ``plan`` is a :class:`FinetunePlan` or its dict form (what ``FinetunePlan.to_dict()`` gives, e.g. from YAML).
    The :class:`~warmstart.core.controller.FinetuneController` decides everything; this callback only calls it
    from Lightning's hooks: LoRA and the initial trainable set at ``setup``, the lr rule rewrites *your*
    optimizer's param groups in place at ``on_fit_start`` (your scheduler keeps working, as with
    ``DiscriminativeLR``), the schedule is applied at each train epoch start (``unit="epoch"``) or batch start
    (``"step"``, ``"fraction"``). ``module`` names a sub-module attribute (default: the whole LightningModule).
    ``mode`` is how freezing is carried out under DDP (``"auto"``, ``"requires_grad"``, ``"mask_grads"``; see
    :mod:`warmstart.lightning_callbacks._plan`). Other warmstart callbacks on the same ``module`` merge into this
    plan; an option set in both is an error.

    Example:
        >>> import torch.nn as nn
        >>> import lightning as L
        >>> class Net(L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        >>> cb = Finetune({"head_epochs": 1, "every": 1, "layer_decay": 0.5})
        >>> net = Net()
        >>> cb.setup(L.Trainer(logger=False, callbacks=[cb], enable_progress_bar=False, max_epochs=3), net, "fit")
        >>> cb.controller.trainable_at(1), [round(s, 3) for s in cb.controller.lr_scales()]
        (['b', 'head'], [0.25, 0.5, 1.0])
    """

    def __init__(self, plan: FinetunePlan | dict[str, Any], module: str | None = None, mode: str = "auto") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.plan = FinetunePlan.from_dict(plan)  # a bad plan fails here, where it was written
        self.module, self.mode = module, mode
        self.layer_patterns = self.plan.layer_patterns

    @property
    def _owns(self) -> tuple[str, ...]:  # type: ignore[override]
        rewrites = bool(self.plan.lr_rule) or self.plan.weight_decay is not None
        return ("trainable", "optimizer") if rewrites else ("trainable",)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module=self.module)

    def plan_fragment(self, sub: nn.Module) -> FinetunePlan:
        return self.plan

    def _lora_options(self) -> dict[str, Any] | None:
        return self.plan.lora
