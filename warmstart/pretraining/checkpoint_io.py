"""``LocalCheckpointIO``: Lightning checkpoints written with one ``torch.save`` straight into the file.

Lightning's ``TorchCheckpointIO`` serializes the whole checkpoint into an in-memory buffer, then copies the
buffer into the file (so remote filesystems get one write). For a local path that is two full copies of the
weights and optimizer state: resnet18 + AdamW (138 MB) took ~400 ms per save against ~150 ms for a direct
``torch.save`` on this machine, at every epoch end of a pretraining run. Remote URLs keep Lightning's own path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .._optional import require

L = require("lightning", "lightning")


class LocalCheckpointIO(L.pytorch.plugins.TorchCheckpointIO):
    """Save local checkpoints directly (temporary file + rename, so a kill mid-write keeps the old file).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "sub" / "a.ckpt"
        >>> io = LocalCheckpointIO()
        >>> io.save_checkpoint({"w": torch.ones(2)}, path)
        >>> io.load_checkpoint(path)["w"].tolist(), sorted(p.name for p in path.parent.iterdir())
        ([1.0, 1.0], ['a.ckpt'])
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return None
