"""Every callback is configurable from a LightningCLI YAML (type-hinted init args)."""

from __future__ import annotations

import pytest
from pl_helpers import (
    DigitsCNN,
    loader,
)

from warmstart.core.checkpoints import save_weights

pytest.importorskip("jsonargparse")
pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = """
trainer:
  max_epochs: 2
  limit_train_batches: 2
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  accelerator: cpu
  callbacks:
    - class_path: warmstart.lightning_callbacks.GradualUnfreezing
      init_args:
        schedule: {{num_groups: 4, head_epochs: 1, every: 1}}
        bn: train
        mode: requires_grad
    - class_path: warmstart.lightning_callbacks.DiscriminativeLR
      init_args: {{layer_decay: 0.5, weight_decay: 0.01}}
    - class_path: warmstart.lightning_callbacks.LoadBackboneWeights
      init_args: {{path: {weights}, min_match: 0.8}}
    - class_path: warmstart.lightning_callbacks.Freeze
      init_args: {{groups: [stem, block1], module: null, pattern: null}}
    - class_path: warmstart.lightning_callbacks.LoRA
      init_args: {{r: 4, alpha: 8, targets: [block1.0], merge_on_end: true}}
model:
  lr: 0.02
"""


def test_callbacks_from_yaml_config(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    from warmstart.lightning_callbacks import DiscriminativeLR, Freeze, GradualUnfreezing, LoadBackboneWeights, LoRA

    weights = save_weights(DigitsCNN().state_dict(), tmp_path / "backbone.safetensors")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG.format(weights=weights))
    cli = LightningCLI(DigitsCNN, run=False, args=["--config", str(cfg)], save_config_callback=None)
    cbs = {type(c): c for c in cli.trainer.callbacks}
    gu, dlr = cbs[GradualUnfreezing], cbs[DiscriminativeLR]
    assert (gu.schedule.head_epochs, gu.bn, gu.mode) == (1, "train", "requires_grad")
    assert (dlr.layer_decay, dlr.weight_decay) == (0.5, 0.01)
    assert str(cbs[LoadBackboneWeights].path) == str(weights) and cbs[LoadBackboneWeights].min_match == 0.8
    assert cbs[Freeze].groups == ["stem", "block1"] and cbs[LoRA].targets == ["block1.0"] and cbs[LoRA].r == 4
    assert cli.model.lr == 0.02

    # the built objects really work: fit with the non-conflicting ones
    cli.trainer.callbacks[:] = [c for c in cli.trainer.callbacks if not isinstance(c, (Freeze, LoRA))]
    cli.trainer.fit(cli.model, loader(64))
    assert {g["name"]: g["lr"] for g in cli.trainer.optimizers[0].param_groups}["stem/decay"] == pytest.approx(
        0.02 * 0.5 ** 3)
