"""Shared helpers for tests/core: tiny models and assertions about layer groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from warmstart.core import LayerGroup


def assert_partition(model: nn.Module, groups: list[LayerGroup]) -> None:
    """Every parameter of ``model`` is in exactly one group, and no group is empty."""
    names = [n for n, _ in model.named_parameters()]
    grouped = [n for g in groups for n in g.param_names]
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    assert sorted(grouped) == sorted(names), f"unassigned: {sorted(set(names) - set(grouped))[:5]}"
    assert all(g.param_names for g in groups), [g.name for g in groups if not g.param_names]
    assert groups[-1].role == "head"


def group_of(groups: list[LayerGroup], param: str) -> str:
    return next(g.name for g in groups if param in g.param_names)


class TinyNet(nn.Module):
    """A plain nn.Module (no torchvision/timm): children registered out of alphabetical order, a BN, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)  # no parameters: not a group
        self.flat = nn.Flatten()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flat(self.pool(self.body(self.stem(x)))))


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def tiny_bert(cls_name: str = "BertForSequenceClassification"):
    import transformers

    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, num_labels=3)
    return getattr(transformers, cls_name)(cfg)


def tiny_vit(cls_name: str = "ViTForImageClassification"):
    import transformers

    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    return getattr(transformers, cls_name)(cfg)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


@pytest.fixture
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU two threads per process
    made a resnet18 LoRA step ~10x slower (measured). Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
