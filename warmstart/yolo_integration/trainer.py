"""Ultralytics trainers that apply warmstart's freezing, layer-wise LR, LoRA and pretrained backbone.

Where each piece hooks into ``BaseTrainer`` (Ultralytics 8.4), and why there:

- ``__init__``: the configuration arrives as the ``warmstart`` train argument (one JSON string) and is kept on
  ``self.args``. That is what makes the design survive the two places where Ultralytics rebuilds a trainer from
  its args alone: the multi-GPU script (it pickles ``type(trainer)`` and ``vars(trainer.args)``, then calls
  ``Trainer(overrides=args)`` in each worker) and ``train(resume=True)`` (the args come back from ``last.pt``).
- ``get_model``: Ultralytics rebuilds the model from its yaml (or checkpoint) inside the trainer, so the backbone
  weights and LoRA go onto *that* model, not onto the ``YOLO`` object's.
- ``build_optimizer``: ``_setup_train`` sets ``requires_grad=True`` on every parameter it did not freeze itself
  just before building the optimizer, so we re-apply our trainable set here, then return an optimizer over
  ``core.param_groups`` (all parameters, explicit ``lr`` per layer group). Ultralytics' ``LambdaLR`` and its warmup
  both scale each group's ``initial_lr``, so the ratios between groups hold at every iteration. Our groups are
  never tagged ``param_group="bias"``: that tag makes warmup start biases at ``warmup_bias_lr``, which would break
  the ratio during warmup.
- ``resume_training``: re-applies the trainable set once Ultralytics knows the epoch it resumes from.
- ``on_train_epoch_start`` (first in the list): the trainable set for this epoch. ``UnfreezeSchedule`` is a pure
  function of the epoch, so resume lands on the same set. BatchNorm of frozen groups is pinned to eval by the core.
- ``save_model``: checkpoints get a clean copy (LoRA merged, no warmstart objects) so ``best.pt`` loads in plain
  Ultralytics, written atomically so a kill mid-save leaves the previous ``last.pt`` intact; the adapters go to a
  small file next to ``last.pt`` for resume.
"""

from __future__ import annotations

import inspect
import json
import os
import secrets
from pathlib import Path

from torch import nn, optim

from .._optional import require

require("ultralytics")

from ultralytics.models.yolo.classify import ClassificationTrainer  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.models.yolo.obb import OBBTrainer  # noqa: E402
from ultralytics.models.yolo.pose import PoseTrainer  # noqa: E402
from ultralytics.models.yolo.segment import SegmentationTrainer  # noqa: E402
from ultralytics.utils import DEFAULT_CFG, LOGGER  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

from ..core import apply_lora, freeze, has_lora, layer_groups, param_groups, unfreeze  # noqa: E402
from . import config as cfgmod  # noqa: E402
from .config import YoloWarmstartConfig  # noqa: E402
from .lora_merge import ADAPTER_FILE, clean_copy, restore_adapters, save_adapters  # noqa: E402

ARG = "warmstart"  # the train argument (and trainer.args attribute) that carries the config


def _on_epoch_start(trainer: WarmstartTrainerMixin) -> None:
    trainer.apply_warmstart(trainer.epoch)


class WarmstartTrainerMixin:
    """The warmstart hooks, combined with each Ultralytics task trainer below.

    Pass the configuration as the ``warmstart`` train argument (what :func:`warmstart.yolo_integration.wrap`
    does for you); the class itself is importable and takes only Ultralytics' own constructor arguments, so
    Ultralytics can rebuild it anywhere from ``trainer.args``.

    Example:
        >>> from warmstart.yolo_integration.config import make_config
        >>> ws = make_config(freeze="backbone").to_json()
        >>> # YOLO("yolov8n.yaml").train(trainer=WarmstartDetectionTrainer, warmstart=ws, data="data.yaml")
        >>> WarmstartDetectionTrainer.__mro__[1].__name__
        'WarmstartTrainerMixin'
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        overrides = dict(overrides or {})
        given = YoloWarmstartConfig.coerce(overrides.pop(ARG, None))  # Ultralytics' cfg check rejects unknown keys
        super().__init__(cfg, overrides, _callbacks)
        saved = getattr(self.args, ARG, None)  # present when resuming: the run's own args from last.pt
        if self.resume and saved:
            if not given.is_empty and given != YoloWarmstartConfig.coerce(saved):
                LOGGER.warning("warmstart: resuming with the run's own configuration from its checkpoint, "
                               "not the one given to wrap()")
            given = YoloWarmstartConfig.coerce(saved)
        self.warmstart = given
        setattr(self.args, ARG, given.to_json())
        self.backbone_report = None
        if self.ddp and self.args.compile and not given.is_empty:
            raise ValueError("warmstart with multi-GPU training needs compile=False: Ultralytics then builds DDP "
                             "with static_graph=True, which cannot follow layers being frozen and unfrozen")
        # Ours runs first, so user callbacks at on_train_epoch_start already see this epoch's trainable set; the
        # DDP script hands our callbacks back to the rebuilt trainer, hence the de-duplication.
        starts = [cb for cb in self.callbacks["on_train_epoch_start"] if cb is not _on_epoch_start]
        self.callbacks["on_train_epoch_start"] = [_on_epoch_start, *starts]

    # ------------------------------------------------------------------------------------------ model

    def get_model(self, cfg=None, weights=None, verbose=True):
        """The task model, then the pretrained backbone (new runs only) and LoRA on top."""
        model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        ws = self.warmstart
        if ws.backbone_weights and not self.resume:
            from ..core.checkpoints import load_backbone_weights

            self.backbone_report = load_backbone_weights(model, ws.backbone_weights, min_match=ws.min_match,
                                                         allow_missing=ws.allow_missing)
            LOGGER.info(f"warmstart: {self.backbone_report.summary()} from {ws.backbone_weights}")
        if ws.lora:
            apply_lora(model, **ws.lora)
            if self.resume:
                restore_adapters(model, Path(self.args.resume).parent / ADAPTER_FILE)
            # build_optimizer re-applies the LoRA trainable set; until then keep Ultralytics' own freeze pass from
            # warning once per frozen base weight.
            for p in model.parameters():
                p.requires_grad_(True)
        return model

    def _load_checkpoint_state(self, ckpt):
        # The checkpoint's EMA is the merged, plain model; give it the live model's LoRA structure (same split into
        # base + adapter) so Ultralytics' strict EMA load matches.
        if self.warmstart.lora and ckpt.get("ema") is not None and not has_lora(ckpt["ema"]):
            ema = apply_lora(ckpt["ema"].float(), **self.warmstart.lora)
            restore_adapters(ema, Path(self.args.resume).parent / ADAPTER_FILE)
            ckpt = {**ckpt, "ema": ema}
        super()._load_checkpoint_state(ckpt)

    # ------------------------------------------------------------------------------------------ freezing

    def apply_warmstart(self, epoch: int) -> list[int]:
        """Make exactly the layer groups trainable that the config allows at ``epoch``; returns their indices."""
        model = unwrap_model(self.model)
        groups = layer_groups(model)
        trainable = cfgmod.trainable_indices(groups, self.warmstart, epoch)
        frozen = [i for i in range(len(groups)) if i not in trainable]
        unfreeze(model, trainable)
        if frozen:
            freeze(model, frozen, bn=self.warmstart.bn)
        # Inside trainable groups, still frozen: LoRA's base weights, and what Ultralytics freezes itself (its own
        # `freeze=` argument and the fixed DFL convolution).
        lora_keep = _lora_trainable(model, groups) if self.warmstart.lora else None
        fixed = getattr(self, "freeze_layer_names", [".dfl"])
        for name, p in model.named_parameters():
            if (lora_keep is not None and name not in lora_keep) or any(f in name for f in fixed):
                p.requires_grad_(False)
        return trainable

    def resume_training(self, ckpt):
        """Ultralytics' resume, then this run's trainable set at the epoch it resumes from.

        ``build_optimizer`` applies the set for ``start_epoch``, but on resume that runs before this method sets
        ``start_epoch`` (still 0), so until the first epoch started the model carried epoch 0's set: callbacks at
        ``on_pretrain_routine_end`` / ``on_train_start`` saw the schedule back at its start.
        """
        super().resume_training(ckpt)
        if self.resume and ckpt is not None:
            self.apply_warmstart(self.start_epoch)

    # ------------------------------------------------------------------------------------------ optimizer

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Ultralytics' optimizer choice, rebuilt over ``core.param_groups`` (all params, lr per layer group)."""
        self.apply_warmstart(self.start_epoch)  # _setup_train just re-enabled requires_grad everywhere
        base = super().build_optimizer(model, name=name, lr=lr, momentum=momentum, decay=decay, iterations=iterations)
        if self.warmstart.is_empty:
            return base
        net = unwrap_model(model)
        groups = layer_groups(net)
        # Ultralytics passes its hyper-parameters (resolved for optimizer='auto') in the param groups, not to the
        # constructor, so base.defaults holds torch's defaults (AdamW lr 1e-3, SGD momentum 0): read the groups.
        chosen = base.param_groups[-1]  # a plain group (MuSGD puts its boosted-lr groups first)
        lr = chosen["lr"]
        if type(base).__name__ == "MuSGD":
            # MuSGD orthogonalises per-tensor updates in its own groups; plain SGD keeps the per-layer lrs exact.
            LOGGER.warning("warmstart: optimizer 'auto' chose MuSGD; using SGD(nesterov) to keep per-layer lrs. "
                           "Pass optimizer='SGD' or 'AdamW' to choose explicitly.")
            cls, kwargs = optim.SGD, {"lr": lr, "momentum": chosen.get("momentum", momentum), "nesterov": True}
        else:
            cls = type(base)
            accepted = inspect.signature(cls.__init__).parameters
            skip = {"params", "weight_decay", "param_group"}  # weight decay is set per group by param_groups
            kwargs = {k: v for k, v in chosen.items() if k in accepted and k not in skip}
        pgs = param_groups(net, lr, weight_decay=decay, groups=groups, **cfgmod.lr_options(groups, self.warmstart, lr))
        for g in pgs:
            # "weight" lets Ultralytics rescale decay if it rebuilds its loader (OOM); never "bias" (module doc)
            g["param_group"] = "weight" if g["name"].endswith("/decay") else "bn"
        optimizer = cls(pgs, **kwargs)
        table = {g["name"].rsplit("/", 1)[0]: round(g["lr"], 8) for g in pgs}
        LOGGER.info(f"warmstart: {cls.__name__} with {len(pgs)} param groups; lr per layer group {table}")
        return optimizer

    def get_validator(self):
        """The task's validator; it re-checks a copy of ``self.args`` against Ultralytics' known keys, so it gets
        them without ours."""
        value = vars(self.args).pop(ARG, None)
        try:
            return super().get_validator()
        finally:
            setattr(self.args, ARG, value)

    # ------------------------------------------------------------------------------------------ saving

    def save_model(self):
        """Save checkpoints with a clean (merged, warmstart-free) EMA copy; adapters go next to ``last.pt``.

        ``last.pt`` and ``best.pt`` are written atomically (ARCHITECTURE.md rule 11): Ultralytics writes them in
        place, so a kill mid-write left a truncated ``last.pt``, which ``train(resume=True)`` cannot load, and the
        previous epoch's checkpoint was already gone. Here Ultralytics writes to hidden temporary names next to
        them, and each file it wrote replaces its target with ``os.replace`` (old file or complete new one, never a
        partial one).
        """
        live = self.ema.ema
        if self.warmstart.lora:
            save_adapters(live, self.wdir / ADAPTER_FILE)
        self.ema.ema = clean_copy(live)
        final = (self.last, self.best)
        temps = tuple(p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp") for p in final)
        self.last, self.best = temps
        try:
            saved = super().save_model()
            for tmp, path in zip(temps, final):
                if tmp.exists():  # best.pt only when this epoch is the best so far
                    os.replace(tmp, path)
            return saved
        finally:
            self.last, self.best = final
            self.ema.ema = live
            for tmp in temps:  # only left when super().save_model() raised
                tmp.unlink(missing_ok=True)


def _lora_trainable(model: nn.Module, groups) -> set[str]:
    """What ``core.apply_lora`` leaves trainable: adapters, the head, BatchNorm (recomputed, so it also holds for a
    model that was adapted in another process, e.g. the one Ultralytics pickles for its DDP workers)."""
    bn = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)
          for p, _ in mod.named_parameters(recurse=False)}
    return {n for n, _ in model.named_parameters() if ".lora_" in n} | set(groups[-1].param_names) | bn


def config_of(trainer) -> YoloWarmstartConfig:
    """The warmstart configuration a trainer (or its saved ``train_args`` dict) carries.

    Example:
        >>> from types import SimpleNamespace
        >>> config_of(SimpleNamespace(args=SimpleNamespace(warmstart='{"freeze": "backbone"}'))).freeze
        'backbone'
    """
    args = trainer.get("train_args", trainer) if isinstance(trainer, dict) else vars(trainer.args)
    value = args.get(ARG)
    return YoloWarmstartConfig.coerce(json.loads(value) if isinstance(value, str) else value)


class WarmstartDetectionTrainer(WarmstartTrainerMixin, DetectionTrainer):
    """``DetectionTrainer`` with warmstart's hooks (see the module docstring).

    Example:
        >>> issubclass(WarmstartDetectionTrainer, DetectionTrainer)
        True
    """


class WarmstartSegmentationTrainer(WarmstartTrainerMixin, SegmentationTrainer):
    """``SegmentationTrainer`` with warmstart's hooks; the Segment head is the head group.

    Example:
        >>> issubclass(WarmstartSegmentationTrainer, SegmentationTrainer)
        True
    """


class WarmstartPoseTrainer(WarmstartTrainerMixin, PoseTrainer):
    """``PoseTrainer`` with warmstart's hooks; the Pose head is the head group.

    Example:
        >>> issubclass(WarmstartPoseTrainer, PoseTrainer)
        True
    """


class WarmstartOBBTrainer(WarmstartTrainerMixin, OBBTrainer):
    """``OBBTrainer`` with warmstart's hooks; the OBB head is the head group.

    Example:
        >>> issubclass(WarmstartOBBTrainer, OBBTrainer)
        True
    """


class WarmstartClassificationTrainer(WarmstartTrainerMixin, ClassificationTrainer):
    """``ClassificationTrainer`` with warmstart's hooks; the Classify layer is the head group.

    Example:
        >>> issubclass(WarmstartClassificationTrainer, ClassificationTrainer)
        True
    """


TRAINERS = {"detect": WarmstartDetectionTrainer, "segment": WarmstartSegmentationTrainer,
            "pose": WarmstartPoseTrainer, "obb": WarmstartOBBTrainer, "classify": WarmstartClassificationTrainer}
