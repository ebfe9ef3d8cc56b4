"""``Freeze``: keep part of any LightningModule frozen for the whole fit (contributes ``freeze``/``bn`` to the plan)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from .._optional import require
from ..core.freezing import GroupSelector, check_freeze_options, freeze, unfreeze
from ..core.lora import trainable_summary
from ..core.plan import FinetunePlan
from ._common import check_exclusive, target_module
from ._plan import PlanCallback

L = require("lightning", "lightning")
rank_zero_info = L.pytorch.utilities.rank_zero_info
rank_zero_warn = L.pytorch.utilities.rank_zero_warn


class Freeze(PlanCallback):
    """Freeze layer groups (or parameters matching a regex) of the LightningModule at ``setup``.

    The parameters stay in the optimizer; only ``requires_grad`` changes (ARCHITECTURE.md rule 2). ``groups`` is any
    group selector (``"all_but_head"``, ``"all"``, names, indices, roles); it becomes the plan's ``freeze`` and
    ``bn`` its ``bn``, merged with the other warmstart callbacks on the same ``module`` (e.g. ``Freeze(["stem"])``
    + ``GradualUnfreezing``: the stem never trains, the rest on the schedule). ``pattern`` is a regex over parameter
    names (alone it freezes exactly the matches); it is not a plan option, so ``Freeze(pattern=...)`` acts alone
    and cannot share its module with another warmstart callback. ``module`` names a sub-module attribute (default:
    the whole LightningModule's layer groups). ``bn="eval"`` keeps frozen BatchNorm statistics fixed,
    ``bn="train"`` lets them adapt. Bad names or a regex matching nothing raise at ``setup``.

    Example:
        >>> import torch.nn as nn
        >>> import lightning as L
        >>> class Net(L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        >>> net, cb = Net(), Freeze()
        >>> cb.setup(L.Trainer(logger=False, callbacks=[cb], enable_progress_bar=False), net, "fit")
        >>> net.body.weight.requires_grad, net.head.weight.requires_grad
        (False, True)
    """

    def __init__(self, groups: GroupSelector = "all_but_head", pattern: str | None = None,
                 module: str | None = None, bn: str = "eval", layer_patterns: Sequence[str] | None = None) -> None:
        check_freeze_options(groups, pattern, bn)  # what needs no model fails here; group names at setup
        self.groups, self.pattern, self.module, self.bn = groups, pattern, module, bn
        self.layer_patterns = list(layer_patterns) if layer_patterns is not None else None
        self.frozen: list[str] = []
        self._sub: Any = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module=self.module)

    @property
    def _plan_part(self) -> bool:
        return self.pattern is None

    def plan_fragment(self, sub: nn.Module) -> FinetunePlan:
        return FinetunePlan(freeze=self.groups, bn=self.bn, layer_patterns=self.layer_patterns)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        self._sub = sub = target_module(pl_module, self.module)
        if self._plan_part:
            super().setup(trainer, pl_module, stage)
        else:  # a regex over parameter names: core.freeze directly (the plan names groups only)
            check_exclusive(trainer, self)
            freeze(sub, self.groups, pattern=self.pattern, bn=self.bn, layer_patterns=self.layer_patterns)
        self.frozen = [n for n, p in sub.named_parameters() if not p.requires_grad]
        s = trainable_summary(pl_module)
        rank_zero_info(f"warmstart Freeze: froze {len(self.frozen)} tensors; trainable {s['trainable']:,} of "
                       f"{s['total']:,} parameters ({s['percent']}%)")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "frozen": list(self.frozen), "bn": self.bn}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._plan_part:  # the controller verifies layout and plan; the frozen set follows from the plan
            super().load_state_dict(state_dict)
            return
        # Called after setup when resuming: the checkpoint's frozen set wins so the resumed run trains the same
        # parameters; a config change that would silently alter it is reported.
        saved = list(state_dict.get("frozen", []))
        if self._sub is not None and set(saved) != set(self.frozen):
            rank_zero_warn(f"warmstart Freeze: the checkpoint froze {len(saved)} tensors but this config freezes "
                           f"{len(self.frozen)}; resuming with the checkpoint's frozen set.")
            unfreeze(self._sub, "all", layer_patterns=self.layer_patterns)
            if saved:
                exact = "^(" + "|".join(re.escape(n) for n in saved) + ")$"
                freeze(self._sub, None, pattern=exact, bn=state_dict.get("bn", self.bn),
                       layer_patterns=self.layer_patterns)
        self.frozen = saved
