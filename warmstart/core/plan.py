"""``FinetunePlan``: *what* a fine-tune does, written once and read the same way by every front end.

A plan is plain data (a dataclass that round-trips through a dict, so it can live in YAML or a checkpoint). It
names layer groups but knows no model: :class:`~warmstart.core.controller.FinetuneController` checks it against
a model and applies it (ARCHITECTURE.md rule 10). Each option has exactly one meaning everywhere:

- ``freeze``: groups that never train (a selector as in :func:`warmstart.core.freeze`).
- schedule: ``head_epochs``/``every``/``max_groups`` (head first, then one more group from the top), or ``at``
  (``{group name or role: start}``; groups it leaves out are an error, except the head, which starts at 0).
  Positions count in ``unit``: ``"epoch"``, optimizer ``"step"``, or ``"fraction"`` of the whole run.
- learning rates (at most one rule): ``layer_decay`` (a float: ``lr * decay ** distance_from_head``),
  ``group_lrs`` (absolute lrs by group name/regex), ``lr_scales`` (multipliers by group name, regex or role),
  ``backbone_lr_ratio`` (every non-head group at ``lr * ratio``).
- ``bn``: BatchNorm policy of frozen groups, ``"eval"`` or ``"train"``.
- ``lora``: ``{"r", "alpha", "dropout", "targets"}``; the schedule then decides *when* each group's adapters train.
- ``anchor``: L2-SP strength ``alpha`` (a float > 0): every optimizer step pulls the pretrained (non-head) weights
  towards their values when training started by adding ``alpha * (w - w0)`` to their gradients
  (:mod:`warmstart.core.anchor`; applied by all three front ends).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .freezing import BN_POLICIES
from .lora import check_lora_options
from .param_groups import check_lr_options
from .validation import check_finite_positive, check_non_negative, check_positive_int, check_range

UNITS = ("epoch", "step", "fraction")
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.0, "targets": "auto"}


@dataclass
class FinetunePlan:
    """What to freeze, when to unfreeze, which lr each group gets, the BN policy and LoRA: one serialisable object.

    Example:
        >>> plan = FinetunePlan(head_epochs=1, every=1, layer_decay=0.7, lora={"r": 4})
        >>> plan.lora["alpha"], plan.has_schedule
        (16, True)
        >>> FinetunePlan.from_dict(plan.to_dict()) == plan
        True
        >>> FinetunePlan(layer_decay=0.7, group_lrs={"head": 1e-3})
        Traceback (most recent call last):
        ...
        ValueError: a plan takes at most one lr rule, got layer_decay, group_lrs; pick one (see FinetunePlan)
    """

    layer_patterns: list[str] | None = None
    freeze: Any = None
    head_epochs: float | None = None
    every: float = 1
    max_groups: int | None = None
    at: dict[str, float] | None = None
    unit: str = "epoch"
    layer_decay: float | None = None
    group_lrs: dict[str, float] | None = None
    lr_scales: dict[str, float] | None = None
    backbone_lr_ratio: float | None = None
    weight_decay: float | None = None
    bn: str = "eval"
    lora: dict[str, Any] | None = field(default=None)
    anchor: float | None = None

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.bn not in BN_POLICIES:
            raise ValueError(f"bn must be one of {BN_POLICIES}, got {self.bn!r}")
        if self.at is not None and self.head_epochs is not None:
            raise ValueError("a plan schedules either with at={group: start} or with head_epochs/every, not both")
        if self.at is not None:
            if not isinstance(self.at, dict) or not self.at:
                raise ValueError(f"at must be a non-empty dict {{group name or role: start}}, got {self.at!r}")
            for key, start in self.at.items():
                check_non_negative(f"at[{key!r}]", start)
        if self.head_epochs is not None:
            check_non_negative("head_epochs", self.head_epochs)
            check_range("every", self.every, 0.0, low_open=True)
        if self.max_groups is not None:
            check_positive_int("max_groups", self.max_groups)
        rules = [n for n in ("layer_decay", "group_lrs", "lr_scales", "backbone_lr_ratio") if getattr(self, n)
                 is not None]
        if len(rules) > 1:
            raise ValueError(f"a plan takes at most one lr rule, got {', '.join(rules)}; pick one (see FinetunePlan)")
        check_lr_options(layer_decay=self.layer_decay, group_lrs=self.group_lrs,
                         backbone_lr_ratio=self.backbone_lr_ratio, weight_decay=self.weight_decay)
        for key, scale in (self.lr_scales or {}).items():
            check_non_negative(f"lr_scales[{key!r}]", scale)
        if self.lora is not None:
            if self.lora is True:
                self.lora = {}
            if not isinstance(self.lora, dict):
                raise ValueError(f"lora must be a dict of {sorted(LORA_DEFAULTS)} (or True), got {self.lora!r}")
            unknown = set(self.lora) - set(LORA_DEFAULTS)
            if unknown:
                raise ValueError(f"unknown lora option(s) {sorted(unknown)}; valid: {sorted(LORA_DEFAULTS)}")
            self.lora = {**LORA_DEFAULTS, **self.lora}
            check_lora_options(self.lora["r"], self.lora["alpha"], self.lora["dropout"])
        if self.layer_patterns is not None:
            self.layer_patterns = list(self.layer_patterns)
        if self.anchor is not None:
            check_finite_positive("anchor", self.anchor)

    @property
    def has_schedule(self) -> bool:
        """True when groups start training at different times (``at`` or ``head_epochs``)."""
        return self.at is not None or self.head_epochs is not None

    @property
    def lr_rule(self) -> dict[str, Any]:
        """The one lr rule as keyword arguments (empty: every group at the base lr)."""
        return {n: getattr(self, n) for n in ("layer_decay", "group_lrs", "lr_scales", "backbone_lr_ratio")
                if getattr(self, n) is not None}

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML safe): only the fields that differ from the defaults.

        Example:
            >>> FinetunePlan(layer_decay=0.5).to_dict()
            {'layer_decay': 0.5}
        """
        default = FinetunePlan()
        return {k: v for k, v in asdict(self).items() if v != getattr(default, k)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | FinetunePlan) -> FinetunePlan:
        """Build a plan from a dict (e.g. parsed YAML); unknown keys are an error that lists the valid ones.

        Example:
            >>> FinetunePlan.from_dict({"freeze": "backbone"}).freeze
            'backbone'
        """
        if isinstance(data, FinetunePlan):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"a plan is a dict or a FinetunePlan, got {type(data).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown plan key(s) {unknown}; valid keys: {valid}")
        return cls(**data)

    def merged(self, other: FinetunePlan, *, owner: str = "", other_owner: str = "") -> FinetunePlan:
        """This plan with ``other``'s non-default fields added; a field set in both is an error naming both.

        How separate front-end objects (a Lightning ``GradualUnfreezing`` and a ``DiscriminativeLR``) become one
        plan: each contributes the fields it owns.

        Example:
            >>> FinetunePlan(head_epochs=1).merged(FinetunePlan(layer_decay=0.5)).to_dict()
            {'head_epochs': 1, 'layer_decay': 0.5}
        """
        mine, theirs = self.to_dict(), other.to_dict()
        clash = sorted(set(mine) & set(theirs) - {k for k in mine if mine[k] == theirs.get(k)})
        if clash:
            raise ValueError(f"{owner or 'one part of the plan'} and {other_owner or 'another'} both set "
                             f"{clash}; set each option in one place")
        return FinetunePlan.from_dict({**mine, **theirs})
