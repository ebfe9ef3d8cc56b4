"""Deprecated alias of :mod:`warmstart.pretraining.embedding`; ``warmstart.embed(...)``, the function, is not
deprecated (it is a lazy attribute of ``warmstart``). Importing this module warns; it goes away in the next release.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ._deprecated import alias_module

_module = alias_module(globals(), "warmstart.pretraining.embedding")


class _CallableModule(types.ModuleType):
    """Importing this submodule makes Python set the package attribute ``warmstart.embed`` to the module, replacing
    the lazily exported function; a callable module keeps ``warmstart.embed(...)`` working in either order."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _module.embed(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
