"""Hugging Face ``transformers.Trainer`` front end: one fine-tuning plan, LoRA, vision backbones.

``FinetuneCallback(plan)`` + ``plan_optimizer(model, plan)`` apply a ``warmstart.core.FinetunePlan`` through one
``FinetuneController`` per model; ``GradualUnfreezing`` and ``llrd_optimizer`` are shells that contribute plan
fragments to the same controller. No freezing or LR logic lives here.
Names load on first use; the import checks only that transformers is installed (peft loads with LoRA).

Example:
    >>> from warmstart.hf_integration import FinetuneCallback, GradualUnfreezing, plan_optimizer
    >>> GradualUnfreezing.__mro__[1].__name__
    'FinetuneCallback'
"""

from __future__ import annotations

from .._lazy import lazy_attributes
from .._optional import require_installed

# Fail at import with the install hint, not later with a bare ModuleNotFoundError;
# find_spec only, so the package stays cheap to import.
require_installed("transformers", "hf")

# name -> submodule that defines it (PEP 562 lazy attributes).
_ATTRIBUTES = {
    "FinetuneCallback": "plan",
    "FinetunePlan": "plan",
    "plan_optimizer": "plan",
    "PlanOptimizer": "plan",
    "prepare_checkpointing": "plan",
    "GradualUnfreezing": "unfreezing",
    "llrd_optimizer": "optimizer",
    "LayerDecayOptimizer": "optimizer",
    "apply_lora": "lora",
    "peft_task_type": "lora",
    "load_pretrained_backbone": "vision",
    "image_classifier_from_export": "vision",
    "continue_pretraining": "text_pretraining",
    "last_complete_checkpoint": "resume",
}

__all__ = sorted(_ATTRIBUTES)


__getattr__, __dir__ = lazy_attributes(__name__, _ATTRIBUTES)
