"""``LoadBackboneWeights``: load a ``warmstart pretrain`` export into a LightningModule before training starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._optional import require
from ._common import target_module

L = require("lightning", "lightning")
rank_zero_info = L.pytorch.utilities.rank_zero_info
rank_zero_warn = L.pytorch.utilities.rank_zero_warn


class LoadBackboneWeights(L.Callback):
    """Load pretrained backbone weights at ``setup`` (fit only) with ``core.checkpoints.load_backbone_weights``.

    ``path`` is a ``.safetensors``/``.pt`` file or a ``warmstart pretrain`` export directory. The backbone is
    found inside the module automatically (or under ``prefix``; or inside the ``module`` attribute). The load is
    complete or raises at ``setup`` (never a silent partial load): every export tensor must land and every
    backbone tensor receive one, except the task head. ``allow_missing`` (name patterns) asks for a partial load,
    ``min_match`` (a fraction) tolerates a transfer across architectures; both are ``load_backbone_weights``'s.
    A missing path raises FileNotFoundError, a damaged file a ValueError naming it, at ``setup``. Logs one line, e.g.
    ``transferred 60/60 backbone tensors into 'backbone.' (...)``. When resuming (``ckpt_path``), the
    checkpoint's weights are restored after this load and win, as they should.

    Example:
        >>> import tempfile, types, torch, torch.nn as nn
        >>> from warmstart.core.checkpoints import save_weights
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.backbone, self.head = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), nn.Linear(4, 2)
        >>> path = save_weights(Net().backbone.state_dict(), tempfile.mkdtemp() + "/backbone.safetensors")
        >>> cb = LoadBackboneWeights(path)
        >>> cb.setup(types.SimpleNamespace(callbacks=[cb]), Net(), "fit")
        >>> cb.report.summary().split(" (")[0]
        "transferred 4/4 backbone tensors into 'backbone.'"
    """

    def __init__(self, path: str | Path, module: str | None = None, prefix: str | None = None,
                 min_match: float = 1.0, allow_missing: str | list[str] | None = None) -> None:
        from ..core.weight_keys import check_patterns

        if not 0.0 <= min_match <= 1.0:
            raise ValueError(f"min_match must be a fraction in [0, 1], got {min_match}")
        self.path, self.module, self.prefix, self.min_match = Path(path), module, prefix, min_match
        self.allow_missing = check_patterns(allow_missing)  # a bad pattern fails at construction, not at setup
        self.report: Any = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module=self.module, path=str(self.path))

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        from ..core.checkpoints import load_backbone_weights, resolve_weights_path

        try:
            path = resolve_weights_path(self.path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"LoadBackboneWeights: {err}") from None
        sub = target_module(pl_module, self.module)
        self.report = load_backbone_weights(sub, path, min_match=self.min_match, prefix=self.prefix,
                                            allow_missing=self.allow_missing)
        rank_zero_info(f"warmstart LoadBackboneWeights: {self.path.name}: {self.report.summary()}")
        if note := self.report.normalize_warning():
            rank_zero_warn(f"warmstart LoadBackboneWeights: {note}")

    def state_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "summary": self.report.summary() if self.report is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Nothing to restore: the checkpoint's model weights already include what was loaded.
        self.loaded_summary = state_dict.get("summary")
