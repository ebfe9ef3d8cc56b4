"""Freeze: what trains, what does not, BatchNorm policy, bad input at setup."""

from __future__ import annotations

import pytest
from pl_helpers import (
    DigitsCNN,
    LrRecorder,
    changed,
    groups_changed,
    loader,
    snapshot,
    trainer,
)

from warmstart.lightning_callbacks import Freeze

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_freeze_all_but_head_trains_only_head_and_bn_policy(tmp_path, bn):
    model = DigitsCNN()
    before = snapshot(model)
    trainer(tmp_path, [Freeze(bn=bn)], max_epochs=1, limit_train_batches=3).fit(model, loader())
    assert groups_changed(before, model) == ["head"]
    stats = changed(before, model) & {"stem.1.running_mean", "block2.1.running_var"}
    # "eval" pins frozen BatchNorm statistics (like FrozenBatchNorm); "train" lets them adapt
    assert stats == (set() if bn == "eval" else {"stem.1.running_mean", "block2.1.running_var"})
    # all parameters stay in the optimizer (ARCHITECTURE.md rule 2): frozen ones just get no grad
    assert sum(len(g["params"]) for g in model.trainer.optimizers[0].param_groups) == len(list(model.parameters()))


def test_freeze_by_name_pattern_and_submodule(tmp_path):
    model = DigitsCNN()
    before = snapshot(model)
    cbs = [Freeze(groups=["stem", "block1"])]
    trainer(tmp_path, cbs, max_epochs=1, limit_train_batches=2).fit(model, loader())
    assert groups_changed(before, model) == ["block2", "head"]

    model = DigitsCNN()
    before = snapshot(model)
    trainer(tmp_path, [Freeze(pattern=r"^block2\.0\.")], max_epochs=1, limit_train_batches=2).fit(model, loader())
    assert not changed(before, model) & {"block2.0.weight", "block2.0.bias"}
    assert "block2.1.weight" in changed(before, model)

    model = DigitsCNN()
    before = snapshot(model)
    trainer(tmp_path, [Freeze(groups="all", module="block1")], max_epochs=1, limit_train_batches=2).fit(model,
                                                                                                      loader())
    assert groups_changed(before, model) == ["stem", "block2", "head"]


@pytest.mark.parametrize("kwargs, match", [
    ({"pattern": r"^no_such_layer\."}, "matches no parameter"),
    ({"groups": ["stem", "neck"]}, r"'neck' matches no layer group. Valid groups: \['stem'"),
    ({"groups": 7}, "out of range"),
    ({"module": "backbone"}, "names no sub-module"),
])
def test_bad_input_fails_at_setup_before_any_step(tmp_path, kwargs, match):
    rec = LrRecorder()
    with pytest.raises(ValueError, match=match):
        trainer(tmp_path, [Freeze(**kwargs), rec], max_epochs=1).fit(DigitsCNN(), loader())
    assert rec.steps == 0


def test_bad_bn_policy_fails_at_construction():
    with pytest.raises(ValueError, match="bn must be one of"):
        Freeze(bn="frozen")
