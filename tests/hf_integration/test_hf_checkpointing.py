"""Gradient checkpointing + frozen early layers in a real transformers.Trainer.

Reentrant checkpointing (``use_reentrant=True``; the transformers 4.x default) recomputes a block only for inputs
that require grad: with the embeddings frozen, every checkpointed layer silently gets no gradient. The control run
shows that happens with the plain 4.x Trainer (CI runs it in the lowest-versions step; transformers 5 hooks text
models' embeddings itself); the callback and ``apply_lora`` make the layers train on both.
"""

from __future__ import annotations

import pytest
import torch
from hf_helpers import TokenDataset, tiny_bert, training_args

transformers = pytest.importorskip("transformers")

from warmstart.hf_integration import FinetuneCallback, apply_lora, plan_optimizer, prepare_checkpointing  # noqa: E402

REENTRANT = dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})


def _snapshot(model: torch.nn.Module, *names: str) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


def _moved(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> dict[str, bool]:
    params = dict(model.named_parameters())
    return {n: not torch.equal(params[n], b) for n, b in before.items()}


LAYERS = ["bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.1.output.dense.weight"]
EMB, HEAD = "bert.embeddings.word_embeddings.weight", "classifier.weight"


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) >= 5,
                    reason="transformers 5 hooks the input embeddings of text models itself when checkpointing")
def test_control_plain_trainer_with_frozen_embeddings_leaves_checkpointed_layers_untrained(tmp_path):
    model = tiny_bert()
    model.bert.embeddings.requires_grad_(False)
    before = _snapshot(model, *LAYERS, HEAD)
    transformers.Trainer(model=model, args=training_args(tmp_path, max_steps=2, **REENTRANT),
                         train_dataset=TokenDataset(16)).train()
    moved = _moved(model, before)
    assert moved[HEAD] and not any(moved[n] for n in LAYERS)  # the bug this file guards against


def test_finetune_callback_makes_layers_after_frozen_embeddings_train(tmp_path):
    model = tiny_bert()
    plan = {"freeze": "embeddings", "layer_decay": 0.8}
    before = _snapshot(model, *LAYERS, HEAD, EMB)
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path, max_steps=2, **REENTRANT),
                                   train_dataset=TokenDataset(16), callbacks=[FinetuneCallback(plan)],
                                   optimizer_cls_and_kwargs=plan_optimizer(model, plan))
    trainer.train()
    moved = _moved(model, before)
    assert moved[HEAD] and all(moved[n] for n in LAYERS)
    assert not moved[EMB]  # still frozen: only its output requires grad


def test_apply_lora_adapters_train_under_reentrant_checkpointing(tmp_path):
    model = apply_lora(tiny_bert(), r=4)
    adapters = [n for n, p in model.named_parameters() if "lora_B" in n and "layer.0." in n]
    before = _snapshot(model, *adapters)
    transformers.Trainer(model=model, args=training_args(tmp_path, max_steps=2, **REENTRANT),
                         train_dataset=TokenDataset(16)).train()
    assert adapters and all(_moved(model, before).values())  # lora_B starts at 0: any gradient moves it


def test_reentrant_model_without_input_embeddings_is_refused_with_the_fix():
    class NoEmbeddings(transformers.BertForSequenceClassification):
        def enable_input_require_grads(self):  # as for a model whose input embeddings cannot be hooked
            pass

    model = NoEmbeddings(tiny_bert().config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match=r"reentrant activation checkpointing.*'use_reentrant': False"):
        prepare_checkpointing(model, "FinetuneCallback")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert prepare_checkpointing(model) is False  # non-reentrant needs no hook
