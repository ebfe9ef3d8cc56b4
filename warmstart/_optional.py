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


def require_installed(module: str, extra: str | None = None) -> None:
    """Raise ``require``'s ImportError if ``module`` cannot be found, without importing it (keeps imports lazy).

    Example:
        >>> require_installed("torch")
    """
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocking finder raises; a None entry in sys.modules gives ValueError
        found = False
    if not found:
        require(module, extra)
