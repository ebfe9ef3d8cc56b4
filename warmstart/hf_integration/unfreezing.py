"""Gradual unfreezing for ``transformers.Trainer``: a shell over :class:`~warmstart.hf_integration.FinetuneCallback`.

``GradualUnfreezing(...)`` turns its arguments into the schedule fragment of a
:class:`~warmstart.core.plan.FinetunePlan`; the model's shared
:class:`~warmstart.core.controller.FinetuneController` decides everything (ARCHITECTURE.md rules 1 and 10). The
trainable set is a pure function of the Trainer's position (``state.epoch`` or ``state.global_step``), both
restored by ``trainer.train(resume_from_checkpoint=...)``; the callback also exports its arguments, the group
names and the controller state through ``ExportableState`` (``trainer_state.json`` -> ``stateful_callbacks``), so
a resume onto a different architecture fails loudly instead of freezing wrong layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from warmstart._optional import require

require("transformers")

from warmstart.core import group_names, layer_groups  # noqa: E402
from warmstart.core.plan import FinetunePlan  # noqa: E402

from .plan import FinetuneCallback, _ddp_finds_unused  # noqa: E402, F401  (_ddp_finds_unused: old import path)


class GradualUnfreezing(FinetuneCallback):
    """Freeze the model's layer groups (embeddings -> each layer -> head) and unfreeze them from the top.

    Pass it in ``Trainer(callbacks=[GradualUnfreezing(...)])``. Groups come from ``warmstart.core.layer_groups``
    (or ``layer_patterns``, one regex per group, input to output); the timing is counted in ``unit``
    ("epoch", optimizer "step" or "fraction" of the run), with the plan's one meaning:

    - default: only the head trains for ``head_epochs``, then one more group from the top every ``every``,
      up to ``max_groups`` groups (the rest never train);
    - or ``at``: one start per group (a list, input to output) or ``{group name or role: start}``. A dict must
      name every group except the head (which starts at 0 unless named); groups that should never train go in
      ``freeze`` (a group name, role, regex or list of them).

    On a LoRA model (``apply_lora``) the schedule decides when each group's adapters train; base weights never do.
    Every parameter must be in the optimizer from the start (freezing only toggles ``requires_grad``): use
    ``optimizer_cls_and_kwargs=llrd_optimizer(model, ...)`` or ``plan_optimizer(model, plan)``, or a model that
    is fully trainable before ``Trainer(...)`` with the default optimizer. ``bn`` is the BatchNorm policy for
    frozen groups (``"eval"``: frozen running statistics; ``"train"``: statistics keep updating). Under DDP keep
    ``ddp_find_unused_parameters`` unset or True.

    Example:
        >>> cb = GradualUnfreezing(head_epochs=1, every=1)            # head, then +1 group per epoch
        >>> cb = GradualUnfreezing(unit="step", head_epochs=100, every=50, max_groups=4)
        >>> cb.state()["args"]["unit"], cb.plan.to_dict()
        ('step', {'head_epochs': 100, 'every': 50, 'max_groups': 4, 'unit': 'step'})
    """

    def __init__(self, head_epochs: float = 1, every: float = 1,
                 at: Sequence[float] | dict[str, float] | None = None, max_groups: int | None = None,
                 unit: str = "epoch", bn: str = "eval", layer_patterns: Sequence[str] | None = None,
                 freeze: Any = None) -> None:
        if at is not None and not isinstance(at, dict | list | tuple):
            raise ValueError(f"`at` must be a list (one start per group) or a {{group name: start}} dict, got {at!r}")
        self.head_epochs, self.every, self.max_groups = head_epochs, every, max_groups
        self.at = dict(at) if isinstance(at, dict) else (list(at) if at is not None else None)
        self.unit, self.bn, self.freeze = unit, bn, freeze
        self.layer_patterns = list(layer_patterns) if layer_patterns is not None else None
        try:  # bad numbers fail now; a list `at` is checked against the model's groups at train begin
            plan = self._plan({str(i): s for i, s in enumerate(self.at)} if isinstance(self.at, list) else self.at)
        except ValueError as err:
            raise ValueError(f"GradualUnfreezing: {err}") from None
        super().__init__(plan)
        self._checkpoint_group_names: list[str] | None = None  # set by the Trainer when it restores this callback

    def _plan(self, at: dict[str, float] | None) -> FinetunePlan:
        schedule: dict[str, Any] = {"at": at} if at is not None else {
            "head_epochs": self.head_epochs, "every": self.every, "max_groups": self.max_groups}
        return FinetunePlan(**schedule, unit=self.unit, bn=self.bn, layer_patterns=self.layer_patterns,
                            freeze=self.freeze)

    def _plan_for(self, model: nn.Module) -> FinetunePlan:
        names = group_names(layer_groups(model, self.layer_patterns))
        if len(names) < 2:
            raise ValueError(
                f"GradualUnfreezing found no layer structure in {type(model).__name__} (a single group {names}), "
                "so there is nothing to unfreeze gradually. Pass layer_patterns=[...] (one regex per group, input "
                "to output), or drop the callback.")
        if not isinstance(self.at, list):
            return self.plan
        if len(self.at) != len(names):
            raise ValueError(f"GradualUnfreezing(at=[...]) lists {len(self.at)} starts but the model has "
                             f"{len(names)} layer groups: {names}")
        return self._plan({name: start for name, start in zip(names, self.at)})

    def _saved_state(self, state: Any) -> dict | None:
        saved = super()._saved_state(state)
        if saved is None:  # a checkpoint of the pre-plan GradualUnfreezing: only its group names were saved
            names = self._checkpoint_group_names or self._saved_attributes(state).get("_checkpoint_group_names")
            return {"group_names": names} if names else None
        return saved

    def _args(self) -> dict:
        return {"head_epochs": self.head_epochs, "every": self.every, "at": self.at, "max_groups": self.max_groups,
                "unit": self.unit, "bn": self.bn, "layer_patterns": self.layer_patterns, "freeze": self.freeze}

    def state(self) -> dict:
        """JSON-safe arguments, the model's group names and the controller state, stored in every checkpoint."""
        out = super().state()
        out["attributes"]["_checkpoint_group_names"] = self.controller.group_names if self.controller else None
        return out
