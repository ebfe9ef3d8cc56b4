"""GradualUnfreezing: the schedule really trains what it says, both modes agree, resume is exact, bad input."""

from __future__ import annotations

import pytest
import torch
from pl_helpers import (
    DigitsCNN,
    LrRecorder,
    changed,
    groups_changed,
    loader,
    snapshot,
    trainer,
)

from warmstart.core import UnfreezeSchedule
from warmstart.lightning_callbacks import DiscriminativeLR, GradualUnfreezing

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 4


class EpochChanges(LrRecorder):
    """Also records which layer groups changed during each epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.changed: list[list[str]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._before = snapshot(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.changed.append(groups_changed(self._before, pl_module))


@pytest.mark.parametrize("mode", ["requires_grad", "mask_grads"])
def test_schedule_trains_exactly_the_unfrozen_groups(tmp_path, mode):
    torch.manual_seed(0)
    model = DigitsCNN()
    rec = EpochChanges()
    trainer(tmp_path, [GradualUnfreezing(head_epochs=1, every=1, mode=mode), rec], max_epochs=3,
            limit_train_batches=STEPS).fit(model, loader(128))
    expected = [["head"], ["block2", "head"], ["block1", "block2", "head"]]
    assert rec.changed == expected
    if mode == "requires_grad":
        assert rec.trainable == expected
    else:  # mask mode keeps requires_grad (for DDP) and drops the frozen groups' gradients instead
        assert rec.trainable == [["stem", "block1", "block2", "head"]] * 3


def test_mask_grads_gives_the_same_weights_as_requires_grad(tmp_path):
    finals = []
    for mode in ("requires_grad", "mask_grads"):
        torch.manual_seed(0)
        model = DigitsCNN()
        trainer(tmp_path, [GradualUnfreezing(head_epochs=1, mode=mode)], max_epochs=2,
                limit_train_batches=STEPS).fit(model, loader(128))
        finals.append(snapshot(model))
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def test_bn_policy_of_frozen_groups(tmp_path):
    for bn, stem_stats_move in (("eval", False), ("train", True)):
        model = DigitsCNN()
        before = snapshot(model)
        trainer(tmp_path, [GradualUnfreezing(head_epochs=5, bn=bn)], max_epochs=1, limit_train_batches=2).fit(
            model, loader(64))
        assert ("stem.1.running_mean" in changed(before, model)) is stem_stats_move
        assert groups_changed(before, model) == ["head"]


def _run(tmp_path, max_epochs, ckpt_path=None, save_to=None):
    torch.manual_seed(0)
    model = DigitsCNN(scheduler="lambda")
    rec = LrRecorder()
    cbs = [GradualUnfreezing(head_epochs=1, every=1), DiscriminativeLR(layer_decay=0.5), rec]
    tr = trainer(tmp_path, cbs, max_epochs=max_epochs, limit_train_batches=STEPS)
    tr.fit(model, loader(128), ckpt_path=ckpt_path)
    if save_to is not None:
        tr.save_checkpoint(save_to)
    return model, rec, cbs[0]


def test_resume_mid_schedule_matches_uninterrupted_run(tmp_path):
    full, full_rec, _ = _run(tmp_path, 4)
    ckpt = tmp_path / "half.ckpt"
    _run(tmp_path, 2, save_to=ckpt)
    state = torch.load(ckpt, weights_only=False)["callbacks"]
    saved = next(v for k, v in state.items() if k.startswith("GradualUnfreezing"))
    assert saved["trainable_groups"] == ["block2", "head"] and saved["epoch"] == 1
    resumed, rec, cb = _run(tmp_path, 4, ckpt_path=ckpt)
    assert rec.trainable == full_rec.trainable[2:] == [["block1", "block2", "head"], ["stem", "block1", "block2",
                                                                                       "head"]]
    assert rec.names == full_rec.names
    assert rec.lrs == full_rec.lrs[2 * STEPS:]  # same per-group lrs at every resumed step
    a, b = snapshot(full), snapshot(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("kwargs, match", [
    ({"schedule": UnfreezeSchedule(num_groups=6)}, "UnfreezeSchedule is for 6 layer groups but the model has 4"),
    ({"at": [3, 2, 1, 0, 0]}, "lists 5 epochs but the model has 4"),
    ({"max_groups": 9}, "max_groups=9"),
    ({"layer_patterns": [r"^stem\.", r"^nothing\.", ".*"]}, "match no parameter"),
    ({"module": "trunk"}, "names no sub-module"),
])
def test_bad_schedule_fails_at_setup(tmp_path, kwargs, match):
    rec = LrRecorder()
    with pytest.raises(ValueError, match=match):
        trainer(tmp_path, [GradualUnfreezing(**kwargs), rec], max_epochs=1).fit(DigitsCNN(), loader(32))
    assert rec.steps == 0


def test_params_missing_from_optimizer_fail_before_training(tmp_path):
    rec = LrRecorder()
    with pytest.raises(ValueError, match="every parameter in the optimizer"):
        trainer(tmp_path, [GradualUnfreezing(), rec], max_epochs=1).fit(DigitsCNN(head_only=True), loader(32))
    assert rec.steps == 0
    # with DiscriminativeLR the optimizer is rebuilt over every parameter, so the same module works
    trainer(tmp_path, [GradualUnfreezing(), DiscriminativeLR(layer_decay=0.8)], max_epochs=1,
            limit_train_batches=1).fit(DigitsCNN(head_only=True), loader(32))


def test_requires_grad_mode_under_plain_ddp_is_refused(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    cb = GradualUnfreezing(mode="requires_grad")
    fake = type("T", (), {"strategy": DDPStrategy(), "callbacks": [cb]})()
    with pytest.raises(ValueError, match="find_unused_parameters=True"):
        cb._resolve_mode(fake)
    assert GradualUnfreezing()._resolve_mode(fake) == "mask_grads"
    fake.strategy = DDPStrategy(find_unused_parameters=True)
    assert GradualUnfreezing()._resolve_mode(fake) == "requires_grad"
