"""Small helpers shared by the Lightning callbacks: find the module they act on, refuse conflicting callbacks."""

from __future__ import annotations

from typing import Any

from torch import nn


def target_module(pl_module: nn.Module, module: str | None) -> nn.Module:
    """The sub-module a callback acts on: ``pl_module`` itself, or the attribute path ``module`` inside it.

    No ``backbone`` attribute convention: by default the callbacks use the whole LightningModule's layer groups.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2)); net.body = nn.Linear(2, 2)
        >>> target_module(net, "body") is net.body, target_module(net, None) is net
        (True, True)
    """
    if module is None:
        return pl_module
    try:
        sub = pl_module.get_submodule(module)
    except AttributeError as err:
        children = [n for n, _ in pl_module.named_children()]
        raise ValueError(f"module={module!r} names no sub-module of {type(pl_module).__name__}; "
                         f"its children are {children}. Pass an attribute path such as 'backbone'.") from err
    if next(sub.parameters(), None) is None:
        raise ValueError(f"module={module!r} has no parameters to act on")
    return sub


def _covers(a: str | None, b: str | None) -> bool:
    """True when the modules named ``a`` and ``b`` overlap (None is the whole LightningModule)."""
    if a is None or b is None:
        return True
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def check_exclusive(trainer: Any, me: Any) -> None:
    """Raise at setup when another callback fights ``me`` for the optimizer or for the trainable set.

    Two kinds of ownership: *optimizer* (rebuilds param groups: DiscriminativeLR, a ``Finetune`` with an lr rule,
    Lightning's BaseFinetuning, which adds groups mid-training and so breaks schedulers and resume) and *trainable
    set*. warmstart callbacks on the **same** ``module`` do not fight: they merge into one plan with one controller
    (``FinetunePlan.merged`` refuses an option set twice). On different but overlapping modules they would be two
    controllers undoing each other, so that is refused.

    Example:
        >>> class T: callbacks = []
        >>> check_exclusive(T(), object())
    """
    from lightning.pytorch.callbacks import BaseFinetuning

    mine = getattr(me, "_owns", ())
    for cb in trainer.callbacks:
        if cb is me:
            continue
        foreign = isinstance(cb, BaseFinetuning)
        theirs = ("optimizer", "trainable") if foreign else getattr(cb, "_owns", ())
        for kind in set(mine) & set(theirs):
            if kind == "trainable" and not foreign:
                a, b = getattr(me, "module", None), getattr(cb, "module", None)
                merged = getattr(me, "_plan_part", False) and getattr(cb, "_plan_part", False) and a == b
                if merged or not _covers(a, b):
                    continue
            what = "rebuild the optimizer's param groups" if kind == "optimizer" else "set which parameters train"
            raise ValueError(
                f"{type(me).__name__} and {type(cb).__name__} both {what}; they would undo each other. Keep one "
                f"of them, or put them on the same module= so they merge into one plan (one DiscriminativeLR or "
                f"one lr rule per run; Lightning's BaseFinetuning adds param groups mid-training and cannot be "
                f"combined with warmstart callbacks)."
            )
