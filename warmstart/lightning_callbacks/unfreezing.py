"""``GradualUnfreezing``: unfreeze layer groups from the head down on a schedule (a shell over ``core.apply_schedule``).

DDP pitfall this file exists to avoid: ``DistributedDataParallel`` registers only the parameters that require
grad when it wraps the model. A parameter frozen at wrap time and unfrozen later is never all-reduced, so the
ranks silently drift apart; a parameter frozen after wrapping makes DDP (``find_unused_parameters=False``)
fail waiting for its gradient. So every parameter is trainable when the strategy wraps the model (we unfreeze
the module at ``setup``), and the schedule is applied at each train epoch start in one of two modes:

* ``"requires_grad"``: toggles ``requires_grad`` (saves backward compute). Single device, or DDP with
  ``find_unused_parameters=True`` (``strategy="ddp_find_unused_parameters_true"``).
* ``"mask_grads"``: ``requires_grad`` stays True; the gradients of frozen groups are dropped (set to ``None``)
  just before each optimizer step, so the optimizer skips them (no update, no momentum, no weight decay).
  Works with plain ``strategy="ddp"``. This is ARCHITECTURE.md rule 2's "zero the group instead" without fighting the
  lr scheduler, which would overwrite a zeroed lr at its next step.

``mode="auto"`` picks ``"mask_grads"`` under DDP without ``find_unused_parameters``, else ``"requires_grad"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._optional import require
from ..core.freezing import BN_POLICIES, UnfreezeSchedule, apply_schedule, unfreeze
from ..core.layers import group_names, layer_groups
from ._common import check_exclusive, target_module

L = require("lightning", "lightning")
rank_zero_info = L.pytorch.utilities.rank_zero_info

MODES = ("auto", "requires_grad", "mask_grads")


class GradualUnfreezing(L.Callback):
    """Train the head first, then unfreeze one more layer group (from the top) every ``every`` epochs.

    Pass a ready ``schedule`` (``core.UnfreezeSchedule``), or its arguments (``head_epochs``, ``every``, ``at``,
    ``max_groups``) and the schedule is built for the module's layer groups at ``setup``. ``module`` names a
    sub-module attribute (default: the whole LightningModule); ``layer_patterns`` overrides the group detection
    (one regex per group, input to output). ``bn`` is the BatchNorm policy of frozen groups. Every parameter must
    be in the optimizer from the start (checked at train start; ``DiscriminativeLR`` guarantees it). State is
    saved in checkpoints, so ``Trainer.fit(ckpt_path=...)`` resumes with the same trainable set.

    Example:
        >>> import torch.nn as nn
        >>> import lightning as L
        >>> class Net(L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        >>> net, cb = Net(), GradualUnfreezing(head_epochs=1, every=2)
        >>> cb.setup(L.Trainer(logger=False, callbacks=[cb], enable_progress_bar=False), net, "fit")
        >>> [cb.schedule.trainable_indices(e) for e in (0, 1, 3)]
        [[2], [1, 2], [0, 1, 2]]
    """

    _owns = ("trainable",)

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
        self.trainable_groups: list[str] = []
        self.epoch: int | None = None
        self._mode = mode
        self._sub: Any = None
        self._masked: list[Any] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module=self.module)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        check_exclusive(trainer, self)
        self._sub = target_module(pl_module, self.module)
        groups = layer_groups(self._sub, self.layer_patterns)
        self.group_names = group_names(groups)
        if self.schedule is None:
            self.schedule = UnfreezeSchedule(num_groups=len(groups), **self._schedule_kwargs)
        elif self.schedule.num_groups != len(groups):
            raise ValueError(
                f"the UnfreezeSchedule is for {self.schedule.num_groups} layer groups but the model has "
                f"{len(groups)}: {self.group_names}. Build it with UnfreezeSchedule(num_groups={len(groups)}, ...), "
                "or pass layer_patterns / module to group the model the way the schedule expects."
            )
        self._mode = self._resolve_mode(trainer)
        # Everything trainable while the strategy wraps the model (see the module docstring) and while
        # configure_optimizers runs (so a `filter(requires_grad)` optimizer still holds every parameter).
        unfreeze(self._sub, "all", layer_patterns=self.layer_patterns)

    def _resolve_mode(self, trainer: Any) -> str:
        ddp = isinstance(trainer.strategy, L.pytorch.strategies.DDPStrategy)
        find_unused = bool(getattr(trainer.strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False))
        if self.mode == "auto":
            return "mask_grads" if ddp and not find_unused else "requires_grad"
        if self.mode == "requires_grad" and ddp and not find_unused:
            raise ValueError(
                "GradualUnfreezing(mode='requires_grad') under DDP needs find_unused_parameters=True, otherwise "
                "DDP fails (or silently stops syncing) when groups are frozen. Use "
                "strategy='ddp_find_unused_parameters_true', or mode='mask_grads' (the 'auto' default)."
            )
        return self.mode

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        in_optimizer = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        missing = [n for n, p in self._sub.named_parameters() if id(p) not in in_optimizer]
        if missing:
            raise ValueError(
                f"GradualUnfreezing needs every parameter in the optimizer from the start, but {len(missing)} are "
                f"not (e.g. {missing[:3]}): they could never train after being unfrozen. Return an optimizer over "
                "self.parameters() from configure_optimizers (frozen ones get no update), or add DiscriminativeLR."
            )

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.apply(trainer.current_epoch)

    def apply(self, epoch: int) -> list[int]:
        """Make exactly the groups the schedule allows at ``epoch`` trainable; returns their indices."""
        trainable = apply_schedule(self._sub, self.schedule, epoch, bn=self.bn, layer_patterns=self.layer_patterns)
        frozen = [p for p in self._sub.parameters() if not p.requires_grad]
        if self._mode == "mask_grads":
            # core applied the BN policy from requires_grad; now give DDP back its full set of gradients.
            for p in frozen:
                p.requires_grad_(True)
        self._masked = frozen if self._mode == "mask_grads" else []
        names = [self.group_names[i] for i in trainable]
        if names != self.trainable_groups:
            rank_zero_info(f"warmstart GradualUnfreezing: epoch {epoch}: training {len(names)}/"
                           f"{len(self.group_names)} groups {names}")
        self.trainable_groups, self.epoch = names, epoch
        return trainable

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        # mask_grads mode: runs after backward (and the DDP all-reduce), before clipping and the optimizer step.
        for p in self._masked:
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict() if self.schedule is not None else None,
                "group_names": list(self.group_names), "trainable_groups": list(self.trainable_groups),
                "epoch": self.epoch, "bn": self.bn}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Runs after setup, before the strategy wraps the model: restore the schedule only. It is applied at the
        # next train epoch start (the restored epoch), which gives the same trainable set as the interrupted run
        # without freezing anything before DDP wrapping.
        saved_groups = state_dict.get("group_names") or []
        if self.group_names and saved_groups and saved_groups != self.group_names:
            raise ValueError(f"the checkpoint's GradualUnfreezing ran over groups {saved_groups} but this model "
                             f"has {self.group_names}; resume with the same model and layer_patterns.")
        if state_dict.get("schedule") is not None:
            if self.schedule is None:
                self.schedule = UnfreezeSchedule(**state_dict["schedule"])
            else:
                self.schedule.load_state_dict(state_dict["schedule"])
        self.trainable_groups = list(state_dict.get("trainable_groups", []))
        self.epoch = state_dict.get("epoch")
