"""``GradualUnfreezing``: head first, then one more layer group from the top (contributes the plan's schedule).

The callback contributes ``head_epochs``/``every``/``max_groups`` (or ``at``) and ``bn`` to the plan shared by the
warmstart callbacks on its ``module``; the :class:`~warmstart.core.controller.FinetuneController` decides what
trains. How the schedule is carried out under DDP (``mode``: ``"requires_grad"`` or ``"mask_grads"``, picked per
strategy by ``mode="auto"``; FSDP/DeepSpeed refused) is described in :mod:`warmstart.lightning_callbacks._plan`:
every parameter that will ever train is trainable when the strategy wraps the model, and the schedule is applied
at each train epoch start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .._optional import require
from ..core.freezing import BN_POLICIES, UnfreezeSchedule
from ..core.layers import group_names, layer_groups
from ..core.plan import FinetunePlan
from ._plan import MODES, PlanCallback, resolve_mode

L = require("lightning", "lightning")

__all__ = ["MODES", "GradualUnfreezing"]


class GradualUnfreezing(PlanCallback):
    """Train the head first, then unfreeze one more layer group (from the top) every ``every`` epochs.

    Pass a ready ``schedule`` (``core.UnfreezeSchedule``), or its arguments (``head_epochs``, ``every``, ``at``: one
    start epoch per group, input to output; ``max_groups``) and the schedule is built for the module's layer groups
    at ``setup``. It is merged with the other warmstart callbacks on the same ``module`` into one plan: with
    ``LoRA`` the schedule decides when each group's *adapters* train; with ``DiscriminativeLR`` each group keeps
    its lr. ``layer_patterns`` overrides the group detection (one regex per group, input to output). ``bn`` is the
    BatchNorm policy of frozen groups. Every parameter must be in the optimizer from the start (checked at train
    start; ``DiscriminativeLR`` guarantees it). State is saved in checkpoints, so ``Trainer.fit(ckpt_path=...)``
    resumes with the same trainable set.

    Example:
        >>> import torch.nn as nn
        >>> import lightning as L
        >>> class Net(L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        >>> net, cb = Net(), GradualUnfreezing(head_epochs=1, every=2)
        >>> cb.setup(L.Trainer(logger=False, callbacks=[cb], enable_progress_bar=False), net, "fit")
        >>> [cb.controller.trainable_at(e) for e in (0, 1, 3)]
        [['head'], ['b', 'head'], ['a', 'b', 'head']]
    """

    def __init__(self, schedule: UnfreezeSchedule | None = None, head_epochs: int = 1, every: int = 1,
                 at: list[int] | None = None, max_groups: int | None = None, bn: str = "eval",
                 module: str | None = None, layer_patterns: Sequence[str] | None = None,
                 mode: str = "auto") -> None:
        if bn not in BN_POLICIES:
            raise ValueError(f"bn must be one of {BN_POLICIES}, got {bn!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.schedule = schedule
        self._schedule_kwargs = {"head_epochs": head_epochs, "every": every, "at": at, "max_groups": max_groups}
        self.bn, self.module, self.mode = bn, module, mode
        self.layer_patterns = list(layer_patterns) if layer_patterns is not None else None
        self.group_names: list[str] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module=self.module)

    @property
    def _mode(self) -> str:
        """The mode in effect after ``setup`` (``"requires_grad"`` or ``"mask_grads"``)."""
        return self._shared.mode if self._shared is not None else self.mode

    @property
    def trainable_groups(self) -> list[str]:
        return list(self.controller.trainable_groups) if self.controller is not None else []

    @property
    def epoch(self) -> int | None:
        c = self.controller
        return None if c is None or c.position_now is None else int(c.position_now)

    def plan_fragment(self, sub: nn.Module) -> FinetunePlan:
        # The UnfreezeSchedule checks the arguments against the number of groups (at= length, max_groups range).
        self.group_names = names = group_names(layer_groups(sub, self.layer_patterns))
        if self.schedule is None:
            self.schedule = UnfreezeSchedule(num_groups=len(names), **self._schedule_kwargs)
        elif self.schedule.num_groups != len(names):
            raise ValueError(
                f"the UnfreezeSchedule is for {self.schedule.num_groups} layer groups but the model has "
                f"{len(names)}: {names}. Build it with UnfreezeSchedule(num_groups={len(names)}, ...), "
                "or pass layer_patterns / module to group the model the way the schedule expects."
            )
        s = self.schedule
        if s.at is not None:
            return FinetunePlan(at=dict(zip(names, s.at)), bn=self.bn, layer_patterns=self.layer_patterns)
        return FinetunePlan(head_epochs=s.head_epochs, every=s.every, max_groups=s.max_groups, bn=self.bn,
                            layer_patterns=self.layer_patterns)

    def _resolve_mode(self, trainer: Any) -> str:
        """The mode for ``trainer``'s strategy (kept for callers of the old API; setup uses the shared one)."""
        return resolve_mode(trainer, self.mode, scheduled=True)

    def apply(self, epoch: int) -> list[str]:
        """Make exactly the groups the plan allows at ``epoch`` trainable; returns their names."""
        self._apply(epoch)
        return self.trainable_groups

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "schedule": self.schedule.state_dict() if self.schedule is not None else None,
                "group_names": list(self.group_names), "trainable_groups": self.trainable_groups,
                "epoch": self.epoch, "bn": self.bn}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_groups = state_dict.get("group_names") or []
        if self.group_names and saved_groups and saved_groups != self.group_names:
            raise ValueError(f"the checkpoint's GradualUnfreezing ran over groups {saved_groups} but this model "
                             f"has {self.group_names}; resume with the same model and layer_patterns.")
        super().load_state_dict(state_dict)
