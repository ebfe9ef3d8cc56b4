"""One plan, written once as a dict, means the same thing in Lightning, transformers.Trainer and Ultralytics: the
same trainable layer groups and the same lr ratios at every epoch as the bare core controller (rule 10)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
for sub in ("hf_integration", "yolo_integration"):
    sys.path.insert(0, str(HERE / sub))

pytest.importorskip("transformers")
pytest.importorskip("lightning")
L = pytest.importorskip("lightning").pytorch

from hf_helpers import (  # noqa: E402
    TokenDataset,
    _group_lr_ratios,
    _trainable_groups,
    controller_trainable_and_lr_ratios,
    hf_trainable_and_lr_ratios,
    tiny_bert,
)

# Written once: head first, one more group per epoch, at most 3 groups (the embeddings stay frozen), layer decay.
PLAN = {"head_epochs": 1, "every": 1, "max_groups": 3, "layer_decay": 0.5}
EPOCHS = 3


class BertModule(L.LightningModule):
    """A LightningModule around the same tiny BERT the HF run uses; the plan acts on ``self.model``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_bert()

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class EpochRecorder(L.Callback):
    def __init__(self) -> None:
        self.per_epoch: list[tuple[list[str], dict[str, float]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            finetune = next(cb for cb in trainer.callbacks if type(cb).__name__ == "Finetune")
            groups = finetune.controller.groups
            self.per_epoch.append((_trainable_groups(pl_module.model, groups),
                                   _group_lr_ratios(trainer.optimizers[0].param_groups)))


def lightning_trainable_and_lr_ratios(plan: dict, epochs: int) -> list[tuple[list[str], dict[str, float]]]:
    from warmstart.lightning_callbacks import Finetune

    module, recorder = BertModule(), EpochRecorder()
    loader = torch.utils.data.DataLoader(TokenDataset(16), batch_size=8, collate_fn=_collate)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Finetune(plan, module="model"), recorder])
    trainer.fit(module, loader)
    return recorder.per_epoch


def _collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def test_lightning_and_hf_agree_with_the_core_controller() -> None:
    reference = controller_trainable_and_lr_ratios(tiny_bert(), PLAN, EPOCHS)
    assert [groups for groups, _ in reference] == [
        ["head"], ["bert.encoder.layer.1", "head"], ["bert.encoder.layer.0", "bert.encoder.layer.1", "head"]]
    hf = hf_trainable_and_lr_ratios(tiny_bert(), PLAN, EPOCHS)
    pl = lightning_trainable_and_lr_ratios(PLAN, EPOCHS)
    for epoch, (want, got_hf, got_pl) in enumerate(zip(reference, hf, pl)):
        assert got_hf[0] == got_pl[0] == want[0], epoch
        assert got_hf[1] == pytest.approx(want[1]) and got_pl[1] == pytest.approx(want[1]), epoch


def test_ultralytics_agrees_with_the_core_controller() -> None:
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO
    from yolo_helpers import yolo_trainable_and_lr_ratios

    from warmstart.core.controller import FinetuneController

    run = yolo_trainable_and_lr_ratios(PLAN, EPOCHS)
    model = YOLO("yolov8n.yaml", verbose=False).model
    c = FinetuneController(model, PLAN)
    assert len(run) == EPOCHS
    for epoch, (groups, ratios) in enumerate(run):
        assert groups == c.apply(epoch), epoch
        assert ratios == pytest.approx(dict(zip(c.group_names, c.lr_scales()))), epoch
