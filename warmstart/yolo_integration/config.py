"""What ``wrap()`` stores on a YOLO object, and how it maps onto the core's layer groups.

The config is plain JSON-able data (no tensors, no modules): it is written next to ``last.pt`` so that
``train(resume=...)`` gets the same freezing schedule and learning rates back, and it is resolved against the
model's layer groups (one per ``model.N``, roles backbone / neck / head) only when a model exists.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..core import LayerGroup, UnfreezeSchedule, group_names, group_scales, layer_groups, select_groups
from ..core.checkpoints import resolve_weights_path
from ..core.lora import check_lora_options
from ..core.validation import check_non_negative
from ..core.weight_keys import check_patterns

ROLES = ("backbone", "neck", "head")
LORA_DEFAULTS = {"r": 8, "alpha": 16, "targets": "auto", "dropout": 0.0}


@dataclass
class YoloWarmstartConfig:
    """Everything :func:`warmstart.yolo_integration.wrap` applies inside ``YOLO.train``.

    Group selectors accept what :func:`warmstart.core.select_groups` accepts (index, ``"model.N"``, ``"all_but_head"``)
    plus the roles ``"backbone"`` and ``"neck"``.

    Example:
        >>> cfg = YoloWarmstartConfig(freeze="backbone", layer_decay={"backbone": 0.1, "neck": 0.5})
        >>> YoloWarmstartConfig.from_json(cfg.to_json()) == cfg
        True
    """

    backbone_weights: str | None = None
    freeze: Any = None
    unfreeze_schedule: dict | None = None
    layer_decay: float | dict[str, float] | None = None
    lora: dict | None = None
    bn: str = "eval"
    min_match: float = 1.0
    allow_missing: list[str] | None = None

    @property
    def is_empty(self) -> bool:
        return not any((self.backbone_weights, self.freeze is not None, self.unfreeze_schedule, self.layer_decay,
                        self.lora))

    def to_json(self) -> str:
        """One-line JSON: it travels inside Ultralytics' train args (checkpoints, DDP workers)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | dict) -> YoloWarmstartConfig:
        """Inverse of :meth:`to_json` (also accepts the already-parsed dict)."""
        data = json.loads(text) if isinstance(text, str) else dict(text)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown warmstart option(s) {sorted(unknown)}; was this run made by a newer warmstart?")
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


def make_config(*, backbone_weights=None, freeze=None, unfreeze_schedule=None, layer_decay=None, lora=None,
                bn: str = "eval", min_match: float = 1.0, allow_missing=None) -> YoloWarmstartConfig:
    """Normalise ``wrap()``'s keyword arguments into a :class:`YoloWarmstartConfig` (no model needed yet).

    ``backbone_weights`` may be the weights file or the export folder (resolved to its ``backbone.safetensors``
    here, so the trainer and DDP workers load one file); a missing path raises FileNotFoundError naming it.
    ``min_match`` / ``allow_missing`` are ``core.checkpoints.load_backbone_weights``' partial-load options.

    Example:
        >>> make_config(lora=4).lora
        {'r': 4, 'alpha': 16, 'targets': 'auto', 'dropout': 0.0}
    """
    if bn not in ("eval", "train"):
        raise ValueError(f"bn must be 'eval' (frozen BatchNorm statistics) or 'train', got {bn!r}")
    if isinstance(unfreeze_schedule, UnfreezeSchedule):
        sched = unfreeze_schedule.state_dict()
    elif unfreeze_schedule is None or isinstance(unfreeze_schedule, dict):
        sched = dict(unfreeze_schedule) if unfreeze_schedule else None
    else:
        raise ValueError("unfreeze_schedule must be an UnfreezeSchedule or a dict of its fields, e.g. "
                         "{'head_epochs': 1, 'every': 1} or {'at': {'head': 0, 'neck': 1, 'backbone': 2}}")
    if backbone_weights is not None and not isinstance(backbone_weights, str | Path):
        raise ValueError("backbone_weights must be a path to an exported backbone (.safetensors or .pt), e.g. "
                         f"'out/exported/backbone.safetensors'; got {type(backbone_weights).__name__}")
    if backbone_weights is not None:
        # A folder means the export inside it; the error (a ValueError too) names the path that is missing.
        backbone_weights = resolve_weights_path(backbone_weights)
    if not 0 < min_match <= 1:
        raise ValueError(f"min_match must be in (0, 1], got {min_match}")
    allow_missing = check_patterns(allow_missing) or None
    if lora is True:
        lora = {}
    elif isinstance(lora, int) and not isinstance(lora, bool):
        lora = {"r": lora}
    elif lora is not None and not isinstance(lora, dict):
        raise ValueError(f"lora must be True, a rank (int) or a dict like {LORA_DEFAULTS}, got {lora!r}")
    if lora is not None:
        unknown = set(lora) - set(LORA_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown lora option(s) {sorted(unknown)}; valid: {sorted(LORA_DEFAULTS)}")
        lora = {**LORA_DEFAULTS, **lora}
        check_lora_options(lora["r"], lora["alpha"], lora["dropout"])  # fail at wrap(), not at training setup
    if layer_decay is not None and not isinstance(layer_decay, int | float | dict):
        raise ValueError("layer_decay must be a float in (0, 1] (decay per layer group from the head) or a dict "
                         "{role or group name: lr scale}, e.g. {'backbone': 0.1, 'neck': 0.5}")
    if isinstance(layer_decay, dict):
        for key, scale in layer_decay.items():
            check_non_negative(f"layer_decay[{key!r}]", scale)
    if isinstance(freeze, tuple):
        freeze = list(freeze)
    return YoloWarmstartConfig(backbone_weights=str(Path(backbone_weights).resolve()) if backbone_weights else None,
                               freeze=freeze,
                               unfreeze_schedule=sched, layer_decay=layer_decay, lora=lora, bn=bn,
                               min_match=min_match, allow_missing=allow_missing)


# ---------------------------------------------------------------------------------------------- resolution


def _indices(groups: Sequence[LayerGroup], selector: Any) -> list[int]:
    """Core selector semantics, plus role names (``"backbone"``, ``"neck"``, ``"head"``)."""
    if selector is None:
        return []
    items = [selector] if isinstance(selector, int | str) else list(selector)
    out: set[int] = set()
    for item in items:
        if isinstance(item, str) and item in ROLES:
            out |= {i for i, g in enumerate(groups) if g.role == item}
        else:
            out |= set(select_groups(groups, item))
    return sorted(out)


def head_index(groups: Sequence[LayerGroup]) -> int:
    """Index of the task head (Detect / Segment / Pose / Classify): always the last group."""
    return len(groups) - 1


def frozen_indices(groups: Sequence[LayerGroup], cfg: YoloWarmstartConfig) -> list[int]:
    """Groups ``freeze`` keeps frozen for the whole run; refuses to freeze the Detect head."""
    idx = _indices(groups, cfg.freeze)
    if head_index(groups) in idx:
        raise ValueError(f"freeze={cfg.freeze!r} selects the head ({groups[-1].name}), which always trains; "
                         "use 'all_but_head', 'backbone', 'neck' or group names like 'model.0'")
    return idx


def build_schedule(groups: Sequence[LayerGroup], cfg: YoloWarmstartConfig) -> UnfreezeSchedule | None:
    """The :class:`UnfreezeSchedule` for this model; ``at`` may be a dict keyed by role or group name."""
    if not cfg.unfreeze_schedule:
        return None
    kwargs = dict(cfg.unfreeze_schedule)
    kwargs.pop("num_groups", None)  # always the model's own count
    at = kwargs.get("at")
    if isinstance(at, dict):
        names = group_names(groups)
        bad = [k for k in at if k not in ROLES and k not in names]
        if bad:
            raise ValueError(f"unfreeze_schedule['at'] keys {bad} are neither roles {ROLES} nor groups {names}")
        epochs = []
        for g in groups:
            if g.name in at:
                epochs.append(int(at[g.name]))
            elif g.role in at:
                epochs.append(int(at[g.role]))
            elif g.role == "head":
                epochs.append(0)
            else:
                raise ValueError(f"unfreeze_schedule['at'] gives no epoch for group {g.name} (role {g.role}); "
                                 f"add its role, e.g. {{'{g.role}': 2}}")
        kwargs["at"] = epochs
    try:
        return UnfreezeSchedule(num_groups=len(groups), **kwargs)
    except TypeError as err:
        raise ValueError(f"unfreeze_schedule {cfg.unfreeze_schedule} has an unknown field: {err}") from err


def trainable_indices(groups: Sequence[LayerGroup], cfg: YoloWarmstartConfig, epoch: int) -> list[int]:
    """Groups trainable at ``epoch``: the schedule's, minus ``freeze``, plus the head (always)."""
    schedule = build_schedule(groups, cfg)
    allowed = set(schedule.trainable_indices(epoch)) if schedule else set(range(len(groups)))
    allowed -= set(frozen_indices(groups, cfg))
    allowed.add(head_index(groups))
    return sorted(allowed)


def lr_options(groups: Sequence[LayerGroup], cfg: YoloWarmstartConfig, lr: float) -> dict:
    """Keyword arguments for :func:`warmstart.core.param_groups` that realise ``cfg.layer_decay``."""
    decay = cfg.layer_decay
    if decay is None:
        return {}
    if not isinstance(decay, dict):
        return {"layer_decay": float(decay)}
    names = group_names(groups)
    bad = [k for k in decay if k not in ROLES and k not in names]
    if bad:
        raise ValueError(f"layer_decay keys {bad} are neither roles {ROLES} nor layer groups {names}")
    group_lrs = {}
    for g in groups:
        scale = decay.get(g.name, decay.get(g.role, 1.0))
        if scale < 0:
            raise ValueError(f"layer_decay[{g.name!r}/{g.role!r}] must be >= 0, got {scale}")
        group_lrs[g.name] = lr * scale
    return {"group_lrs": group_lrs}


def validate(model: nn.Module, cfg: YoloWarmstartConfig) -> list[LayerGroup]:
    """Resolve every option against ``model`` once, so bad input fails at ``wrap()`` time, not mid-training."""
    groups = layer_groups(model)
    if groups[-1].role != "head":
        raise ValueError(f"could not find the head of this YOLO model (groups {group_names(groups)})")
    frozen_indices(groups, cfg)
    schedule = build_schedule(groups, cfg)
    if schedule is not None and head_index(groups) not in schedule.trainable_indices(0):
        raise ValueError("the unfreeze schedule must train the head from epoch 0 (the Detect head always trains)")
    lr_options(groups, cfg, 1.0)
    if cfg.layer_decay is not None and not isinstance(cfg.layer_decay, dict):
        group_scales(groups, 1.0, layer_decay=float(cfg.layer_decay))
    return groups
