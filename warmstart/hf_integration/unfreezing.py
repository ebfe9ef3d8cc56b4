"""Gradual unfreezing for ``transformers.Trainer``: a thin callback over ``warmstart.core``'s schedule.

The frozen set is a pure function of the Trainer's position (``state.epoch`` or ``state.global_step``), and
both are restored by ``trainer.train(resume_from_checkpoint=...)``, so a resumed run freezes exactly what an
uninterrupted run would. The callback also exports its arguments and the model's group names through
``ExportableState`` (saved in ``trainer_state.json`` -> ``stateful_callbacks``) so a checkpoint records what
schedule produced it, and a resume onto a different architecture fails loudly instead of freezing wrong layers.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

from warmstart._optional import require

transformers = require("transformers")

from torch import nn  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_callback import ExportableState  # noqa: E402

from warmstart.core import UnfreezeSchedule, apply_schedule, group_names, has_lora, layer_groups  # noqa: E402

logger = logging.getLogger(__name__)

UNITS = ("epoch", "step")
NEVER = 2**31 - 1  # "unfreeze at" value for groups a user's ``at`` dict leaves out (JSON-safe int)


class GradualUnfreezing(TrainerCallback, ExportableState):
    """Freeze the model's layer groups (embeddings -> each layer -> head) and unfreeze them from the top.

    Pass it in ``Trainer(callbacks=[GradualUnfreezing(...)])``. Groups come from ``warmstart.core.layer_groups``
    (or ``layer_patterns``, one regex per group, input to output); the timing is a ``core.UnfreezeSchedule``
    counted in ``unit`` ("epoch" or optimizer "step"):

    - default: only the head trains for ``head_epochs``, then one more group from the top every ``every``,
      up to ``max_groups`` groups;
    - or ``at``: one start per group (a list, input to output) or ``{group name: start}`` (groups left out
      stay frozen for the whole run).

    Every parameter must be in the optimizer from the start (freezing only toggles ``requires_grad``). The
    Trainer's default optimizer qualifies when the model is fully trainable before ``Trainer(...)``; so does
    ``optimizer_cls_and_kwargs=llrd_optimizer(model, ...)``. ``bn`` is the BatchNorm policy for frozen groups
    (``"eval"``: frozen running statistics; ``"train"``: statistics keep updating). Under DDP keep
    ``ddp_find_unused_parameters`` unset or True (frozen layers have no gradients to reduce).

    Example:
        >>> cb = GradualUnfreezing(head_epochs=1, every=1)            # head, then +1 group per epoch
        >>> cb = GradualUnfreezing(unit="step", head_epochs=100, every=50, max_groups=4)
        >>> cb.state()["args"]["unit"]
        'step'
    """

    def __init__(self, head_epochs: int = 1, every: int = 1, at: Sequence[int] | dict[str, int] | None = None,
                 max_groups: int | None = None, unit: str = "epoch", bn: str = "eval",
                 layer_patterns: Sequence[str] | None = None) -> None:
        if unit not in UNITS:
            raise ValueError(f"GradualUnfreezing unit must be one of {UNITS}, got {unit!r}")
        if bn not in ("eval", "train"):
            raise ValueError(f"GradualUnfreezing bn must be 'eval' or 'train', got {bn!r}")
        if at is not None and not isinstance(at, dict | list | tuple):
            raise ValueError(f"`at` must be a list (one start per group) or a {{group name: start}} dict, got {at!r}")
        self.head_epochs = head_epochs
        self.every = every
        self.at = dict(at) if isinstance(at, dict) else (list(at) if at is not None else None)
        self.max_groups = max_groups
        self.unit = unit
        self.bn = bn
        self.layer_patterns = list(layer_patterns) if layer_patterns is not None else None
        # Probe with a model-sized stand-in so bad numbers fail at construction, not at on_train_begin.
        probe_groups = len(self.at) if isinstance(self.at, list) else max(1, max_groups or 1)
        self._make_schedule(probe_groups, [str(i) for i in range(probe_groups)], probe=True)
        self.schedule: UnfreezeSchedule | None = None
        self.trainable_groups: list[str] = []   # names of the groups trainable right now
        self._group_names: list[str] | None = None
        self._checkpoint_group_names: list[str] | None = None  # set by the Trainer when it restores this callback
        self._applied: list[int] | None = None

    # ------------------------------------------------------------------------------------------ Trainer hooks

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, optimizer=None, **kwargs):
        if model is None:
            raise ValueError("GradualUnfreezing needs the Trainer's model; use it as Trainer(callbacks=[...]).")
        if has_lora(model):
            raise ValueError(
                "GradualUnfreezing on a LoRA model would unfreeze the frozen base weights; use LoRA "
                "(apply_lora) or gradual unfreezing, not both."
            )
        groups = layer_groups(model, self.layer_patterns)
        names = group_names(groups)
        if len(groups) < 2:
            raise ValueError(
                f"GradualUnfreezing found no layer structure in {type(model).__name__} (a single group {names}), "
                "so there is nothing to unfreeze gradually. Pass layer_patterns=[...] (one regex per group, input "
                "to output), or drop the callback."
            )
        if self._checkpoint_group_names is not None and self._checkpoint_group_names != names:
            raise ValueError(
                f"the checkpoint's GradualUnfreezing ran on layer groups {self._checkpoint_group_names}, but this "
                f"model has "
                f"{names}; resume with the same architecture and layer_patterns, or start a new run."
            )
        self._group_names = names
        self.schedule = self._make_schedule(len(groups), names)
        _check_optimizer_holds_all(model, optimizer)
        if getattr(args, "world_size", 1) > 1 and not _ddp_finds_unused(args, model):
            # DDP registers every parameter when it wraps the model; frozen ones then never get a gradient.
            raise ValueError("GradualUnfreezing under DDP needs TrainingArguments(ddp_find_unused_parameters=True): "
                             "frozen layers produce no gradients for DDP to reduce.")
        self._warn_if_schedule_outlasts_training(state)
        self._applied = None
        self._apply(model, self._position(state))

    def on_epoch_begin(self, args, state, control, model: nn.Module | None = None, **kwargs):
        if self.unit == "epoch" and self.schedule is not None:
            self._apply(model, self._position(state))

    def on_step_begin(self, args, state, control, model: nn.Module | None = None, **kwargs):
        if self.unit == "step" and self.schedule is not None:
            self._apply(model, self._position(state))

    # ------------------------------------------------------------------------------------------ checkpoint state

    def state(self) -> dict:
        """JSON-safe arguments + the model's group names, stored by the Trainer in every checkpoint."""
        return {
            "args": {"head_epochs": self.head_epochs, "every": self.every, "at": self.at,
                     "max_groups": self.max_groups, "unit": self.unit, "bn": self.bn,
                     "layer_patterns": self.layer_patterns},
            "attributes": {"_checkpoint_group_names": self._group_names},
        }

    # ------------------------------------------------------------------------------------------ internals

    def _position(self, state) -> int:
        if self.unit == "step":
            return int(state.global_step)
        # state.epoch is fractional mid-epoch (e.g. 1.5 after resuming half-way through epoch 1).
        return int(math.floor((state.epoch or 0.0) + 1e-6))

    def _apply(self, model: nn.Module, position: int) -> None:
        wanted = self.schedule.trainable_indices(position)
        if wanted == self._applied:
            return  # nothing changes between unfreeze points: keep per-step overhead at a list compare
        self._applied = apply_schedule(model, self.schedule, position, bn=self.bn, layer_patterns=self.layer_patterns)
        self.trainable_groups = [self._group_names[i] for i in self._applied]
        logger.info("GradualUnfreezing: %s %d -> trainable groups %s", self.unit, position, self.trainable_groups)

    def _make_schedule(self, num_groups: int, names: list[str], probe: bool = False) -> UnfreezeSchedule:
        at = self.at
        if isinstance(at, dict):
            unknown = [k for k in at if k not in names]
            if unknown and not probe:
                raise ValueError(f"GradualUnfreezing(at=...) names unknown layer group(s) {unknown}; this model's "
                                 f"groups are {names} (or pass layer_patterns to define your own).")
            at = None if probe else [int(at.get(n, NEVER)) for n in names]
        try:
            return UnfreezeSchedule(num_groups=num_groups, head_epochs=self.head_epochs, every=self.every,
                                    at=at, max_groups=self.max_groups)
        except (TypeError, ValueError) as err:
            where = "" if probe else f" (the model has {num_groups} layer groups: {names})"
            raise ValueError(f"GradualUnfreezing: {err}{where}") from err

    def _warn_if_schedule_outlasts_training(self, state) -> None:
        horizon = state.max_steps if self.unit == "step" else math.ceil(state.num_train_epochs or 0)
        if not horizon:
            return
        if self.schedule.at is not None:
            last = max((a for a in self.schedule.at if a != NEVER), default=0)
        else:
            last = self.schedule.final_epoch()
        if last >= horizon:
            warnings.warn(
                f"GradualUnfreezing: the schedule unfreezes its last group at {self.unit} {last} but training "
                f"ends after {horizon} {self.unit}s, so some groups never train; shorten head_epochs/every/at "
                f"or train longer.", stacklevel=2)


def _check_optimizer_holds_all(model: nn.Module, optimizer) -> None:
    """Rule 2: unfreezing must never need a new param group, so every parameter has to be there already."""
    if optimizer is None:
        return
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = [n for n, p in model.named_parameters() if id(p) not in held]
    if missing:
        raise ValueError(
            f"the optimizer holds no entry for {len(missing)} parameter(s) (e.g. {missing[:3]}), so unfreezing them "
            "would never train them. The Trainer's default optimizer skips parameters frozen before Trainer(...) "
            "was built: pass optimizer_cls_and_kwargs=warmstart.hf_integration.llrd_optimizer(model, ...) "
            "(holds all parameters), or unfreeze the model before building the Trainer."
        )


def _ddp_finds_unused(args: transformers.TrainingArguments, model: nn.Module) -> bool:
    """What the Trainer will pass as DDP's find_unused_parameters (its rule: unset -> off under checkpointing)."""
    if args.ddp_find_unused_parameters is not None:
        return bool(args.ddp_find_unused_parameters)
    checkpointing = getattr(model, "is_activation_checkpointing", False)
    return not (checkpointing or getattr(args, "activation_checkpointing", False))
