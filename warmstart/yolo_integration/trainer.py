"""Ultralytics trainers that apply warmstart's freezing, layer-wise LR, LoRA and pretrained backbone.

Where each piece hooks into ``BaseTrainer`` (Ultralytics 8.4), and why there:

- ``__init__``: the configuration arrives as the ``warmstart`` train argument (one JSON string) and is kept on
  ``self.args``. That is what makes the design survive the two places where Ultralytics rebuilds a trainer from
  its args alone: the multi-GPU script (it pickles ``type(trainer)`` and ``vars(trainer.args)``, then calls
  ``Trainer(overrides=args)`` in each worker) and ``train(resume=True)`` (the args come back from ``last.pt``).
- ``get_model``: Ultralytics rebuilds the model from its yaml (or checkpoint) inside the trainer, so the backbone
  weights and LoRA go onto *that* model, not onto the ``YOLO`` object's.
- ``get_model`` also builds the run's :class:`~warmstart.core.controller.FinetuneController` from the plan: it
  owns every decision (trainable set from freeze + schedule + LoRA, lr scale per group, BatchNorm policy); the
  hooks below only tell it where the run is.
- ``build_optimizer``: ``_setup_train`` sets ``requires_grad=True`` on every parameter it did not freeze itself
  just before building the optimizer, so we re-apply the controller's trainable set here, then return an optimizer
  over ``controller.param_groups`` (all parameters, explicit ``lr`` per layer group) with Ultralytics' own
  optimizer class, ``lr0`` and momentum. Ultralytics' ``LambdaLR`` and its warmup
  both scale each group's ``initial_lr``, so the ratios between groups hold at every iteration. Our groups are
  never tagged ``param_group="bias"``: that tag makes warmup start biases at ``warmup_bias_lr``, which would break
  the ratio during warmup.
- ``resume_training``: re-applies the trainable set once Ultralytics knows the epoch it resumes from; with LoRA,
  ``_load_checkpoint_state`` (which sees the checkpoint's epoch) puts that epoch's saved adapters back.
- ``on_train_epoch_start`` (first in the list): the controller's trainable set for this epoch (and
  ``on_train_batch_start`` for plans counted in steps or fractions). The schedule is a pure function of the
  position, so resume lands on the same set. BatchNorm of frozen groups is pinned to eval by the controller.
- ``optimizer_step``: the plan's ``anchor`` (L2-SP) pull goes into the gradients before Ultralytics unscales and
  clips them; its starting values are captured at the first step and saved next to ``last.pt`` for resume.
- ``save_model``: checkpoints get a clean copy (LoRA merged, no warmstart objects) so ``best.pt`` loads in plain
  Ultralytics, written atomically so a kill mid-save leaves the previous ``last.pt`` intact; the adapters go to a
  small file next to ``last.pt`` for resume (pending before ``last.pt``, renamed after it: see ``lora_merge``).
"""

from __future__ import annotations

import inspect
import json
import os
import secrets
from pathlib import Path

from torch import optim

from .._optional import require

require("ultralytics")

from ultralytics.models.yolo.classify import ClassificationTrainer  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.models.yolo.obb import OBBTrainer  # noqa: E402
from ultralytics.models.yolo.pose import PoseTrainer  # noqa: E402
from ultralytics.models.yolo.segment import SegmentationTrainer  # noqa: E402
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

from ..core import apply_lora, has_lora  # noqa: E402
from ..core.anchor import ANCHOR_FILE  # noqa: E402
from ..core.controller import FinetuneController  # noqa: E402
from .config import YoloWarmstartConfig  # noqa: E402
from .lora_merge import (  # noqa: E402
    ADAPTER_FILE,
    PENDING_ADAPTER_FILE,
    adapters_file_for,
    clean_copy,
    restore_adapters,
    save_adapters,
)

ARG = "warmstart"  # the train argument (and trainer.args attribute) that carries the config


def _on_epoch_start(trainer: WarmstartTrainerMixin) -> None:
    trainer.warmstart_batch = 0
    trainer.apply_warmstart(trainer.epoch)


def _on_batch_start(trainer: WarmstartTrainerMixin) -> None:
    # Plans counted in optimizer steps or fractions of the run can move inside an epoch; epoch plans cannot.
    controller = getattr(trainer, "controller", None)
    if controller is not None and controller.plan.unit != "epoch":
        trainer.apply_warmstart(trainer.epoch, trainer.warmstart_batch)
    trainer.warmstart_batch = getattr(trainer, "warmstart_batch", 0) + 1


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
        for event, ours in (("on_train_epoch_start", _on_epoch_start), ("on_train_batch_start", _on_batch_start)):
            others = [cb for cb in self.callbacks[event] if cb is not ours]
            self.callbacks[event] = [ours, *others]

    # ------------------------------------------------------------------------------------------ model

    def get_model(self, cfg=None, weights=None, verbose=True):
        """The task model, then the pretrained backbone (new runs only), then the plan's controller (which adds
        LoRA); on resume the saved adapters come back later, in ``_load_checkpoint_state``."""
        model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        ws = self.warmstart
        if ws.backbone_weights and not self.resume:
            from ..core.checkpoints import load_backbone_weights

            self.backbone_report = load_backbone_weights(model, ws.backbone_weights, min_match=ws.min_match,
                                                         allow_missing=ws.allow_missing)
            LOGGER.info(f"warmstart: {self.backbone_report.summary()} from {ws.backbone_weights}")
        self.controller = FinetuneController(model, ws.plan)
        if ws.lora:
            # on resume the saved adapters come back in _load_checkpoint_state, which knows the checkpoint's epoch
            # build_optimizer applies the plan's trainable set; until then keep Ultralytics' own freeze pass from
            # warning once per frozen base weight.
            for p in model.parameters():
                p.requires_grad_(True)
        return model

    def optimizer_step(self):
        """Ultralytics' step (unscale, clip at 10, step, EMA), with the plan's anchor pull added to the gradients
        first: before clipping, as in the Lightning front end, and multiplied by the AMP scale, which the unscale
        takes off again."""
        anchor = self.controller.anchor
        if anchor is not None:
            if not anchor.captured:  # a new run: nothing has stepped yet, so these are the starting weights
                anchor.capture()
                if RANK in {-1, 0}:  # written before any last.pt, so every last.pt has its anchor file
                    anchor.save(self.wdir / ANCHOR_FILE)
            anchor.add_gradients(scale=self.scaler.get_scale() if self.scaler.is_enabled() else 1.0)
        super().optimizer_step()

    def _load_checkpoint_state(self, ckpt):
        # The checkpoint's EMA is the merged, plain model; give it the live model's LoRA structure (same split into
        # base + adapter) so Ultralytics' strict EMA load matches.
        anchor = self.controller.anchor
        if anchor is not None:  # the interrupted run's starting weights, not the ones it stopped at
            anchor.load(Path(self.args.resume).parent / ANCHOR_FILE, "written next to last.pt when the run started")
        lora = self.warmstart.lora
        if lora:
            # The adapters saved with this checkpoint's epoch (a kill between the adapters file and last.pt leaves
            # one of the two files at that epoch); the live model gets them in place, so the optimizer built on
            # its parameters keeps pointing at them.
            epoch = ckpt.get("epoch")
            adapters = adapters_file_for(Path(self.args.resume).parent, epoch)
            restore_adapters(unwrap_model(self.model), adapters, epoch)
            if ckpt.get("ema") is not None and not has_lora(ckpt["ema"]):
                ema = apply_lora(ckpt["ema"].float(), r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"],
                                 targets=lora["targets"])
                restore_adapters(ema, adapters, epoch)
                ckpt = {**ckpt, "ema": ema}
        super()._load_checkpoint_state(ckpt)

    # ------------------------------------------------------------------------------------------ freezing

    def warmstart_position(self, epoch: float, batch: int = 0) -> float:
        """The controller's schedule position at ``batch`` of ``epoch`` (epochs, optimizer steps or fraction)."""
        nb = max(len(self.train_loader), 1) if getattr(self, "train_loader", None) is not None else 1
        step = (int(epoch) * nb + batch) // max(int(getattr(self, "accumulate", 1) or 1), 1)
        return self.controller.position(epoch=epoch + batch / nb, step=step, total_epochs=self.epochs,
                                        total_steps=self._total_steps())

    def _total_steps(self) -> int | None:
        if getattr(self, "train_loader", None) is None:
            return None
        return self.epochs * len(self.train_loader) // max(int(getattr(self, "accumulate", 1) or 1), 1)

    def apply_warmstart(self, epoch: float, batch: int = 0) -> list[str]:
        """The controller's trainable set and BN policy at ``batch`` of ``epoch``; returns the trainable groups.

        Afterwards what Ultralytics freezes itself (its own ``freeze=`` argument and the fixed DFL convolution)
        stays frozen: that is Ultralytics' decision, not the plan's.
        """
        return self.controller.apply(self.warmstart_position(epoch, batch),
                                     keep_frozen=getattr(self, "freeze_layer_names", [".dfl"]))

    def resume_training(self, ckpt):
        """Ultralytics' resume, then this run's trainable set at the epoch it resumes from.

        ``build_optimizer`` applies the set for ``start_epoch``, but on resume that runs before this method sets
        ``start_epoch`` (still 0), so until the first epoch started the model carried epoch 0's set: callbacks at
        ``on_pretrain_routine_end`` / ``on_train_start`` saw the schedule back at its start. The plan itself came
        back from ``last.pt``'s train args, and Ultralytics resumes at epoch boundaries, so the epoch is the whole
        schedule position.
        """
        super().resume_training(ckpt)
        if self.resume and ckpt is not None:
            self.apply_warmstart(self.start_epoch)

    # ------------------------------------------------------------------------------------------ optimizer

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Ultralytics' optimizer choice (class, ``lr0``, momentum), rebuilt over the controller's param groups
        (all params, explicit lr per layer group); refuses a schedule that starts a group after the last epoch."""
        self.controller.check_horizon(self._horizon())
        self.apply_warmstart(self.start_epoch)  # _setup_train just re-enabled requires_grad everywhere
        base = super().build_optimizer(model, name=name, lr=lr, momentum=momentum, decay=decay, iterations=iterations)
        if self.warmstart.is_empty:
            return base
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
        pgs = self.controller.param_groups(lr, weight_decay=decay)
        for g in pgs:
            # "weight" lets Ultralytics rescale decay if it rebuilds its loader (OOM); never "bias" (module doc)
            g["param_group"] = "weight" if g["name"].endswith("/decay") else "bn"
        optimizer = cls(pgs, **kwargs)
        self.controller.check_optimizer(optimizer)
        table = {g["name"].rsplit("/", 1)[0]: round(g["lr"], 8) for g in pgs}
        LOGGER.info(f"warmstart: {cls.__name__} with {len(pgs)} param groups; lr per layer group {table}")
        return optimizer

    def _horizon(self) -> float:
        """The run's length in the plan's unit (epochs, or optimizer steps)."""
        if self.controller.plan.unit == "step":
            return float(self._total_steps() or 0)
        return float(self.epochs)

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
        pending = self.wdir / PENDING_ADAPTER_FILE
        if self.warmstart.lora:  # before last.pt, renamed after it (lora_merge's module docstring says why)
            save_adapters(live, pending, epoch=self.epoch)
        self.ema.ema = clean_copy(live)
        final = (self.last, self.best)
        temps = tuple(p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp") for p in final)
        self.last, self.best = temps
        try:
            saved = super().save_model()
            for tmp, path in zip(temps, final):
                if tmp.exists():  # best.pt only when this epoch is the best so far
                    os.replace(tmp, path)
            if self.warmstart.lora:
                os.replace(pending, self.wdir / ADAPTER_FILE)
            return saved
        finally:
            self.last, self.best = final
            self.ema.ema = live
            for tmp in temps:  # only left when super().save_model() raised
                tmp.unlink(missing_ok=True)


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
