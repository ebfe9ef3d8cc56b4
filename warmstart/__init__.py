"""warmstart: pretrain-then-finetune, natively, in Lightning, Hugging Face transformers and Ultralytics YOLO.

Importing warmstart is cheap: front ends and engines load on first use, so ``import warmstart`` never
imports Lightning, transformers, Ultralytics or timm.

Example:
    >>> import warmstart
    >>> warmstart.__version__
    '0.1.0'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBPACKAGES = ("core", "pretraining", "lightning_callbacks", "hf_integration", "yolo_integration")
# name -> module that defines it, imported on first attribute access (PEP 562).
_ATTRIBUTES = {
    "layer_groups": "warmstart.core",
    "freeze": "warmstart.core",
    "unfreeze": "warmstart.core",
    "param_groups": "warmstart.core",
    "apply_lora": "warmstart.core",
    "merge_lora": "warmstart.core",
    "UnfreezeSchedule": "warmstart.core",
    "pretrain": "warmstart.pretraining",
    "embed": "warmstart.pretraining",
}

__all__ = sorted(_ATTRIBUTES) + list(_SUBPACKAGES) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        value = importlib.import_module(f"warmstart.{name}")
    elif name in _ATTRIBUTES:
        value = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    else:
        raise AttributeError(f"module 'warmstart' has no attribute {name!r}")
    globals()[name] = value
    return value
