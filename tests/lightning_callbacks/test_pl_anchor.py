"""Plan ``anchor`` (L2-SP) in a real Lightning fit: the same update as the loss term, only pretrained weights pulled,
the starting point taken after a weights loader ran (HF: test_hf_anchor.py; YOLO: test_yolo_plan.py)."""

from __future__ import annotations

import pytest
import torch
from pl_helpers import DigitsCNN, loader, snapshot, trainer
from torch import nn

from warmstart.lightning_callbacks import Finetune, LoadBackboneWeights

ALPHA = 0.3
BODY = ("stem", "block1", "block2")


class ExplicitL2SP(DigitsCNN):
    """The paper's form: ``alpha / 2 * ||w - w0||^2`` over the non-head parameters, added to the loss by hand."""

    def on_train_start(self) -> None:
        self.start = {n: p.detach().clone() for n, p in self.named_parameters() if n.split(".")[0] in BODY}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        params = dict(self.named_parameters())
        return loss + 0.5 * ALPHA * sum(((params[n] - w0) ** 2).sum() for n, w0 in self.start.items())


def _fit(tmp_path, model, callbacks, epochs=2):
    torch.manual_seed(0)
    trainer(tmp_path, callbacks=callbacks, max_epochs=epochs).fit(model, loader(128, 32))
    return model


def test_anchor_gives_the_update_of_the_l2sp_loss_term_and_keeps_the_body_closer(tmp_path):
    torch.manual_seed(1)
    init = DigitsCNN(lr=0.05).state_dict()

    def fresh(cls):
        m = cls(lr=0.05)
        m.load_state_dict(init)
        return m

    anchored = _fit(tmp_path / "a", fresh(DigitsCNN), [Finetune({"anchor": ALPHA})])
    explicit = _fit(tmp_path / "b", fresh(ExplicitL2SP), [])
    plain = _fit(tmp_path / "c", fresh(DigitsCNN), [])
    a, e, p = (dict(m.named_parameters()) for m in (anchored, explicit, plain))
    for name in a:  # every parameter, head included, follows the loss-term run (8 AdamW steps)
        torch.testing.assert_close(a[name], e[name], rtol=1e-4, atol=1e-5, msg=name)

    def moved(params):
        return sum(float((params[n] - init[n]).pow(2).sum()) for n in params if n.split(".")[0] in BODY) ** 0.5

    assert moved(a) < 0.9 * moved(p)  # the pull is strong enough here to show
    c = anchored.trainer.callbacks[0].controller
    assert set(c.anchor.params) == {n for n in a if n.split(".")[0] in BODY}  # the new head is not pulled
    assert c.anchor.distance() == pytest.approx(moved(a), rel=1e-5)


def test_anchor_starts_from_the_loaded_weights_even_when_the_loader_runs_after_finetune(tmp_path):
    from warmstart.core.checkpoints import save_weights

    torch.manual_seed(2)
    pretrained = DigitsCNN()
    body = {k: v for k, v in pretrained.state_dict().items() if k.split(".")[0] in BODY}
    path = save_weights(body, tmp_path / "body.safetensors")
    torch.manual_seed(3)
    model = DigitsCNN(lr=0.05)
    # Finetune first in the list: its setup builds the controller before the loader's setup replaces the weights.
    cb = Finetune({"head_epochs": 1, "every": 1, "anchor": 0.1})
    _fit(tmp_path, model, [cb, LoadBackboneWeights(str(path))], epochs=2)
    start = cb.controller.anchor.values
    assert set(start) == {k for k in body if "running" not in k and "num_batches" not in k}
    assert all(torch.equal(start[k], body[k]) for k in start)  # the loaded values, not the random init


def test_anchor_leaves_frozen_groups_alone(tmp_path):
    model = DigitsCNN(lr=0.05)
    before = snapshot(model)
    cb = Finetune({"freeze": ["stem"], "anchor": 1.0})
    _fit(tmp_path, model, [cb], epochs=1)
    assert not any(n.startswith("stem.") for n in cb.controller.anchor.params)  # never trains: nothing to keep
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k.startswith("stem."))


def test_anchor_must_be_a_positive_number():
    from warmstart.core.plan import FinetunePlan

    for bad in (0, -0.1, float("nan"), "strong"):
        with pytest.raises(ValueError, match="anchor"):
            FinetunePlan(anchor=bad)
