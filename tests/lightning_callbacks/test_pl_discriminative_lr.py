"""DiscriminativeLR: explicit per-group lrs that every scheduler keeps, all params in the optimizer, conflicts."""

from __future__ import annotations

import pytest
import torch
from pl_helpers import (
    GROUPS,
    DigitsCNN,
    LrRecorder,
    loader,
    trainer,
)

from warmstart.lightning_callbacks import DiscriminativeLR, Finetune, Freeze, GradualUnfreezing

EPOCHS, STEPS = 3, 4  # 4 batches of 32 per epoch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("scheduler", ["lambda", "onecycle", "cosine", "plateau"])
def test_scheduler_shape_kept_and_group_ratio_constant(tmp_path, scheduler):
    runs = {}
    for with_cb in (False, True):
        torch.manual_seed(0)
        model = DigitsCNN(lr=0.01, scheduler=scheduler, total_steps=EPOCHS * STEPS)
        rec = LrRecorder()
        cbs = [DiscriminativeLR(layer_decay=0.5), rec] if with_cb else [rec]
        trainer(tmp_path, cbs, max_epochs=EPOCHS, limit_train_batches=STEPS).fit(model, loader(128))
        runs[with_cb] = rec
    plain, disc = runs[False], runs[True]
    assert len(plain.lrs) == len(disc.lrs) == EPOCHS * STEPS
    assert len({lrs[0] for lrs in plain.lrs}) > 1, "the scheduler must actually change the lr in this test"
    names = disc.names
    assert names == [f"{g}/{k}" for g in GROUPS for k in ("decay", "no_decay")]
    expected_scale = {f"{g}/{k}": 0.5 ** (3 - i) for i, g in enumerate(GROUPS) for k in ("decay", "no_decay")}
    head = names.index("head/decay")
    for step, (ref, lrs) in enumerate(zip(plain.lrs, disc.lrs)):
        # the head follows exactly the curve it has without the callback ...
        assert lrs[head] == pytest.approx(ref[0], rel=1e-9, abs=1e-15), f"step {step}"
        # ... and every group keeps its ratio to the head at every step
        for name, lr in zip(names, lrs):
            assert lr == pytest.approx(ref[0] * expected_scale[name], rel=1e-9, abs=1e-15), f"{name} step {step}"


def test_all_params_in_optimizer_even_if_user_filtered_frozen(tmp_path):
    model = DigitsCNN(trainable_only=True)
    for p in model.stem.parameters():
        p.requires_grad_(False)
    trainer(tmp_path, [DiscriminativeLR(backbone_lr_ratio=0.1)], max_epochs=1, limit_train_batches=1).fit(
        model, loader(32))
    opt = model.trainer.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    table = {g["name"]: g["lr"] for g in opt.param_groups}
    assert table["head/decay"] == pytest.approx(0.01) and table["stem/decay"] == pytest.approx(0.001)


def test_group_lrs_weight_decay_and_submodule_rest_group(tmp_path):
    model = DigitsCNN(optimizer="sgd", weight_decay=0.01)
    cb = DiscriminativeLR(group_lrs={"block.*": 0.001}, module=None)
    trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=1).fit(model, loader(32))
    groups = {g["name"]: g for g in model.trainer.optimizers[0].param_groups}
    assert groups["block1/decay"]["lr"] == pytest.approx(0.001) and groups["stem/decay"]["lr"] == pytest.approx(0.01)
    assert groups["block1/decay"]["weight_decay"] == 0.01 and groups["block1/no_decay"]["weight_decay"] == 0.0
    assert groups["head/decay"]["momentum"] == 0.9  # the user's other hyperparameters are kept

    model = DigitsCNN()
    trainer(tmp_path, [DiscriminativeLR(layer_decay=0.5, module="block2")], max_epochs=1,
            limit_train_batches=1).fit(model, loader(32))
    groups = {g["name"]: g for g in model.trainer.optimizers[0].param_groups}
    assert "rest/decay" in groups and groups["rest/decay"]["lr"] == pytest.approx(0.01)
    assert len([p for g in groups.values() for p in g["params"]]) == len(list(model.parameters()))


@pytest.mark.parametrize("callbacks, match", [
    (lambda: [DiscriminativeLR(layer_decay=0.5), DiscriminativeLR(layer_decay=0.7)], "both rebuild the optimizer"),
    (lambda: [DiscriminativeLR(layer_decay=0.5), _backbone_finetuning()], "both rebuild the optimizer"),
    # on overlapping but different modules: two controllers would undo each other
    (lambda: [Freeze(module="block1"), GradualUnfreezing()], "both set which parameters train"),
    # on the same module they merge into one plan (LoRA + GradualUnfreezing works: test_pl_plan.py); an option
    # set twice is refused
    (lambda: [GradualUnfreezing(head_epochs=1), Finetune({"head_epochs": 2})], r"both set \['head_epochs'\]"),
    (lambda: [DiscriminativeLR(group_lrs={"neck": 0.1})], "matches no layer group"),
])
def test_conflicts_and_bad_groups_fail_at_setup(tmp_path, callbacks, match):
    rec = LrRecorder()
    with pytest.raises(ValueError, match=match):
        trainer(tmp_path, [*callbacks(), rec], max_epochs=1).fit(DigitsCNN(), loader(32))
    assert rec.steps == 0


def _backbone_finetuning():
    from lightning.pytorch.callbacks import BackboneFinetuning

    return BackboneFinetuning()


def test_exactly_one_rule_required():
    with pytest.raises(ValueError, match="exactly one of"):
        DiscriminativeLR()
    with pytest.raises(ValueError, match="exactly one of"):
        DiscriminativeLR(layer_decay=0.5, backbone_lr_ratio=0.1)
