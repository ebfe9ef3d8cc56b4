"""The pretraining engine: self-supervised pretraining / distillation of a backbone on a Lightning Trainer, and
pooled features of an image folder.

``pretrain`` (``run.py``) checks the input, builds the ``Trainer`` from ``SSLModule`` (``ssl_module.py``, any
``warmstart.core.ssl`` method), ``SSLDataModule`` (``ssl_data.py``, seeded views, resumable epochs), ``KNNMonitor``
(``knn.py``) and ``RunCheckpoint`` (``run_checkpoint.py``, ARCHITECTURE.md rule 11), then exports the backbone in
its native layout. ``embed`` (``embedding.py``) needs no Lightning.

Names load on first use, so importing this package imports neither Lightning nor lightly. No submodule is named
like an export (``pretrain``, ``embed``): importing it would replace the function as the package attribute.

Example:
    >>> import warmstart.pretraining as wp
    >>> wp.RunCheckpoint("out/checkpoints", every=100).every_steps
    100
"""

from __future__ import annotations

from .._lazy import lazy_attributes

# name -> submodule that defines it (PEP 562 lazy attributes).
_ATTRIBUTES = {
    "pretrain": "run",
    "SSLModule": "ssl_module",
    "SSLDataModule": "ssl_data",
    "KNNMonitor": "knn",
    "RunCheckpoint": "run_checkpoint",
    "TrainingInterrupted": "run_checkpoint",
    "embed": "embedding",
}

__all__ = sorted(_ATTRIBUTES)


__getattr__, __dir__ = lazy_attributes(__name__, _ATTRIBUTES)
