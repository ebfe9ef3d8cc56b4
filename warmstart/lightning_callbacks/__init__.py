"""PyTorch Lightning front end: transfer-learning callbacks and the SSL pretraining engine.

Add one line, ``Trainer(callbacks=[...])``, to an existing LightningModule: ``Freeze``, ``GradualUnfreezing``,
``DiscriminativeLR``, ``LoRA``, ``LoadBackboneWeights``. Each is a thin shell over ``warmstart.core``. The SSL side
(``SSLModule``, ``SSLDataModule``, ``KNNMonitor``, ``pretrain``) lives here too. Names load on first use.

Example:
    >>> from warmstart.lightning_callbacks import Freeze, GradualUnfreezing, DiscriminativeLR
    >>> GradualUnfreezing(head_epochs=2).bn
    'eval'
"""

from __future__ import annotations

import importlib
from typing import Any

from .._optional import require

# Fail at import with the install hint, not later with a bare ModuleNotFoundError from a submodule.
require("lightning", "lightning")

# name -> submodule that defines it (PEP 562 lazy attributes).
_ATTRIBUTES = {
    "Freeze": "freeze",
    "GradualUnfreezing": "unfreezing",
    "DiscriminativeLR": "discriminative_lr",
    "LoRA": "lora",
    "LoadBackboneWeights": "load_weights",
    "SSLModule": "ssl_module",
    "SSLDataModule": "ssl_data",
    "KNNMonitor": "knn",
    "pretrain": "pretraining",
}

__all__ = sorted(_ATTRIBUTES)


def __getattr__(name: str) -> Any:
    if name not in _ATTRIBUTES:
        raise AttributeError(f"module 'warmstart.lightning_callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_ATTRIBUTES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
