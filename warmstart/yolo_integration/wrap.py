"""``wrap(YOLO(...), plan=...)``: the same YOLO object, whose ``.train()`` applies a fine-tuning plan.

We replace ``train`` on the *instance* (never on the class, so other YOLO objects are untouched) with a thin
function that picks the warmstart trainer for the model's task, passes the configuration as one train argument
and keeps Ultralytics off the network for the run. Everything else about the object is unchanged.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from .._optional import require

require("ultralytics")

from ultralytics.utils import LOGGER  # noqa: E402

from ..core.plan import FinetunePlan  # noqa: E402
from .config import YoloWarmstartConfig, make_config, validate  # noqa: E402
from .offline import offline_guard  # noqa: E402
from .trainer import ARG, TRAINERS, WarmstartTrainerMixin  # noqa: E402


def wrap(model: Any, *, plan: FinetunePlan | dict | None = None, backbone_weights: str | Path | None = None,
         freeze: Any = None, unfreeze_schedule: dict | None = None, layer_decay: float | None = None,
         lora: bool | int | dict | None = None, bn: str = "eval", min_match: float = 1.0,
         allow_missing: str | list[str] | None = None) -> Any:
    """Return ``model`` (the same ``YOLO`` object) with ``.train()`` applying a fine-tuning plan.

    The plan (:class:`~warmstart.core.plan.FinetunePlan`, or its dict) says what to freeze, when each group starts
    training, the lr scale of each group, the BatchNorm policy and LoRA; a
    :class:`~warmstart.core.controller.FinetuneController` inside the trainer applies it at Ultralytics' hooks.
    The keyword arguments ``freeze``, ``unfreeze_schedule``, ``layer_decay``, ``lora`` and ``bn`` are shorthands
    for plan fields (an option set both ways is an error). Layer groups are ``model.N``; roles ``"backbone"``,
    ``"neck"``, ``"head"`` select all groups with that role. Bad input raises ``ValueError`` here, naming the
    valid groups and roles (a schedule that starts a group after the last epoch: when training starts).

    Args:
        model: an Ultralytics ``YOLO`` object, e.g. ``YOLO("yolov8n.yaml")`` (detect, segment, pose, obb, classify).
        plan: a ``FinetunePlan`` or dict, e.g. ``{"at": {"neck": 1, "backbone": 3}, "lr_scales": {"backbone": 0.1}}``.
        backbone_weights: a backbone export (``backbone.safetensors`` from ``warmstart pretrain --model
            ultralytics/yolov8n.yaml``, or its export folder) loaded into the layers it covers; logs "transferred
            N/M backbone tensors" and refuses a load that leaves any backbone tensor behind (ARCHITECTURE.md rule 8).
        freeze: plan ``freeze``: groups frozen the whole run (``"backbone"``, ``"neck"``, ``"all_but_head"``,
            ``"model.3"``, an index, or a list). The head always trains.
        unfreeze_schedule: plan ``at`` (``{"at": {"neck": 1, "backbone": 3}}``: epoch each role or group starts;
            groups left out are an error, except the head, which starts at 0) or ``head_epochs``/``every``/
            ``max_groups`` (``{"head_epochs": 1, "every": 1}``: head first, then one group per epoch from the top).
        layer_decay: plan ``layer_decay``, a float in (0, 1]: lr x decay per group away from the head. (The old
            dict form ``{role or group: scale}`` still works, with a DeprecationWarning: it is ``plan={"lr_scales":
            {...}}``.) Scales apply on top of Ultralytics' own ``lr0``, warmup and LR schedule.
        lora: plan ``lora``: ``True``, a rank, or ``{"r", "alpha", "targets", "dropout"}`` (defaults
            ``warmstart.core.plan.LORA_DEFAULTS``); merged into plain convolutions in every saved checkpoint.
        bn: plan ``bn``: ``"eval"`` (frozen layers keep their BatchNorm statistics) or ``"train"``.
        min_match: cross-architecture tolerance only: the fraction of tensors that must match (default: all).
        allow_missing: patterns (fnmatch or regex) of tensors that may stay at their initial values.

    Example:
        >>> from ultralytics import YOLO
        >>> model = wrap(YOLO("yolov8n.yaml", verbose=False), plan={"freeze": "backbone", "lr_scales": {"neck": 0.5}})
        >>> model.warmstart.plan, type(model).__name__
        ({'freeze': 'backbone', 'lr_scales': {'neck': 0.5}}, 'YOLO')
        >>> wrap(YOLO("yolov8n.yaml", verbose=False), freeze="model.99")
        Traceback (most recent call last):
        ...
        ValueError: freeze: unknown layer group 'model.99' (no group has that name ...
    """
    from ultralytics.engine.model import Model

    if not isinstance(model, Model):
        raise ValueError(f"wrap() takes an Ultralytics YOLO object, e.g. wrap(YOLO('yolov8n.yaml')); got "
                         f"{type(model).__name__}. For Lightning or HF models use warmstart's other front ends.")
    if model.task not in TRAINERS:
        raise ValueError(f"warmstart's YOLO integration supports the tasks {sorted(TRAINERS)}, not {model.task!r}: "
                         "its trainer does not build the model and optimizer through the hooks warmstart uses")
    cfg = make_config(plan=plan, backbone_weights=backbone_weights, freeze=freeze, unfreeze_schedule=unfreeze_schedule,
                      layer_decay=layer_decay, lora=lora, bn=bn, min_match=min_match, allow_missing=allow_missing)
    validate(model.model, cfg)
    if cfg.backbone_weights:
        # Load now as well, so a mismatched architecture fails here, and predict/val before training already use
        # it; the trainer loads it again into the model Ultralytics rebuilds for training.
        from ..core.checkpoints import load_backbone_weights

        report = load_backbone_weights(model.model, cfg.backbone_weights, min_match=cfg.min_match,
                                       allow_missing=cfg.allow_missing)
        LOGGER.info(f"warmstart: {report.summary()} from {cfg.backbone_weights}")
        model.warmstart_report = report
    model.warmstart = cfg
    model.train = types.MethodType(_train, model)
    return model


def _train(self: Any, trainer: Any = None, **kwargs: Any) -> Any:
    """``YOLO.train`` with the warmstart trainer for this task and the configuration from :func:`wrap`."""
    if ARG in kwargs:
        raise ValueError(f"pass warmstart options to wrap(), not to train() (got {ARG}=...)")
    if trainer is None:
        trainer = TRAINERS[self.task]
    elif not (isinstance(trainer, type) and issubclass(trainer, WarmstartTrainerMixin)):
        raise ValueError(f"this YOLO object is wrapped by warmstart, so train() needs a warmstart trainer; {trainer} "
                         "is not one. Subclass warmstart.yolo_integration.WarmstartDetectionTrainer (or the one for "
                         "your task) to customise it.")
    cfg: YoloWarmstartConfig = self.warmstart
    with offline_guard():
        return type(self).train(self, trainer=trainer, **{ARG: cfg.to_json()}, **kwargs)


def is_wrapped(model: Any) -> bool:
    """True when ``model`` went through :func:`wrap`.

    Example:
        >>> from ultralytics import YOLO
        >>> is_wrapped(YOLO("yolov8n.yaml", verbose=False))
        False
    """
    train = model.__dict__.get("train")
    return isinstance(train, types.MethodType) and train.__func__ is _train


__all__ = ["wrap", "is_wrapped"]
