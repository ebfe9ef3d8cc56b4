"""Old import paths that keep working for one release, with a ``DeprecationWarning`` naming the new one."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType


def warn_moved(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is now ``new``; ``stacklevel`` 3 points at the caller of the function that calls this.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_moved("warmstart.a", "warmstart.b")
        >>> str(caught[0].message)
        'warmstart.a moved to warmstart.b; the old path will be removed in the next release.'
    """
    warnings.warn(f"{old} moved to {new}; the old path will be removed in the next release.", DeprecationWarning,
                  stacklevel=stacklevel)


def alias_module(namespace: dict, new: str) -> ModuleType:
    """Make the module whose globals are ``namespace`` a deprecated alias of module ``new``: warn, then copy every
    name of ``new`` (private ones too) so ``from old import x`` returns the very same object as ``from new import x``.

    Call it at the top level of the old module; the warning points at the statement that imported it (importlib's
    own frames are skipped by ``warnings``).
    """
    warn_moved(namespace["__name__"], new, stacklevel=4)
    module = importlib.import_module(new)
    namespace.update({k: v for k, v in vars(module).items() if not (k.startswith("__") and k.endswith("__"))})
    if hasattr(module, "__all__"):
        namespace["__all__"] = list(module.__all__)
    return module
