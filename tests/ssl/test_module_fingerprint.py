"""module_fingerprint: what a distillation resume compares the rebuilt teacher against."""

from __future__ import annotations

import torch
from torch import nn

from warmstart.pretraining.ssl_module import module_fingerprint


class Config:  # default repr: "<...Config object at 0x...>", a different address per instance and process
    pass


class WithExtraState(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.scale, self.config = scale, Config()

    def get_extra_state(self) -> dict:
        return {"scale": torch.tensor([self.scale]), "config": self.config, "names": ["a", "b"]}

    def set_extra_state(self, state: dict) -> None:
        self.scale = float(state["scale"])


def test_non_tensor_extra_state_is_hashed_by_value_not_by_address():
    a, b = WithExtraState(1.0), WithExtraState(1.0)
    b.linear.load_state_dict(a.linear.state_dict())
    # Same weights and same extra-state values, different object addresses: one fingerprint.
    assert module_fingerprint(a) == module_fingerprint(b)
    # A tensor inside the extra state counts by value.
    b.scale = 2.0
    assert module_fingerprint(a) != module_fingerprint(b)
    # And the weights still count.
    c = WithExtraState(1.0)
    assert module_fingerprint(a) != module_fingerprint(c)
