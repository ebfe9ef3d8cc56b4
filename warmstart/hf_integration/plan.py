"""One :class:`~warmstart.core.plan.FinetunePlan` for ``transformers.Trainer``: a callback and an optimizer factory.

``FinetuneCallback(plan)`` goes in ``Trainer(callbacks=[...])``; ``plan_optimizer(model, plan)`` goes in
``Trainer(optimizer_cls_and_kwargs=...)``. Both are thin: every decision (trainable set, LoRA, lr per group, BN
policy, resume checks) is made by one :class:`~warmstart.core.controller.FinetuneController` (ARCHITECTURE.md
rules 1 and 10).

**One controller per model.** :func:`shared_controller` keeps the controller on the model object itself (in its
``__dict__``, under ``_warmstart_plan``), together with the plan fragment each front-end part contributed
(``"callback"``, ``"optimizer"``). Whichever part the Trainer calls first builds it: the callback at
``on_init_end`` (so LoRA in the plan is injected before any optimizer exists), the optimizer factory when the
Trainer builds the optimizer, the callback again at ``on_train_begin``. A part contributing a fragment merges it
into the plan (:meth:`FinetunePlan.merged`: an option set differently by two parts is an error naming both) and the
controller is rebuilt for the merged plan; the same plan passed to both parts is one plan. The Trainer passes the
same model object to its callbacks and to the optimizer factory, so both always see the same controller.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart._optional import require

transformers = require("transformers")

from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_callback import ExportableState  # noqa: E402

from warmstart.core.anchor import ANCHOR_FILE  # noqa: E402
from warmstart.core.controller import FinetuneController  # noqa: E402
from warmstart.core.plan import FinetunePlan  # noqa: E402
from warmstart.core.validation import check_finite_positive, check_has_parameters  # noqa: E402

logger = logging.getLogger(__name__)

_SLOT = "_warmstart_plan"


@dataclass
class _PlanSlot:
    """What lives on the model: each part's plan fragment and the controller of the merged plan."""

    parts: dict[str, FinetunePlan] = field(default_factory=dict)
    controller: FinetuneController | None = None


def shared_controller(model: nn.Module, plan: FinetunePlan | dict, part: str) -> FinetuneController:
    """The model's one controller, for ``plan`` contributed by ``part`` (``"callback"`` or ``"optimizer"``).

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> a = shared_controller(m, {"head_epochs": 1}, "callback")
        >>> b = shared_controller(m, {"layer_decay": 0.5}, "optimizer")
        >>> b is shared_controller(m, {"head_epochs": 1}, "callback"), b.plan.to_dict()
        (True, {'head_epochs': 1, 'layer_decay': 0.5})
    """
    plan = FinetunePlan.from_dict(plan)
    slot = model.__dict__.get(_SLOT)
    if slot is None:
        slot = _PlanSlot()
        object.__setattr__(model, _SLOT, slot)  # plain attribute: not a submodule, not in the state_dict
    parts = {**slot.parts, part: plan}
    merged, seen = FinetunePlan(), []
    for name, fragment in parts.items():
        merged = merged.merged(fragment, owner=f"the {' and '.join(seen)} plan", other_owner=f"the {name} plan")
        seen.append(name)
    slot.parts = parts
    if slot.controller is None or slot.controller.plan != merged:
        slot.controller = FinetuneController(model, merged)
    return slot.controller


def check_anchor_arguments(args: Any) -> None:
    """Refuse an anchor where its gradient would be added to fp16-scaled gradients.

    The Trainer unscales fp16 gradients inside its clipping; with ``max_grad_norm=0`` they are still scaled when
    the anchor adds to them, which would shrink its pull by the loss scale.

    Example:
        >>> from types import SimpleNamespace
        >>> check_anchor_arguments(SimpleNamespace(fp16=True, max_grad_norm=1.0))
        >>> try:
        ...     check_anchor_arguments(SimpleNamespace(fp16=True, max_grad_norm=0.0))
        ... except ValueError as err:
        ...     print(str(err).split(":")[0])
        the plan's anchor (L2-SP) with fp16 needs gradient clipping (max_grad_norm > 0)
    """
    if getattr(args, "fp16", False) and not getattr(args, "max_grad_norm", 0):
        raise ValueError("the plan's anchor (L2-SP) with fp16 needs gradient clipping (max_grad_norm > 0): the Trainer "
                         "unscales fp16 gradients only there, and the anchor adds its pull after it; set "
                         "max_grad_norm, or use bf16")


def _is_checkpointing(model: nn.Module) -> bool:
    """Whether activation (gradient) checkpointing is on: transformers 5 name first (4.x has only the old one)."""
    flag = getattr(model, "is_activation_checkpointing", None)
    if flag is None:
        flag = getattr(model, "is_gradient_checkpointing", False)
    return bool(flag)


def _uses_reentrant(model: nn.Module) -> bool:
    """Whether the model's checkpoint function is torch's reentrant variant (or may be: not said explicitly)."""
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if func is not None:
            return getattr(func, "keywords", {}).get("use_reentrant", True) is not False
    return True


def prepare_checkpointing(model: nn.Module, who: str = "warmstart") -> bool:
    """Make activation checkpointing give gradients to trainable layers that follow frozen ones.

    Reentrant checkpointing (``use_reentrant=True``, the transformers 4.x default) recomputes a block only for
    inputs that require grad: after a frozen embedding, no input does, so every checkpointed layer gets **no**
    gradient and silently stays at its initial weights. The HF fix is ``model.enable_input_require_grads()`` (the
    embedding output then requires grad); it is a no-op for non-reentrant checkpointing and for trainable
    embeddings. Called by :class:`FinetuneCallback` at train begin (after the Trainer enabled checkpointing) and
    by ``apply_lora``. Returns whether the hook is in place; a reentrant model without
    ``enable_input_require_grads`` is refused with the fix.

    Example:
        >>> import transformers
        >>> cfg = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        ...                               intermediate_size=8, vocab_size=20)
        >>> m = transformers.BertModel(cfg)
        >>> prepare_checkpointing(m)  # no checkpointing: nothing to do
        False
        >>> m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        >>> prepare_checkpointing(m), m.embeddings(input_ids=torch.tensor([[1, 2]])).requires_grad
        (True, True)
    """
    if not _is_checkpointing(model):
        return False
    return _enable_input_grads(model, who)


def _enable_input_grads(model: nn.Module, who: str) -> bool:
    if getattr(model, "_require_grads_hook", None) is None:  # not yet registered (by us, by peft or by the user)
        enable = getattr(model, "enable_input_require_grads", None)
        try:
            if enable is not None:
                enable()
        except NotImplementedError:  # transformers 4.x: the model has no get_input_embeddings
            pass
    if getattr(model, "_require_grads_hook", None) is not None:
        return True
    if _is_checkpointing(model) and _uses_reentrant(model):
        raise ValueError(
            f"{who}: {type(model).__name__} uses reentrant activation checkpointing, which gives no gradients to "
            "trainable layers after frozen ones, and it has no input embeddings to make require grad. Use "
            "TrainingArguments(gradient_checkpointing_kwargs={'use_reentrant': False}) (or "
            "model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})).")
    return False


def _horizon(state: Any, unit: str) -> float | None:
    """How long the run is, in the plan's unit (``None``: unknown)."""
    if unit == "step":
        return state.max_steps or None
    if unit == "fraction":
        return 1.0
    return state.num_train_epochs or None


def _ddp_finds_unused(args: Any, model: nn.Module) -> bool:
    """What the Trainer will pass as DDP's find_unused_parameters (its rule: unset -> off under checkpointing)."""
    if args.ddp_find_unused_parameters is not None:
        return bool(args.ddp_find_unused_parameters)
    # transformers 5 names it activation_checkpointing; 4.x only has gradient_checkpointing
    requested = getattr(args, "activation_checkpointing", None)
    if requested is None:
        requested = getattr(args, "gradient_checkpointing", False)
    return not (_is_checkpointing(model) or requested)


class FinetuneCallback(TrainerCallback, ExportableState):
    """Apply a :class:`FinetunePlan` in a ``transformers.Trainer``: freezing, unfreezing, LoRA, BN, resume.

    Pass it in ``Trainer(callbacks=[FinetuneCallback(plan)])`` and, when the plan has an lr rule (or a schedule
    that unfreezes groups later), ``optimizer_cls_and_kwargs=plan_optimizer(model, plan)``: the optimizer must hold
    every parameter with the plan's lr per group, which the Trainer's default optimizer does not. The callback
    translates the Trainer's position (``state.epoch``, ``state.global_step``) into the controller's and applies
    it at train begin and at every epoch (``unit="epoch"``) or step start. Its state (plan, group layout,
    position) is saved in every checkpoint's ``trainer_state.json``; a resumed run checks it and applies the same
    position. Bad input (unknown group names, a group that never trains, a schedule longer than the run, an
    optimizer without every parameter or without the plan's lrs) fails at train begin, naming the valid groups.

    Example:
        >>> cb = FinetuneCallback({"head_epochs": 1, "every": 1, "layer_decay": 0.8})
        >>> cb.plan.has_schedule, cb.state()["args"]
        (True, {'plan': {'head_epochs': 1, 'layer_decay': 0.8}})
    """

    _part = "callback"

    def __init__(self, plan: FinetunePlan | dict) -> None:
        self.plan = FinetunePlan.from_dict(plan)
        self.controller: FinetuneController | None = None
        self._checkpoint_state: dict | None = None  # restored by the Trainer (restore_callback_states_...)
        self._anchor_file: str | None = None  # where this run's anchor starting values are (plan ``anchor``)

    @property
    def trainable_groups(self) -> list[str]:
        """Names of the groups training right now."""
        return list(self.controller.trainable_groups) if self.controller is not None else []

    def _bind(self, model: nn.Module | None) -> FinetuneController:
        if model is None:
            raise ValueError(f"{type(self).__name__} needs the Trainer's model; use it as Trainer(callbacks=[...]).")
        self.controller = shared_controller(model, self._plan_for(model), self._part)
        return self.controller

    def _plan_for(self, model: nn.Module) -> FinetunePlan:
        """The plan fragment this callback contributes for ``model`` (subclasses translate their arguments)."""
        return self.plan

    def _position(self, state: Any) -> float:
        return self.controller.position(epoch=state.epoch or 0.0, step=state.global_step,
                                        total_epochs=state.num_train_epochs or None,
                                        total_steps=state.max_steps or None)

    # ------------------------------------------------------------------------------------------ Trainer hooks

    def on_init_end(self, args, state, control, model: nn.Module | None = None, **kwargs):
        if model is not None:  # LoRA in the plan goes in before the Trainer builds any optimizer
            self._bind(model)

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, optimizer=None, **kwargs):
        _refuse_sharded(args, type(self).__name__)
        controller = self._bind(model)
        prepare_checkpointing(model, type(self).__name__)  # the Trainer has enabled checkpointing by now
        saved = self._saved_state(state)
        if saved is not None:
            controller.load_state_dict(saved)  # a different layout or plan raises, naming both
        if optimizer is not None:
            try:
                controller.check_optimizer(optimizer)
            except ValueError as err:  # the Trainer's default optimizer skips parameters frozen before Trainer(...)
                raise ValueError(f"{err} With the Trainer: optimizer_cls_and_kwargs=plan_optimizer(model, plan) or "
                                 "llrd_optimizer(model, ...).") from None
            if controller.plan.lr_rule and not all("lr_scale" in g for g in optimizer.param_groups):
                raise ValueError(f"the plan sets an lr rule {controller.plan.lr_rule}, but the Trainer's optimizer "
                                 "was not built from it: pass optimizer_cls_and_kwargs=plan_optimizer(model, plan). "
                                 f"Groups: {controller.group_names}")
        if controller.anchor is not None:
            self._start_anchor(args, state, controller)
        horizon = _horizon(state, controller.plan.unit)
        if horizon:
            controller.check_horizon(horizon)
        if getattr(args, "world_size", 1) > 1 and not _ddp_finds_unused(args, model):
            # DDP registers every parameter when it wraps the model; frozen ones then never get a gradient.
            raise ValueError(f"{type(self).__name__} under DDP needs TrainingArguments(ddp_find_unused_parameters="
                             "True): frozen layers produce no gradients for DDP to reduce.")
        self._apply(state)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        # After accumulation, DDP's all-reduce and the Trainer's clipping (which unscales fp16 gradients first;
        # without clipping fp16 is refused at train begin), right before optimizer.step().
        if self.controller is not None and self.controller.anchor is not None:
            self.controller.anchor.add_gradients()

    def _start_anchor(self, args: Any, state: Any, controller: FinetuneController) -> None:
        """The anchor's starting values: this run's weights now (saved to ``output_dir/ANCHOR_FILE`` when the run saves
        checkpoints), or, on resume, the ones the interrupted run saved there."""
        check_anchor_arguments(args)
        saved = self._saved_attributes(state).get("_anchor_file")
        if state.global_step:
            where = "written into output_dir when the run started; resume in the run's output_dir"
            if not saved:  # never guess a path: a file of that name elsewhere holds another run's start
                raise ValueError(f"cannot resume the plan's anchor (L2-SP): the checkpoint names no starting weights "
                                 f"({where}); start a new run")
            controller.anchor.load(saved, where)
            self._anchor_file = saved  # later checkpoints of the resumed run point at the same file
        else:
            controller.anchor.values = {}  # a new run of a reused callback starts from these weights
            controller.anchor.capture()
            # SaveStrategy is a str enum; without checkpoints there is no resume to read the file
            if args.save_strategy != "no":
                path = Path(args.output_dir) / ANCHOR_FILE
                if state.is_world_process_zero:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    controller.anchor.save(path)
                self._anchor_file = str(path.resolve())
            else:
                self._anchor_file = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.controller is not None and self.controller.plan.unit == "epoch":
            self._apply(state)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.controller is not None and self.controller.plan.unit != "epoch":
            self._apply(state)

    def _apply(self, state: Any) -> None:
        before = self.controller.trainable_groups
        after = self.controller.apply(self._position(state))
        if after != before:
            logger.info("%s: position %s -> trainable groups %s", type(self).__name__, self.controller.position_now,
                        after)

    def _saved_state(self, state: Any) -> dict | None:
        """The controller state of the checkpoint being resumed (the Trainer loads ``trainer_state.json``)."""
        if self._checkpoint_state is not None:
            return self._checkpoint_state
        return self._saved_attributes(state).get("_checkpoint_state")

    def _saved_attributes(self, state: Any) -> dict:
        """This callback's ``attributes`` in the resumed checkpoint's ``stateful_callbacks`` (empty: fresh run)."""
        if not state.global_step:
            return {}  # a fresh run: stateful_callbacks holds this run's own initial state
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):
            saved = saved[0]
        return (saved or {}).get("attributes") or {}

    # ------------------------------------------------------------------------------------------ checkpoint state

    def state(self) -> dict:
        """JSON-safe constructor arguments + the controller's state, stored by the Trainer in every checkpoint."""
        attributes: dict[str, Any] = {"_checkpoint_state": self.controller.state_dict() if self.controller else None}
        if self._anchor_file:
            attributes["_anchor_file"] = self._anchor_file
        return {"args": self._args(), "attributes": attributes}

    def _args(self) -> dict:
        return {"plan": self.plan.to_dict()}


# The key under which the optimizer kwargs carry the model: not "model"/"params"/"optimizer_dict", which the
# Trainer pops from optimizer_cls_and_kwargs for its own optimizers (LOMO, GaLore, layer-wise).
_MODEL_KEY = "finetune_model"


class PlanOptimizer(torch.optim.Optimizer):
    """The optimizer class for ``Trainer(optimizer_cls_and_kwargs=plan_optimizer(...))``: the plan's param groups.

    The Trainer (transformers 4.47 to 5.x) calls ``PlanOptimizer(its_default_groups, **kwargs)``; that builds and
    returns the real optimizer (an ``optimizer_cls`` instance) over **every** parameter of the model in the kwargs,
    one group per ``"<layer group>/<decay|no_decay>"`` with an explicit ``lr`` and ``lr_scale``, head groups first
    so the lr the Trainer logs is the head's. Being an ``Optimizer`` subclass, it takes the same path in both major
    versions (5.x would call anything else as a factory, 4.x as a class). ``PlanOptimizer()(model, plan=..., ...)``
    builds the same optimizer directly. Missing ``lr`` / ``weight_decay`` / ``optimizer_cls`` come from the
    ``TrainingArguments`` of the Trainer that is building the optimizer (see :func:`plan_optimizer`).

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> opt = PlanOptimizer()(m, plan={"layer_decay": 0.5}, lr=1e-3)
        >>> [(g["name"], g["lr"]) for g in opt.param_groups if g["name"].endswith("/decay")]
        [('2/decay', 0.001), ('1/decay', 0.0005), ('0/decay', 0.00025)]
        >>> type(PlanOptimizer(list(m.parameters()), plan={"layer_decay": 0.5}, lr=1e-3, finetune_model=m)).__name__
        'AdamW'
    """

    def __new__(cls, params: Any = None, **kwargs: Any) -> Any:
        if params is None and not kwargs:
            return super().__new__(cls)  # the direct form: PlanOptimizer()(model, ...)
        model = kwargs.pop(_MODEL_KEY, None)
        if model is None:
            raise ValueError(f"{cls.__name__}(params, ...) is the Trainer's form: build its arguments with "
                             "plan_optimizer(model, plan) or llrd_optimizer(model, ...), or call "
                             f"{cls.__name__}()(model, ...) directly.")
        _check_same_model(params, model, cls.__name__)
        return cls()(model, **kwargs)  # not a cls instance, so Python does not call __init__ on it

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        """The direct form holds no state (the Trainer's form returns another object and never gets here)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __call__(self, model: nn.Module, *, plan: dict, lr: float | None = None, weight_decay: float | None = None,
                 optimizer_cls: type[torch.optim.Optimizer] | None = None, part: str = "optimizer",
                 **optim_kwargs: Any) -> torch.optim.Optimizer:
        if optim_kwargs.pop(_MODEL_KEY, model) is not model:
            raise ValueError("the optimizer kwargs were built for another model than the one passed here")
        trainer = _building_trainer()
        args = trainer.args if trainer is not None else None
        if trainer is not None and trainer.state.global_step:  # resuming: the checkpoint's optimizer state loads
            _check_resume(trainer, model)                     # next, so check its group layout first
        controller = shared_controller(model, plan, part)
        if controller.anchor is not None and trainer is not None and "callback" not in model.__dict__[_SLOT].parts:
            raise ValueError(f"the plan's anchor={controller.plan.anchor:g} (L2-SP) is applied by FinetuneCallback at "
                             "each optimizer step: add Trainer(callbacks=[FinetuneCallback(plan)]) next to "
                             "plan_optimizer(model, plan)")
        if lr is None:
            if args is None:
                raise ValueError("no lr given and no Trainer is building this optimizer (the lr would come from "
                                 "TrainingArguments.learning_rate): pass lr=...")
            lr = args.learning_rate
        if weight_decay is None and controller.plan.weight_decay is None and args is not None:
            weight_decay = args.weight_decay  # an explicit or plan weight_decay wins over the Trainer's
        optimizer_cls, optim_kwargs = _optimizer_kind(optimizer_cls, optim_kwargs, args, model)
        groups = controller.param_groups(lr, weight_decay)
        wd = controller.plan.weight_decay if weight_decay is None else weight_decay
        return optimizer_cls(groups[::-1], **{**optim_kwargs, "lr": lr, "weight_decay": wd or 0.0})


def plan_optimizer(model: nn.Module, plan: FinetunePlan | dict, lr: float | None = None,
                   weight_decay: float | None = None,
                   optimizer_cls: type[torch.optim.Optimizer] | None = None,
                   **optim_kwargs: Any) -> tuple[type[PlanOptimizer], dict[str, Any]]:
    """``(PlanOptimizer, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)``: the plan's groups, all parameters.

    What is not given here comes from the ``TrainingArguments`` when the Trainer builds the optimizer: ``lr`` from
    ``learning_rate``; ``weight_decay`` from ``weight_decay`` (the plan's ``weight_decay``, if set, wins); the
    optimizer class and its arguments from ``optim`` (``adamw_torch``, ``adamw_torch_fused``, ``sgd``,
    ``adafactor``, ... with ``adam_beta1/2``, ``adam_epsilon``, ``optim_args``), through the Trainer's own
    ``get_optimizer_cls_and_kwargs``. An ``optim`` that builds its own parameter groups (GaLore, LOMO, layer-wise
    8-bit, ...) cannot hold the plan's lr per layer group and is refused: pass ``optimizer_cls=``. Outside a Trainer
    the defaults are ``AdamW(fused=True)`` and ``weight_decay=0``. The class uses the model's shared controller,
    so a ``FinetuneCallback`` with the same plan and this optimizer make one set of decisions. Checks the plan
    against ``model`` now (unknown groups, bad numbers, optimizer arguments the class rejects), before
    ``Trainer(...)``. Works with transformers >= 4.47 (the first with ``optimizer_cls_and_kwargs``).

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> cls, kwargs = plan_optimizer(m, {"layer_decay": 0.5}, lr=1e-3)
        >>> [round(g["lr"], 6) for g in cls()(m, **kwargs).param_groups][::2]
        [0.001, 0.0005, 0.00025]

        With a Trainer: ``Trainer(model, args, callbacks=[FinetuneCallback(plan)],
        optimizer_cls_and_kwargs=plan_optimizer(model, plan))``.
    """
    return _factory(model, FinetunePlan.from_dict(plan), lr, weight_decay, optimizer_cls, "optimizer", optim_kwargs)


def _factory(model: nn.Module, plan: FinetunePlan, lr: float | None, weight_decay: float | None,
             optimizer_cls: Any, part: str, optim_kwargs: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    if optimizer_cls is not None and not (isinstance(optimizer_cls, type)
                                          and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise ValueError(f"optimizer_cls must be a torch.optim.Optimizer subclass, got {optimizer_cls!r}")
    check_has_parameters(model, "a fine-tuning plan")
    if lr is not None:
        check_finite_positive("lr", lr)
    kwargs = dict(plan=plan.to_dict(), optimizer_cls=optimizer_cls, part=part, **optim_kwargs)
    kwargs.update({k: v for k, v in (("lr", lr), ("weight_decay", weight_decay)) if v is not None})
    try:  # build once on the real parameters (no optimizer state is allocated) so mistakes fail here
        PlanOptimizer()(model, **{"lr": 1e-3, **kwargs})
    except TypeError as err:
        name = (optimizer_cls or torch.optim.AdamW).__name__
        raise ValueError(f"{name} rejected the optimizer arguments {optim_kwargs}: {err}") from err
    return PlanOptimizer, {**kwargs, _MODEL_KEY: model}


# What TrainingArguments.optim names, when the Trainer's own mapping returns an Optimizer class with these kwargs,
# cannot take our groups: the Trainer would swap in its own parameters.
_OWN_GROUPS = {"params", "model", "optimizer_dict"}


def _optimizer_kind(optimizer_cls: type[torch.optim.Optimizer] | None, optim_kwargs: dict[str, Any], args: Any,
                    model: nn.Module) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer class and its arguments: explicit ones, else ``TrainingArguments.optim``, else fused AdamW.

    Example:
        >>> import torch
        >>> _optimizer_kind(None, {}, None, torch.nn.Linear(1, 1))
        (<class 'torch.optim.adamw.AdamW'>, {'fused': True})
    """
    if optimizer_cls is None and args is not None:
        cls, kw = transformers.Trainer.get_optimizer_cls_and_kwargs(args, model)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or _OWN_GROUPS & set(kw):
            raise ValueError(f"TrainingArguments(optim={str(args.optim)!r}) builds its own optimizer or parameter "
                             "groups, which would drop the plan's lr per layer group: pass optimizer_cls=... (e.g. "
                             "torch.optim.AdamW) to plan_optimizer / llrd_optimizer, or use optim='adamw_torch'.")
        kw = {k: v for k, v in kw.items() if k != "lr"}
        return cls, {**kw, **optim_kwargs}
    cls = optimizer_cls or torch.optim.AdamW
    if cls in (torch.optim.AdamW, torch.optim.Adam) and not {"fused", "foreach"} & optim_kwargs.keys():
        optim_kwargs = {**optim_kwargs, "fused": True}  # the Trainer's default optim ("adamw_torch_fused")
    return cls, optim_kwargs


def _check_same_model(params: Any, model: nn.Module, who: str) -> None:
    """The Trainer passes its default groups (its model's trainable parameters): they must be ``model``'s."""
    ours = {id(p) for p in model.parameters()}
    items = list(params) if not isinstance(params, torch.Tensor) else [params]
    given = [p for item in items for p in (item["params"] if isinstance(item, dict) else [item])]
    if any(id(p) not in ours for p in given):
        raise ValueError(f"the Trainer trains a different model than the one passed to {who}'s builder "
                         "(plan_optimizer(model, ...) / llrd_optimizer(model, ...)): pass the model the Trainer "
                         "trains (e.g. the PeftModel from apply_lora), and no model_init.")


def _refuse_sharded(args: Any, who: str) -> None:
    """FSDP and DeepSpeed flatten and shard parameters, so per-parameter freezing does not hold: refuse, say why.

    Example:
        >>> import types
        >>> _refuse_sharded(types.SimpleNamespace(fsdp="full_shard", deepspeed=None), "FinetuneCallback")
        Traceback (most recent call last):
        ...
        ValueError: FinetuneCallback: FSDP (fsdp='full_shard') is not supported: ...
    """
    for name, value in (("FSDP", getattr(args, "fsdp", None)), ("DeepSpeed", getattr(args, "deepspeed", None))):
        if value:
            raise ValueError(
                f"{who}: {name} ({name.lower()}={value!r}) is not supported: it flattens and shards parameters, so "
                "freezing and unfreezing layer groups per parameter (requires_grad) does not hold there. Train with "
                "DDP (the default with several GPUs under torchrun/accelerate) or on one device.")


def _building_trainer() -> Any:
    """The ``transformers.Trainer`` whose call is building this optimizer (``None``: called outside any Trainer).

    Neither the 4.x class path nor the 5.x factory path of ``create_optimizer`` hands the optimizer its
    ``TrainingArguments`` or the Trainer state (needed on resume), so they are read from the nearest Trainer method
    on the call stack, whatever its name (a subclass may build the optimizer from an override).
    """
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, transformers.Trainer) and hasattr(owner, "state"):  # not one still in __init__
            return owner
        frame = frame.f_back
    return None


def _check_resume(trainer: Any, model: nn.Module) -> None:
    """Check each FinetuneCallback's saved controller state against ``model`` before the Trainer loads the
    checkpoint's optimizer state (whose own error, "different number of parameter groups", names nothing)."""
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, FinetuneCallback):
            saved = cb._saved_state(trainer.state)
            if saved is not None:
                cb._bind(model).load_state_dict(saved)
