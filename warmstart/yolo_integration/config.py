"""What ``wrap()`` stores on a YOLO object: a :class:`~warmstart.core.plan.FinetunePlan` plus the backbone load.

The config is plain JSON-able data (no tensors, no modules). It travels as one train argument inside
Ultralytics' ``trainer.args``, so DDP workers and ``train(resume=True)`` (the args come back from ``last.pt``) get
the same plan. Every fine-tuning decision the plan implies is made by
:class:`~warmstart.core.controller.FinetuneController` (ARCHITECTURE.md rules 1 and 10); this module only
translates ``wrap()``'s keyword arguments into a plan, one meaning each:

============================================  =====================================================
``wrap()`` keyword                            plan
============================================  =====================================================
``freeze=X``                                  ``{"freeze": X}``
``unfreeze_schedule={"at": {...}}``           ``{"at": {...}}``
``unfreeze_schedule={"head_epochs", "every"}``  ``{"head_epochs": ..., "every": ..., "max_groups": ...}``
``layer_decay=0.8`` (a float)                 ``{"layer_decay": 0.8}``
``layer_decay={role or group: scale}``        ``{"lr_scales": {...}}`` (deprecated spelling)
``lora=True`` / ``lora=4`` / ``lora={...}``   ``{"lora": {}}`` / ``{"lora": {"r": 4}}`` / ``{"lora": {...}}``
``bn="train"``                                ``{"bn": "train"}``
============================================  =====================================================
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..core import UnfreezeSchedule
from ..core.checkpoints import resolve_weights_path
from ..core.controller import FinetuneController
from ..core.plan import FinetunePlan
from ..core.weight_keys import check_patterns

_SCHEDULE_KEYS = ("at", "head_epochs", "every", "max_groups")
_LEGACY_KEYS = ("freeze", "unfreeze_schedule", "layer_decay", "lora", "bn")  # configs written before plans


@dataclass
class YoloWarmstartConfig:
    """Everything :func:`warmstart.yolo_integration.wrap` applies inside ``YOLO.train``: the plan (as a dict)
    and the pretrained backbone to load.

    The read-only properties (``freeze``, ``unfreeze_schedule``, ``lr_rule``, ``lora``, ``bn``) are views of the
    plan, for inspection.

    Example:
        >>> cfg = YoloWarmstartConfig(plan={"freeze": "backbone", "lr_scales": {"neck": 0.5}})
        >>> YoloWarmstartConfig.from_json(cfg.to_json()) == cfg
        True
        >>> YoloWarmstartConfig.from_json('{"freeze": "backbone", "layer_decay": {"neck": 0.5}}') == cfg
        True
        >>> cfg.freeze, cfg.finetune_plan.lr_rule
        ('backbone', {'lr_scales': {'neck': 0.5}})
    """

    backbone_weights: str | None = None
    plan: dict[str, Any] = field(default_factory=dict)
    min_match: float = 1.0
    allow_missing: list[str] | None = None

    def __post_init__(self) -> None:
        self.plan = FinetunePlan.from_dict(self.plan).to_dict()  # validated and normalised (defaults dropped)

    @property
    def finetune_plan(self) -> FinetunePlan:
        """The plan as a :class:`FinetunePlan`."""
        return FinetunePlan.from_dict(self.plan)

    @property
    def is_empty(self) -> bool:
        """True when the config changes nothing about a plain Ultralytics run."""
        return not self.backbone_weights and not self.plan

    @property
    def freeze(self) -> Any:
        """The plan's ``freeze`` selector."""
        return self.plan.get("freeze")

    @property
    def unfreeze_schedule(self) -> dict | None:
        """The plan's schedule fields (``at`` or ``head_epochs``/``every``/``max_groups``), or None."""
        sched = {k: self.plan[k] for k in _SCHEDULE_KEYS if k in self.plan}
        if "head_epochs" not in sched:
            sched.pop("every", None)
        return sched or None

    @property
    def lora(self) -> dict | None:
        """The plan's LoRA options (defaults filled in), or None."""
        return self.finetune_plan.lora

    @property
    def bn(self) -> str:
        """The plan's BatchNorm policy for frozen groups."""
        return self.finetune_plan.bn

    def to_json(self) -> str:
        """One-line JSON: it travels inside Ultralytics' train args (checkpoints, DDP workers).

        ``unfreeze_schedule`` is written too, as a read-only view of the plan for whoever inspects ``last.pt``.
        """
        data = {**asdict(self), "unfreeze_schedule": self.unfreeze_schedule}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | dict) -> YoloWarmstartConfig:
        """Inverse of :meth:`to_json` (also accepts the already-parsed dict)."""
        data = json.loads(text) if isinstance(text, str) else dict(text)
        legacy = {k: data.pop(k) for k in _LEGACY_KEYS if k in data}
        if "plan" not in data and any(v is not None for v in legacy.values()):
            # A config written before plans existed (e.g. in the train args of an older run's last.pt).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                data["plan"] = plan_from_kwargs(**{k: v for k, v in legacy.items() if v is not None}).to_dict()
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown warmstart option(s) {sorted(unknown)}; was this run made by another "
                             f"warmstart version? Valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)

    @classmethod
    def coerce(cls, value: Any) -> YoloWarmstartConfig:
        """A config from a config, its JSON, its dict, or ``None`` (empty config).

        Example:
            >>> YoloWarmstartConfig.coerce(None).is_empty
            True
        """
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls.from_json(value)


def plan_from_kwargs(*, freeze: Any = None, unfreeze_schedule: Any = None, layer_decay: Any = None,
                     lora: Any = None, bn: str = "eval") -> FinetunePlan:
    """Translate ``wrap()``'s fine-tuning keyword arguments into a :class:`FinetunePlan` (table in the module doc).

    Example:
        >>> plan_from_kwargs(freeze="backbone", unfreeze_schedule={"head_epochs": 1}, layer_decay=0.8).to_dict()
        {'freeze': 'backbone', 'head_epochs': 1, 'layer_decay': 0.8}
        >>> plan_from_kwargs(lora=4).lora
        {'r': 4, 'alpha': 16, 'dropout': 0.0, 'targets': 'auto'}
    """
    data: dict[str, Any] = {}
    if freeze is not None:
        data["freeze"] = list(freeze) if isinstance(freeze, tuple) else freeze
    if isinstance(unfreeze_schedule, UnfreezeSchedule):
        if unfreeze_schedule.at is not None:
            raise ValueError("an UnfreezeSchedule with a list at=[...] needs the model's groups; pass "
                             "unfreeze_schedule={'at': {group name or role: epoch}} instead")
        unfreeze_schedule = {"head_epochs": unfreeze_schedule.head_epochs, "every": unfreeze_schedule.every,
                             "max_groups": unfreeze_schedule.max_groups}
    if unfreeze_schedule is not None:
        if not isinstance(unfreeze_schedule, dict):
            raise ValueError("unfreeze_schedule must be a dict, e.g. {'head_epochs': 1, 'every': 1} or "
                             "{'at': {'neck': 1, 'backbone': 2}}")
        unknown = sorted(set(unfreeze_schedule) - set(_SCHEDULE_KEYS))
        if unknown:
            raise ValueError(f"unfreeze_schedule has unknown key(s) {unknown}; valid: {list(_SCHEDULE_KEYS)}")
        data.update({k: v for k, v in unfreeze_schedule.items() if v is not None})
    if isinstance(layer_decay, dict):
        warnings.warn("layer_decay={role or group: scale} is deprecated: pass plan={'lr_scales': {...}} "
                      "(layer_decay is a float: lr x decay per group away from the head)",
                      DeprecationWarning, stacklevel=3)
        data["lr_scales"] = dict(layer_decay)
    elif layer_decay is not None:
        if isinstance(layer_decay, bool) or not isinstance(layer_decay, int | float):
            raise ValueError("layer_decay must be a float in (0, 1] (lr x decay per layer group away from the "
                             f"head), got {layer_decay!r}; per-group scales go in plan={{'lr_scales': {{...}}}}")
        data["layer_decay"] = float(layer_decay)
    if lora is True:
        data["lora"] = {}
    elif isinstance(lora, int) and not isinstance(lora, bool):
        data["lora"] = {"r": lora}
    elif lora is not None and lora is not False:
        data["lora"] = lora
    data["bn"] = bn
    return FinetunePlan.from_dict(data)


def make_config(*, plan: FinetunePlan | dict | None = None, backbone_weights: str | Path | None = None,
                min_match: float = 1.0, allow_missing: str | list[str] | None = None,
                **plan_kwargs: Any) -> YoloWarmstartConfig:
    """Normalise ``wrap()``'s arguments into a :class:`YoloWarmstartConfig` (no model needed yet).

    ``plan`` and the old keyword arguments (``freeze``, ``unfreeze_schedule``, ``layer_decay``, ``lora``,
    ``bn``) combine; an option set in both is an error. ``backbone_weights`` may be the weights file or the export
    folder (resolved to its ``backbone.safetensors`` here, so the trainer and DDP workers load one file); a missing
    path raises FileNotFoundError naming it. ``min_match`` / ``allow_missing`` are
    ``core.checkpoints.load_backbone_weights``' partial-load options.

    Example:
        >>> make_config(lora=4).lora
        {'r': 4, 'alpha': 16, 'dropout': 0.0, 'targets': 'auto'}
        >>> make_config(plan={"layer_decay": 0.8}) == make_config(layer_decay=0.8)
        True
    """
    merged = plan_from_kwargs(**plan_kwargs)
    if plan is not None:
        merged = FinetunePlan.from_dict(plan).merged(merged, owner="plan=", other_owner="wrap()'s keyword arguments")
    if backbone_weights is not None and not isinstance(backbone_weights, str | Path):
        raise ValueError("backbone_weights must be a path to an exported backbone (.safetensors or .pt), e.g. "
                         f"'out/exported/backbone.safetensors'; got {type(backbone_weights).__name__}")
    if backbone_weights is not None:
        # A folder means the export inside it; the error (a ValueError too) names the path that is missing.
        backbone_weights = str(Path(resolve_weights_path(backbone_weights)).resolve())
    if not 0 < min_match <= 1:
        raise ValueError(f"min_match must be in (0, 1], got {min_match}")
    return YoloWarmstartConfig(backbone_weights=backbone_weights, plan=merged.to_dict(), min_match=min_match,
                               allow_missing=check_patterns(allow_missing) or None)


def validate(model: nn.Module, cfg: YoloWarmstartConfig) -> FinetuneController:
    """Check the plan against ``model`` once, so bad input fails at ``wrap()`` time, not mid-training.

    Builds a controller without LoRA (the groups are the same; ``model`` is left untouched) and resolves every
    selector and the lr rule. The returned controller is for inspection only.
    """
    plan = cfg.finetune_plan
    ctl = FinetuneController(model, FinetunePlan.from_dict({**plan.to_dict(), "lora": None}))
    if ctl.groups[-1].role != "head":
        raise ValueError(f"could not find the head of this YOLO model (groups {ctl.group_names})")
    if len(ctl.groups) - 1 in ctl.frozen:
        raise ValueError(f"freeze={plan.freeze!r} selects the head ({ctl.group_names[-1]}), which always trains; "
                         f"freeze roles 'backbone'/'neck' or groups from {ctl.group_names[:-1]}")
    ctl.lr_scales_for(1.0)  # resolves lr_scales / group_lrs keys
    return ctl
