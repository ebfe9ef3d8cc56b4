"""One helper for optional dependencies, so every front end fails the same clear way."""

from __future__ import annotations

import importlib
from types import ModuleType

_EXTRA_OF = {
    "lightning": "lightning",
    "transformers": "hf",
    "peft": "hf",
    "accelerate": "hf",
    "ultralytics": "yolo",
    "timm": "timm",
    "lightly": "ssl",
    "torchvision": "timm",
    "sklearn": "demo",
    "matplotlib": "demo",
}


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise an ImportError naming the extra that installs it.

    Example:
        >>> require("torch").__name__
        'torch'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = extra or _EXTRA_OF.get(top, "all")
        raise ImportError(
            f"warmstart needs '{top}' for this feature, and it is not importable ({err}). "
            f"Install it with: pip install 'warmstart[{extra}]'"
        ) from err
