"""The Lightning adapter over :class:`~warmstart.core.controller.FinetuneController` shared by every warmstart callback.

Each warmstart callback (``Finetune``, ``Freeze``, ``GradualUnfreezing``, ``DiscriminativeLR``, ``LoRA``) only
*contributes plan fields*. At ``setup`` the callbacks acting on the same ``module`` merge their fragments
(``FinetunePlan.merged``, which refuses a field set twice) into one plan and share one controller, stored on the
trainer keyed by module path. The first of them in ``trainer.callbacks`` (the *leader*) translates Lightning's
hooks into controller calls; the others only hold a reference. Every decision (trainable set, lrs, BN policy,
optimizer coverage, resume check) is the controller's (ARCHITECTURE.md rules 1 and 10).

What stays here is Lightning-specific: which hook gives the position, and how freezing is carried out under the
trainer's strategy. ``DistributedDataParallel`` registers only the parameters that require grad when it wraps
the model; a parameter frozen at wrap time and unfrozen later is never all-reduced (ranks drift apart), and a
parameter frozen after wrapping makes DDP (``find_unused_parameters=False``) fail waiting for its gradient. So
for a *scheduled* plan every parameter that will ever train is trainable when the strategy wraps the model, and
the schedule is applied at each position in one of two modes:

* ``"requires_grad"``: toggles ``requires_grad`` (saves backward compute). Single device, or DDP with
  ``find_unused_parameters=True`` (``strategy="ddp_find_unused_parameters_true"``).
* ``"mask_grads"``: ``requires_grad`` stays True; the gradients of frozen groups are dropped (set to ``None``)
  just before each optimizer step, so the optimizer skips them (no update, no momentum, no weight decay). Works
  with plain ``strategy="ddp"``: ARCHITECTURE.md rule 2's "zero the group instead" without fighting the lr
  scheduler, which would overwrite a zeroed lr at its next step.

``mode="auto"`` picks ``"mask_grads"`` under DDP without ``find_unused_parameters``, else ``"requires_grad"``. A
plan without a schedule freezes once at ``setup``, before wrapping, which DDP handles natively. FSDP and
DeepSpeed shard parameters and flatten them into buffers where per-parameter ``requires_grad``/gradient masking
does not hold, so they are refused at ``setup``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .._optional import require
from ..core.controller import FinetuneController
from ..core.lora import apply_lora, has_lora
from ..core.plan import FinetunePlan
from ._common import check_exclusive, target_module

L = require("lightning", "lightning")
rank_zero_info = L.pytorch.utilities.rank_zero_info

MODES = ("auto", "requires_grad", "mask_grads")
_REGISTRY = "_warmstart_controllers"  # attribute on the Trainer: {module path: _Shared}


@dataclass
class _Shared:
    """One controller and the Lightning-side state of the callbacks that share it."""

    controller: FinetuneController
    pl_module: nn.Module
    parts: list[PlanCallback]
    mode: str
    drives_trainable: bool
    rewrites_optimizer: bool
    scales: dict[str, float] = field(default_factory=dict)  # param group name -> lr scale, once rebuilt
    logged: list[str] | None = None  # the trainable groups last reported in the log
    applied: list[str] | None = None  # the trainable groups of the last position applied from a hook

    @property
    def leader(self) -> PlanCallback:
        return self.parts[0]

    @property
    def names(self) -> str:
        return " + ".join(type(p).__name__ for p in self.parts)


class PlanCallback(L.Callback, metaclass=abc.ABCMeta):
    """Base of the warmstart callbacks: a plan fragment, and the hooks that drive the shared controller.

    Subclasses implement :meth:`plan_fragment`; ``module``, ``layer_patterns`` and ``mode`` are set by them.
    """

    _owns: tuple[str, ...] = ("trainable",)
    _drives_trainable = True  # False: the callback never touches requires_grad (DiscriminativeLR)
    module: str | None = None
    layer_patterns: list[str] | None = None
    mode: str = "auto"
    _shared: _Shared | None = None

    @property
    def _plan_part(self) -> bool:
        """True when this callback takes part in the merged plan (``Freeze(pattern=...)`` does not)."""
        return True

    @property
    def controller(self) -> FinetuneController | None:
        """The controller shared by the warmstart callbacks on this ``module`` (None before ``setup``)."""
        return self._shared.controller if self._shared is not None else None

    @abc.abstractmethod
    def plan_fragment(self, sub: nn.Module) -> FinetunePlan:
        """The plan fields this callback owns, for the module ``sub`` it acts on."""

    # ------------------------------------------------------------------------------------------ setup
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            self._setup_other_stage(pl_module)
            return
        check_exclusive(trainer, self)
        self._shared = _shared_controller(trainer, pl_module, self)

    def _setup_other_stage(self, pl_module: Any) -> None:
        # validate/test(ckpt_path=...): adapters must exist before the checkpoint's weights are loaded.
        lora = self._lora_options()
        sub = target_module(pl_module, self.module)
        if lora is not None and not has_lora(sub):
            apply_lora(sub, r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], targets=lora["targets"])

    def _lora_options(self) -> dict[str, Any] | None:
        return None

    @property
    def _leads(self) -> bool:
        return self._shared is not None and self._shared.leader is self

    # ------------------------------------------------------------------------------------------ hooks (leader)
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._leads and self._shared.rewrites_optimizer:
            from .discriminative_lr import rebuild_for_trainer  # lazy: keep submodules independent on import

            self._shared.scales = rebuild_for_trainer(trainer, pl_module, self._shared.controller, self.module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._leads:
            return
        shared = self._shared
        c = shared.controller
        if c.anchor is not None:
            # after every setup-time weights loader (LoadBackboneWeights) ran; a resumed run loaded its anchors
            c.anchor.capture()
        if c.plan.has_schedule and shared.drives_trainable:
            try:  # parameters missing now could never train once unfrozen (rule 2)
                c.check_optimizer(_AllGroups(trainer.optimizers))
            except ValueError as err:
                raise ValueError(f"{shared.names} needs every parameter in the optimizer from the start: {err} "
                                 "Or add DiscriminativeLR (an lr rule), which rebuilds it over all of them.") from None
        if c.plan.unit == "step" and c.plan.has_schedule:
            c.check_horizon(_total_steps(trainer))  # the core decides: error for at=/max_groups, else a warning

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self._leads and self._shared.drives_trainable and self._shared.controller.plan.unit == "epoch":
            self._apply(self._shared.controller.position(epoch=trainer.current_epoch))

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not (self._leads and self._shared.drives_trainable):
            return
        c = self._shared.controller
        if c.plan.unit != "epoch":
            total = _total_steps(trainer) if c.plan.unit == "fraction" else None
            pos = c.position(epoch=trainer.current_epoch, step=trainer.global_step, total_steps=total)
            if self._shared.applied is None or c.trainable_at(pos) != self._shared.applied:
                self._apply(pos)  # only when the set changes: the trainable set is not re-walked every batch
            c.position_now = float(pos)  # saved for resume even on batches that changed nothing

    def _apply(self, position: float) -> None:
        shared = self._shared
        c = shared.controller
        # mask_grads: DDP keeps the full set it wrapped (see setup); the controller masks the frozen ones' gradients.
        names = shared.applied = c.apply(position, mask_grads=shared.mode == "mask_grads")
        if names != shared.logged:
            shared.logged = list(names)
            rank_zero_info(f"warmstart {shared.names}: {c.plan.unit} {position:g}: training {len(names)}/"
                           f"{len(c.group_names)} groups {names}")

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        # Runs after backward (the DDP all-reduce, accumulation and AMP unscaling), before clipping and the step:
        # masked gradients go first, so the anchor pulls only what trains at this step (as the loss term would).
        if self._leads:
            c = self._shared.controller
            c.drop_masked_gradients()
            if c.anchor is not None:
                c.anchor.add_gradients()

    # ------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        c = self.controller
        anchor = c.anchor if c is not None and self._leads else None
        return {"controller": c.state_dict() if c is not None else None,
                **({"anchor": anchor.state_dict()} if anchor is not None and anchor.captured else {})}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Runs after setup, before the strategy wraps the model: verify the layout and plan only. The position
        # is applied at the next train epoch/batch start, which gives the interrupted run's trainable set
        # without freezing anything before DDP wrapping or configure_optimizers.
        saved = state_dict.get("controller")
        c = self.controller
        if c is not None and saved is not None:
            c.load_state_dict({**saved, "position": None})
        if c is not None and c.anchor is not None and state_dict.get("anchor") is not None:
            c.anchor.load_state_dict(state_dict["anchor"])  # the pretrained values, not the interrupted ones


class _AllGroups:
    """Several optimizers seen as one ``param_groups`` list, for ``FinetuneController.check_optimizer``."""

    def __init__(self, optimizers: list[Any]) -> None:
        self.param_groups = [g for opt in optimizers for g in getattr(opt, "_optimizer", opt).param_groups]


def _total_steps(trainer: Any) -> int | None:
    max_steps = getattr(trainer, "max_steps", -1)
    if max_steps is not None and max_steps > 0:
        return int(max_steps)
    total = getattr(trainer, "estimated_stepping_batches", None)
    return int(total) if total is not None and total != float("inf") else None


def refuse_sharded_strategy(trainer: Any, names: str) -> None:
    """FSDP and DeepSpeed flatten and shard parameters: per-parameter freezing/masking does not hold there.

    Example:
        >>> import types
        >>> from lightning.pytorch.strategies import FSDPStrategy
        >>> refuse_sharded_strategy(types.SimpleNamespace(strategy=FSDPStrategy()), "Finetune")
        Traceback (most recent call last):
        ...
        ValueError: Finetune: the FSDPStrategy (FSDPStrategy) is not supported: ...
    """
    strategy = getattr(trainer, "strategy", None)
    for cls_name in ("FSDPStrategy", "DeepSpeedStrategy"):
        cls = getattr(L.pytorch.strategies, cls_name, None)
        if cls is not None and isinstance(strategy, cls):
            raise ValueError(f"{names}: the {cls_name} ({type(strategy).__name__}) is not supported: it shards and "
                             "flattens parameters, so freezing, gradual unfreezing and per-group lrs of single "
                             "parameters do not hold. Use strategy='ddp' (gradual unfreezing masks gradients "
                             "there) or a single device.")


def resolve_mode(trainer: Any, requested: str, scheduled: bool, names: str = "GradualUnfreezing") -> str:
    """``"mask_grads"`` or ``"requires_grad"`` for the trainer's strategy (see the module docstring)."""
    strategy = getattr(trainer, "strategy", None)
    ddp = isinstance(strategy, L.pytorch.strategies.DDPStrategy)
    find_unused = bool(getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False))
    if requested == "auto":
        return "mask_grads" if ddp and not find_unused and scheduled else "requires_grad"
    if requested == "requires_grad" and ddp and not find_unused and scheduled:
        raise ValueError(
            f"{names}(mode='requires_grad') under DDP needs find_unused_parameters=True, otherwise DDP fails (or "
            "silently stops syncing) when groups are frozen. Use strategy='ddp_find_unused_parameters_true', or "
            "mode='mask_grads' (the 'auto' default)."
        )
    return requested


def _shared_controller(trainer: Any, pl_module: nn.Module, me: PlanCallback) -> _Shared:
    """The controller shared by the plan callbacks on ``me.module``: built by the first of them, found by the rest."""
    registry: dict[str | None, _Shared] = trainer.__dict__.setdefault(_REGISTRY, {})
    parts = [cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, PlanCallback) and cb._plan_part
             and cb.module == me.module]
    if me not in parts:  # setup called by hand with a trainer that does not list it
        parts = [me]
    entry = registry.get(me.module)
    if entry is not None and entry.pl_module is pl_module and me in entry.parts and me is not parts[0]:
        return entry
    names = " + ".join(type(p).__name__ for p in parts)
    refuse_sharded_strategy(trainer, names)
    sub = target_module(pl_module, me.module)
    plan, owners = FinetunePlan(), []
    for cb in parts:
        plan = plan.merged(cb.plan_fragment(sub), owner=" + ".join(owners), other_owner=type(cb).__name__)
        owners.append(type(cb).__name__)
    controller = FinetuneController(sub, plan)
    lr_rule = bool(plan.lr_rule) or plan.weight_decay is not None
    if lr_rule:
        controller.lr_scales_for(1.0)  # unknown group names in the lr rule fail here, not mid-fit
    requested = [cb.mode for cb in parts if cb.mode != "auto"]
    if len(set(requested)) > 1:
        raise ValueError(f"{names} ask for different modes {sorted(set(requested))}; set mode= in one of them")
    drives = any(cb._drives_trainable for cb in parts)
    mode = resolve_mode(trainer, requested[0] if requested else "auto", plan.has_schedule, names)
    max_epochs = getattr(trainer, "max_epochs", None)
    if plan.unit == "epoch" and plan.has_schedule and max_epochs and max_epochs > 0:
        controller.check_horizon(max_epochs)  # the core decides: error for at=/max_groups, else a warning
    shared = _Shared(controller, pl_module, parts, mode, drives, lr_rule)
    if drives:
        if plan.has_schedule:
            # Exactly what will ever train is trainable while the strategy wraps the model (DDP registers that
            # set; never-trained groups and LoRA base weights stay out) and while configure_optimizers runs; the
            # schedule is applied at the first position.
            controller.apply(0)
            controller.unfreeze_all()
        else:
            controller.apply(0)  # a fixed trainable set: freeze once, before wrapping (DDP handles it natively)
    registry[me.module] = shared
    return shared
