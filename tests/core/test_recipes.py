"""The declared few-label recipe, run through a real Lightning Trainer: what it freezes, when, and at which lr."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from warmstart.core.controller import FinetuneController
from warmstart.core.plan import FinetunePlan
from warmstart.core.recipes import CANDIDATES, DECLARED, FEW_LABEL_FINETUNE, HEAD_FRACTION, list_recipes, recipe
from warmstart.lightning_callbacks import Finetune

STEPS, LR = 10, 1e-2
WATCH = {"stem": "stem.0.weight", "layer1": "layer1.0.weight", "layer2": "layer2.0.weight", "head": "head.weight"}
BN_STAT = "layer1.1.running_mean"


class TinyCNN(nn.Module):
    """stem -> layer1 -> layer2 -> pooled head, BatchNorm in every block: a resnet in miniature (fast on a CPU)."""

    def __init__(self) -> None:
        super().__init__()
        block = lambda cin, cout: nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())  # noqa: E731
        self.stem, self.layer1, self.layer2 = block(3, 4), block(4, 8), block(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer2(self.layer1(self.stem(x))).mean(dim=(2, 3)))


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCNN()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=LR)


class Recorder(L.Callback):
    """At every batch start (after Finetune applied the schedule): watched weights, a BN statistic, group lrs."""

    def __init__(self) -> None:
        self.snaps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        state = pl_module.net.state_dict()
        self.snaps.append({"params": {k: state[v].clone() for k, v in WATCH.items()},
                           "bn": state[BN_STAT].clone(),
                           "lrs": {g.get("name", str(i)): g["lr"] for i, g in
                                   enumerate(trainer.optimizers[0].param_groups)}})

    def on_train_end(self, trainer, pl_module):
        self.on_train_batch_start(trainer, pl_module, None, -1)  # the final state, after the last step


def _fit(plan: dict) -> list[dict]:
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8) * 2 + 1, torch.arange(16) % 3  # shifted inputs: BN statistics must move
    rec = Recorder()
    callbacks = [Finetune(plan, module="net"), rec] if plan else [rec]
    trainer = L.Trainer(max_steps=STEPS, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        callbacks=callbacks)
    trainer.fit(Classifier(), DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True))
    return rec.snaps


def test_declared_recipe_trains_head_only_first_keeps_bn_stats_and_decays_lrs_by_layer():
    snaps = _fit(FEW_LABEL_FINETUNE)
    first, final = snaps[0], snaps[-1]
    head_steps = [i for i in range(STEPS) if i / STEPS < HEAD_FRACTION - 1e-9]
    end_of_head = snaps[len(head_steps)]  # start of the first step after the head-only phase
    # head-only phase: the body is exactly as loaded, its BN running statistics too; the head has moved
    for group in ("stem", "layer1", "layer2"):
        assert torch.equal(end_of_head["params"][group], first["params"][group]), group
    assert torch.equal(end_of_head["bn"], first["bn"])
    assert not torch.equal(end_of_head["params"]["head"], first["params"]["head"])
    # after it the body trains (the top block at least)
    assert not torch.equal(final["params"]["layer2"], end_of_head["params"]["layer2"])
    # layer-wise lr decay: each group a step further from the head at layer_decay x the lr
    decay = FEW_LABEL_FINETUNE["layer_decay"]
    lrs = first["lrs"]
    for depth, group in enumerate(["head", "layer2", "layer1", "stem"]):
        assert lrs[f"{group}/decay"] == pytest.approx(LR * decay ** depth), (group, lrs)


def test_plain_full_finetune_moves_body_and_bn_stats_at_once():
    # the control: without the recipe the same loop changes the body and its BN statistics in the first steps
    snaps = _fit(CANDIDATES["full"])
    assert not torch.equal(snaps[1]["params"]["stem"], snaps[0]["params"]["stem"])
    assert not torch.equal(snaps[1]["bn"], snaps[0]["bn"])


def test_every_recipe_is_a_valid_plan_on_cnns_and_recipe_returns_a_copy():
    for name in list_recipes():
        for model in (torchvision.models.resnet18(num_classes=3), TinyCNN()):
            controller = FinetuneController(model, recipe(name))
            assert controller.trainable_at(0.0)[-1] == controller.group_names[-1]  # the head trains from the start
            assert controller.trainable_at(1.0) == controller.group_names  # and everything by the end
    plan = recipe()
    plan.layer_decay = 0.9
    assert recipe() == FinetunePlan.from_dict(CANDIDATES[DECLARED])  # the constant was not mutated
    with pytest.raises(ValueError, match="unknown fine-tuning recipe"):
        recipe("nope")
