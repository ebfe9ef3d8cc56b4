"""PEP 562 lazy attributes for the front-end packages, so importing one never imports its framework."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, attributes: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """Return ``(__getattr__, __dir__)`` for ``package``: ``name`` loads from submodule ``attributes[name]``.

    Example:
        >>> getattr_, dir_ = lazy_attributes("warmstart.core", {"freeze": "freezing"})
        >>> getattr_("freeze").__name__, "freeze" in dir_()
        ('freeze', True)
    """
    # Inside the package's own __init__ this returns the module being initialised (already in sys.modules).
    namespace = vars(importlib.import_module(package))

    def __getattr__(name: str) -> Any:
        if name not in attributes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{attributes[name]}"), name)
        namespace[name] = value  # cache: the next access skips __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(attributes))

    return __getattr__, __dir__
