"""``LoRA``: LoRA adapters in a LightningModule, injected before its optimizer is built (contributes ``lora``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .._optional import require
from ..core.checkpoints import save_weights
from ..core.lora import Targets, check_lora_options, find_lora_targets, has_lora, merge_lora, trainable_summary
from ..core.plan import FinetunePlan
from ._common import target_module
from ._plan import PlanCallback

L = require("lightning", "lightning")
rank_zero_info = L.pytorch.utilities.rank_zero_info


class LoRA(PlanCallback):
    """Adapt a LightningModule (or its ``module`` attribute) with LoRA at ``setup``, before ``configure_optimizers``.

    Contributes the plan's ``lora`` field; the controller injects the adapters in place (same module, same class):
    only the adapters, the head and BatchNorm train. With ``GradualUnfreezing`` on the same module the schedule
    decides *when* each group's adapters train (the head first); the base weights never do. Adapters are ordinary
    parameters of the module, so Lightning checkpoints hold them and ``fit(ckpt_path=...)``,
    ``validate``/``test(ckpt_path=...)`` work (adapters are injected for every stage). With ``merge_on_end=True``
    the adapters are folded into the base layers when fit ends (the module becomes a plain model again) and the
    merged weights are written as safetensors to ``merged_path`` (default ``<trainer.default_root_dir>/merged
    .safetensors``): they load with plain ``torch``/``safetensors`` into the original architecture, without peft
    or warmstart.

    Example:
        >>> import types, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
        >>> cb = LoRA(r=2)
        >>> cb.setup(types.SimpleNamespace(callbacks=[cb]), net, "fit")
        >>> sorted(n for n, p in net.named_parameters() if p.requires_grad)[:2]
        ['0.lora_A.default.weight', '0.lora_B.default.weight']
    """

    def __init__(self, r: int = 8, alpha: int = 16, targets: Targets = "auto", dropout: float = 0.0,
                 module: str | None = None, merge_on_end: bool = False, merged_path: str | None = None) -> None:
        check_lora_options(r, alpha, dropout)  # fail where the user wrote it, not at setup
        self.r, self.alpha, self.targets, self.dropout = r, alpha, targets, dropout
        self.module, self.merge_on_end, self.merged_path = module, merge_on_end, merged_path
        self.target_names: list[str] = []
        self.saved_path: Path | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module=self.module)

    def _lora_options(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "targets": self.targets}

    def plan_fragment(self, sub: nn.Module) -> FinetunePlan:
        if not has_lora(sub):  # resolved now for the log line and the resume check; a bad regex fails here
            self.target_names = find_lora_targets(sub, self.targets)
        return FinetunePlan(lora=self._lora_options())

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            s = trainable_summary(pl_module)
            rank_zero_info(f"warmstart LoRA: r={self.r} on {len(self.target_names)} modules; trainable "
                           f"{s['trainable']:,} of {s['total']:,} parameters ({s['percent']}%)")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.merge_on_end:
            return
        sub = target_module(pl_module, self.module)
        merge_lora(sub)
        if trainer.is_global_zero:
            path = Path(self.merged_path or Path(trainer.default_root_dir) / "merged.safetensors")
            path.parent.mkdir(parents=True, exist_ok=True)
            self.saved_path = save_weights(sub.state_dict(), path)  # atomic; safetensors by suffix
            rank_zero_info(f"warmstart LoRA: merged adapters; plain weights saved to {path}")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "r": self.r, "alpha": self.alpha, "targets": list(self.target_names)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("targets") or []
        if self.target_names and saved and (sorted(saved) != sorted(self.target_names) or state_dict["r"] != self.r):
            raise ValueError(f"the checkpoint's LoRA had r={state_dict['r']} on {len(saved)} modules, this one has "
                             f"r={self.r} on {len(self.target_names)}; resume with the same LoRA settings.")
        super().load_state_dict(state_dict)
