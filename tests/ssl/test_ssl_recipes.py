"""Recipes for ``pretrain``: global batch -> gradient accumulation, linear lr scaling, warmup in epochs,
``epochs="auto"``, and the bad inputs refused before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ssl_helpers import digit_folder, one_thread, tiny_cnn  # noqa: F401 (one_thread: autouse fixture)

from warmstart.cli import build_parser
from warmstart.core.ssl import get_method
from warmstart.pretraining import pretrain
from warmstart.pretraining.run import auto_epochs, derive_accumulation

pytest.importorskip("lightning")
import lightning as L  # noqa: E402

SIMCLR_LR = get_method("simclr", tiny_cnn(), 32).default_lr


class Record(L.Callback):
    """What the Trainer really used: accumulation, the optimizer's peak lr, the lr at every optimizer step."""

    def __init__(self) -> None:
        self.accumulate, self.base_lrs, self.lrs, self.batches = None, None, [], 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.accumulate = trainer.accumulate_grad_batches
        self.base_lrs = [g["initial_lr"] for g in trainer.optimizers[0].param_groups]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches += 1
        self.lrs.append((trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]))


def _run(tmp_path: Path, name: str, data: Path, **kw):
    record = Record()
    args = dict(method="simclr", epochs=2, batch_size=4, image_size=32, accelerator="cpu", devices=1,
                progress=False, num_workers=0, cache="off", checkpoint_every=None, callbacks=[record])
    args.update(kw)
    summary = pretrain(tmp_path / name, data, tiny_cnn(), **args)
    return summary, record


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return digit_folder(tmp_path_factory.mktemp("recipes") / "data", 16)


def test_global_batch_derives_accumulation_scales_lr_and_warmup(tmp_path: Path, data: Path) -> None:
    summary, record = _run(tmp_path, "g", data, global_batch_size=8, warmup_epochs=1.0, epochs=2,
                           lr_scaling="linear")
    # 16 images / batch 4 = 4 batches per epoch, 2 per optimizer step -> 2 steps per epoch, 4 in all
    assert record.accumulate == 2 and summary["accumulate_grad_batches"] == 2
    assert record.batches == 8 and summary["steps"] == 4 == record.batches // 2
    assert summary["global_batch_size"] == 8 and summary["images_seen"] == 32
    expected = SIMCLR_LR * 8 / 256  # linear scaling rule
    assert summary["lr"] == pytest.approx(expected) and summary["lr_scaling"] == "linear"
    assert record.base_lrs == [pytest.approx(expected)] * 2
    ckpt = torch.load(tmp_path / "g" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert [g["initial_lr"] for g in ckpt["optimizer_states"][0]["param_groups"]] == [pytest.approx(expected)] * 2
    # warmup of 1 epoch of 2 = half of the 4 steps: lr rises over steps 0-1, peaks at step 2, then decays
    assert summary["warmup_fraction"] == 0.5
    per_step = dict(record.lrs)
    assert per_step[0] < per_step[1] < per_step[2] == pytest.approx(expected) and per_step[3] < per_step[2]
    on_disk = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert on_disk["accumulate_grad_batches"] == 2 and on_disk["lr"] == pytest.approx(expected)


def test_accumulate_directly_explicit_lr_and_no_scaling(tmp_path: Path, data: Path) -> None:
    summary, record = _run(tmp_path, "a", data, accumulate_grad_batches=4, epochs=1, lr=0.01)
    assert record.accumulate == 4 and summary["steps"] == 1 and summary["global_batch_size"] == 16
    assert summary["lr"] == 0.01 and record.base_lrs == [0.01, 0.01] and summary["lr_scaling"] == "explicit"
    summary, record = _run(tmp_path, "n", data, epochs=1)  # default lr_scaling="none": the method lr as is
    assert record.accumulate == 1 and summary["steps"] == 4 and summary["lr"] == pytest.approx(SIMCLR_LR)


def test_epochs_auto_resolution() -> None:
    assert auto_epochs(100_000, 256) == 26  # ceil(10_000 * 256 / 100_000)
    assert auto_epochs(5_000, 256) == 500 and auto_epochs(10_000_000, 256) == 10  # clamped to [10, 500]
    assert auto_epochs(16, 8, target_steps=30) == 15
    assert derive_accumulation(256, 32, 2) == 4
    with pytest.raises(ValueError, match="at least one global batch"):
        auto_epochs(100, 256)
    args = build_parser().parse_args(["pretrain", "--data", "d", "--model", "m", "--out", "o", "--epochs", "auto",
                                      "--global-batch-size", "64", "--warmup-epochs", "0.5"])
    assert (args.epochs, args.global_batch_size, args.warmup_epochs, args.lr_scaling) == ("auto", 64, 0.5, "none")


def test_epochs_auto_in_pretrain(tmp_path: Path, data: Path, monkeypatch) -> None:
    monkeypatch.setattr("warmstart.pretraining.run.AUTO_TARGET_STEPS", 1)  # ceil(1 * 16 / 16) = 1 epoch
    monkeypatch.setattr("warmstart.pretraining.run.AUTO_MIN_EPOCHS", 1)
    monkeypatch.setattr("warmstart.pretraining.run.AUTO_MAX_EPOCHS", 500)
    summary, record = _run(tmp_path, "auto", data, epochs="auto", global_batch_size=16)
    assert summary["epochs"] == 1 == summary["epochs_completed"] and summary["steps"] == 1


@pytest.mark.parametrize("kw, match", [
    (dict(global_batch_size=6), "not a multiple"),
    (dict(global_batch_size=8, accumulate_grad_batches=2), "not both"),
    (dict(warmup_epochs=2, epochs=2), "less than epochs"),
    (dict(epochs="auto", global_batch_size=32), "at least one global batch"),
    (dict(epochs="many"), "'auto'"),
    (dict(lr_scaling="sqrt"), "lr_scaling"),
])
def test_bad_recipes_fail_before_training(tmp_path: Path, data: Path, kw: dict, match: str) -> None:
    class Never(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            raise AssertionError("training started")

    with pytest.raises(ValueError, match=match):
        _run(tmp_path, "bad", data, callbacks=[Never()], **kw)
