"""LoadBackboneWeights: a pretrain export lands in the module before training; bad files fail at setup."""

from __future__ import annotations

import pytest
import torch
from pl_helpers import (
    DigitsCNN,
    LrRecorder,
    loader,
    trainer,
)
from torch import nn

from warmstart.core.checkpoints import save_weights
from warmstart.lightning_callbacks import LoadBackboneWeights

pytestmark = pytest.mark.usefixtures("one_thread")


class Trunk(nn.Module):
    """What `warmstart pretrain` would export for DigitsCNN: the layers before the head, same names."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(123)
        cnn = DigitsCNN()
        self.stem, self.block1, self.block2 = cnn.stem, cnn.block1, cnn.block2


class CheckAtTrainStart(LrRecorder):
    def __init__(self, expected: dict) -> None:
        super().__init__()
        self.expected, self.ok = expected, None

    def on_train_start(self, trainer, pl_module) -> None:
        sd = pl_module.state_dict()
        self.ok = all(torch.equal(sd[k], v) for k, v in self.expected.items())


@pytest.mark.parametrize("as_dir", [False, True])
def test_export_is_loaded_before_training(tmp_path, as_dir):
    trunk = Trunk().state_dict()
    path = save_weights(trunk, tmp_path / "export" / "backbone.safetensors")
    check = CheckAtTrainStart(trunk)
    cb = LoadBackboneWeights(path.parent if as_dir else path)
    trainer(tmp_path, [cb, check], max_epochs=1, limit_train_batches=1).fit(DigitsCNN(), loader(32))
    assert check.ok
    assert len(cb.report.matched) == len(trunk) and cb.report.missing == ["head.weight", "head.bias"]
    assert cb.report.summary().startswith(f"transferred {len(trunk)}/{len(trunk)} backbone tensors")


def test_prefixed_backbone_inside_module(tmp_path):
    class Wrapped(DigitsCNN):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.stem, self.encoder.block1, self.encoder.block2 = self.stem, self.block1, self.block2
            del self.stem, self.block1, self.block2

        def forward(self, x):
            e = self.encoder
            return self.head(e.block2(e.block1(e.stem(x))))

    path = save_weights(Trunk().state_dict(), tmp_path / "backbone.pt")
    # found automatically under "encoder.", or loaded into the module named by `module=`
    for module, prefix in ((None, "encoder."), ("encoder", "")):
        model = Wrapped()
        cb = LoadBackboneWeights(path, module=module)
        trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=1).fit(model, loader(32))
        assert len(cb.report.matched) == len(Trunk().state_dict()) and cb.report.prefix == prefix


def test_missing_file_and_wrong_architecture_fail_at_setup(tmp_path):
    rec = LrRecorder()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trainer(tmp_path, [LoadBackboneWeights(tmp_path / "nope.safetensors"), rec], max_epochs=1).fit(
            DigitsCNN(), loader(32))
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 4), nn.Linear(4, 4))
    path = save_weights(other.state_dict(), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="different shape"):
        trainer(tmp_path, [LoadBackboneWeights(path), rec], max_epochs=1).fit(DigitsCNN(), loader(32))
    assert rec.steps == 0


def test_an_export_with_its_own_input_statistics_is_announced_at_setup(tmp_path):
    # a channels=N pretraining records its data's per-band statistics in backbone.json: fine-tuning must feed
    # them, and the callback cannot see the DataLoader's transforms, so it says so (and the report has them)
    import json

    path = save_weights(Trunk().state_dict(), tmp_path / "export" / "backbone.safetensors")
    stats = {"mean": [0.31], "std": [0.12]}
    (path.parent / "backbone.json").write_text(json.dumps({"family": "custom", "info": {"normalize": stats}}))
    cb = LoadBackboneWeights(path.parent)
    with pytest.warns(UserWarning, match=r"mean=\[0.31\], std=\[0.12\].*not ImageNet's"):
        trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=1).fit(DigitsCNN(), loader(32))
    assert cb.report.normalize == stats
