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

from .._lazy import lazy_attributes
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


__getattr__, __dir__ = lazy_attributes(__name__, _ATTRIBUTES)
