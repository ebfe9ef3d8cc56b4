"""LoRA for Hugging Face models as a ``peft.PeftModel``, with targets chosen from the model's layer map.

``warmstart.core.apply_lora`` adapts a model in place and keeps its class (right for Lightning / YOLO). For the
HF Trainer we return peft's own ``PeftModel`` instead: ``Trainer.save_model`` then writes a small adapter
folder (``adapter_config.json`` + ``adapter_model.safetensors``) that ``PeftModel.from_pretrained`` reloads, and
``merge_and_unload()`` gives back the plain transformers model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from warmstart._optional import require

peft = require("peft", "hf")
require("transformers")

from warmstart.core import lora_config  # noqa: E402
from warmstart.core.plan import LORA_DEFAULTS  # noqa: E402

from .plan import _enable_input_grads  # noqa: E402

# Architecture-family suffix of the HF class name -> peft task type. The task type decides which PeftModel
# subclass wraps the model (and which one PeftModel.from_pretrained rebuilds); None -> the generic PeftModel.
_TASK_SUFFIXES = {
    "ForSequenceClassification": "SEQ_CLS",
    "ForTokenClassification": "TOKEN_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
    "ForCausalLM": "CAUSAL_LM",
    "ForConditionalGeneration": "SEQ_2_SEQ_LM",
    "ForSeq2SeqLM": "SEQ_2_SEQ_LM",
    "Model": "FEATURE_EXTRACTION",
}


def peft_task_type(model: nn.Module) -> str | None:
    """The peft task type for an HF model class (``None`` for e.g. image classifiers: generic ``PeftModel``).

    Example:
        >>> import transformers
        >>> cfg = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        ...                               intermediate_size=8, vocab_size=20)
        >>> peft_task_type(transformers.BertForSequenceClassification(cfg))
        'SEQ_CLS'
    """
    name = type(model).__name__
    for suffix, task in _TASK_SUFFIXES.items():
        if name.endswith(suffix) and (suffix != "Model" or "For" not in name):
            return task
    return None


def apply_lora(model: nn.Module, r: int = LORA_DEFAULTS["r"], alpha: int = LORA_DEFAULTS["alpha"],
               targets: str | Sequence[str] = "auto", dropout: float = LORA_DEFAULTS["dropout"],
               head: Sequence[str] | None = None, **lora_kwargs: Any):
    """Wrap an HF model with LoRA adapters and return ``peft.get_peft_model(model, config)``.

    ``targets="auto"`` adapts every attention and MLP linear outside the head (found from the model's layer
    groups: e.g. BERT ``query/key/value/attention.output.dense/intermediate.dense/output.dense``, ViT
    ``q_proj/k_proj/v_proj/o_proj/fc1/fc2``); a list names modules (exact or ``.suffix`` such as ``"query"``),
    a string is a regex. The head group (pooler / final norm + classifier) goes to ``modules_to_save``: fully
    trained and saved with the adapter. Extra ``lora_kwargs`` go to ``peft.LoraConfig`` (e.g. ``use_rslora``).
    ``model`` itself is modified (peft injects into it); save its weights first if you need the original.
    The embedding output is made to require grad (``enable_input_require_grads``), so the adapters train under
    ``gradient_checkpointing=True`` with reentrant checkpointing too (the transformers 4.x default); a reentrant
    model without input embeddings is refused with the fix (``use_reentrant=False``).
    Defaults (``r=8, alpha=16, dropout=0.0``) are the plan's (``warmstart.core.plan.LORA_DEFAULTS``), so
    ``apply_lora(model)`` and ``FinetunePlan(lora={})`` adapt alike. The result composes with ``GradualUnfreezing``
    / ``FinetuneCallback`` (the schedule decides when each group's adapters train) and with ``llrd_optimizer``.

    Example:
        >>> import torch, transformers
        >>> cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                               intermediate_size=64, vocab_size=100, num_labels=2)
        >>> peft_model = apply_lora(transformers.BertForSequenceClassification(cfg), r=4)
        >>> type(peft_model).__name__
        'PeftModelForSequenceClassification'
        >>> plain = peft_model.merge_and_unload()   # back to BertForSequenceClassification
    """
    if isinstance(model, peft.PeftModel):
        raise ValueError("the model is already a PeftModel; call apply_lora on the plain transformers model, "
                         "or add an adapter with peft_model.add_adapter(name, config).")
    if "modules_to_save" in lora_kwargs:
        raise ValueError("pass the modules to train fully and save with the adapter as head=[...] "
                         "(it replaces the detected head), not modules_to_save=")
    config = lora_config(model, r=r, alpha=alpha, targets=targets, dropout=dropout, head=head,
                         task_type=lora_kwargs.pop("task_type", peft_task_type(model)), **lora_kwargs)
    config.modules_to_save = _with_batchnorm(model, config)
    # The base stays frozen, so under reentrant activation checkpointing (on now or turned on later by the
    # Trainer) the adapters would get no gradient unless the embedding output requires grad.
    _enable_input_grads(model, "apply_lora")
    return peft.get_peft_model(model, config)


def _with_batchnorm(model: nn.Module, config: Any) -> list[str] | None:
    """``modules_to_save`` plus every BatchNorm when convolutions are adapted.

    Frozen BatchNorm statistics from another domain hurt an adapted CNN; ``core.apply_lora`` keeps BN trainable
    for the same reason. Through ``modules_to_save`` peft also trains, saves and reloads them with the adapter.
    """
    saved = list(config.modules_to_save or [])
    modules = dict(model.named_modules())
    targets = config.target_modules
    adapted = (list(targets) if not isinstance(targets, str)
               else [n for n in modules if re.fullmatch(targets, n)])
    if not any(isinstance(modules.get(n), nn.Conv2d) for n in adapted):
        return saved or None
    under_saved = lambda name: any(name == s or name.startswith(s + ".") for s in saved)  # noqa: E731
    bns = [n for n, m in modules.items() if isinstance(m, nn.modules.batchnorm._BatchNorm) and not under_saved(n)]
    return saved + bns or None
