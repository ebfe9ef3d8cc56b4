"""PyTorch Lightning front end: transfer-learning callbacks, each a thin shell over ``warmstart.core``.

Add one line, ``Trainer(callbacks=[...])``, to an existing LightningModule: ``Finetune`` (a whole
``FinetunePlan``), or its parts ``Freeze``, ``GradualUnfreezing``, ``DiscriminativeLR``, ``LoRA`` (merged into one
plan and one ``FinetuneController`` per module at ``setup``), and ``LoadBackboneWeights``. Names load on first
use. The SSL pretraining engine
(``SSLModule``, ``SSLDataModule``, ``KNNMonitor``, ``pretrain``) is in :mod:`warmstart.pretraining`; importing it
from here still works for one release, with a ``DeprecationWarning``.

Example:
    >>> from warmstart.lightning_callbacks import Freeze, GradualUnfreezing, DiscriminativeLR
    >>> GradualUnfreezing(head_epochs=2).bn
    'eval'
"""

from __future__ import annotations

import importlib
from typing import Any

from .._deprecated import warn_moved
from .._lazy import lazy_attributes
from .._optional import require

# Fail at import with the install hint, not later with a bare ModuleNotFoundError from a submodule.
require("lightning", "lightning")

# name -> submodule that defines it (PEP 562 lazy attributes).
_ATTRIBUTES = {
    "Finetune": "finetune",
    "Freeze": "freeze",
    "GradualUnfreezing": "unfreezing",
    "DiscriminativeLR": "discriminative_lr",
    "LoRA": "lora",
    "LoadBackboneWeights": "load_weights",
}
# Moved to warmstart.pretraining; forwarded with a DeprecationWarning until the next release.
_MOVED = ("SSLModule", "SSLDataModule", "KNNMonitor", "RunCheckpoint", "TrainingInterrupted", "pretrain")

__all__ = sorted(_ATTRIBUTES)

_lazy_getattr, __dir__ = lazy_attributes(__name__, _ATTRIBUTES)


def __getattr__(name: str) -> Any:
    if name in _MOVED:  # not cached, so every use of the old path warns (Python shows each location once)
        warn_moved(f"{__name__}.{name}", f"warmstart.pretraining.{name}")
        return getattr(importlib.import_module("warmstart.pretraining"), name)
    return _lazy_getattr(name)
