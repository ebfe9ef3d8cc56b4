"""freeze / unfreeze, the BatchNorm policy and UnfreezeSchedule, asserted on real optimizer steps."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from core_helpers import TinyNet, changed, mlp, single_thread, snapshot  # noqa: F401 (fixture)
from torch import nn

from warmstart.core import (
    UnfreezeSchedule,
    apply_schedule,
    clear_bn_policy,
    freeze,
    frozen_groups,
    layer_groups,
    select_groups,
    set_bn_policy,
    unfreeze,
)

pytestmark = pytest.mark.usefixtures("single_thread")

torchvision = pytest.importorskip("torchvision")
RESNET_GROUPS = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


@pytest.fixture(scope="module")
def _resnet_proto():
    return torchvision.models.resnet18(num_classes=3)


@pytest.fixture
def resnet(_resnet_proto):
    return copy.deepcopy(_resnet_proto)  # a fresh copy per test is ~10x cheaper than re-initialising


@pytest.fixture
def meta_resnet():
    """For tests that only toggle flags: no weights to initialise at all."""
    with torch.device("meta"):
        return torchvision.models.resnet18(num_classes=3)


def _trainable_groups(model: nn.Module) -> list[str]:
    params = dict(model.named_parameters())
    return [g.name for g in layer_groups(model) if all(params[n].requires_grad for n in g.param_names)]


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor | None = None) -> None:
    model.train()
    x = torch.randn(2, 3, 16, 16) if x is None else x
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


# ---------------------------------------------------------------------------------------------- selectors


@pytest.mark.parametrize("selector, expected", [
    ("all_but_head", RESNET_GROUPS[:-1]),
    ("all", RESNET_GROUPS),
    (0, ["stem"]),
    (-2, ["layer4"]),
    ([0, "layer2"], ["stem", "layer2"]),
    ("layer3", ["layer3"]),
    (r"layer[12]", ["layer1", "layer2"]),  # a regex over group names (full match)
    ([r"layer\d", "stem"], RESNET_GROUPS[:-1]),
])
def test_freeze_selectors(meta_resnet, selector, expected):
    frozen = freeze(meta_resnet, selector)
    assert frozen_groups(meta_resnet) == expected
    assert set(_trainable_groups(meta_resnet)) == set(RESNET_GROUPS) - set(expected)
    assert frozen == [n for n, p in meta_resnet.named_parameters() if not p.requires_grad]


def test_freeze_by_param_pattern(meta_resnet):
    frozen = freeze(meta_resnet, pattern=r"^layer1\.0\.")
    assert frozen and all(n.startswith("layer1.0.") for n in frozen)
    assert [n for n, p in meta_resnet.named_parameters() if not p.requires_grad] == frozen


def test_unfreeze_by_index_name_regex(meta_resnet):
    freeze(meta_resnet, "all")
    unfreeze(meta_resnet, -1)
    assert _trainable_groups(meta_resnet) == ["head"]
    unfreeze(meta_resnet, "layer4")
    assert _trainable_groups(meta_resnet) == ["layer4", "head"]
    unfreeze(meta_resnet, r"layer[23]")
    assert frozen_groups(meta_resnet) == ["stem", "layer1"]
    unfreeze(meta_resnet, pattern=r"^bn1\.")
    assert {n for n, p in meta_resnet.named_parameters() if p.requires_grad and n.startswith(("conv1", "bn1"))} == {
        "bn1.weight", "bn1.bias"}
    unfreeze(meta_resnet)
    assert frozen_groups(meta_resnet) == []


def test_layer_patterns_override(meta_resnet):
    freeze(meta_resnet, 0, layer_patterns=[r"^(conv1|bn1|layer[12])\.", r".*"])
    assert frozen_groups(meta_resnet) == ["stem", "layer1", "layer2"]


@pytest.mark.parametrize("bad, match", [
    ("layer9", r"unknown layer group 'layer9'.*\['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'head'\]"),
    (["stem", "nope"], r"'nope'.*valid groups are"),
    (6, r"out of range.*6 groups"),
    (1.5, "must be an int index, a group name"),
])
def test_bad_group_selector_names_valid_choices(meta_resnet, bad, match):
    with pytest.raises(ValueError, match=match):
        freeze(meta_resnet, bad)
    assert all(p.requires_grad for p in meta_resnet.parameters()), "a failed freeze must not freeze anything"


def test_bad_pattern_and_bn_policy(meta_resnet):
    with pytest.raises(ValueError, match=r"matches no parameter.*conv1\.weight"):
        freeze(meta_resnet, pattern=r"^no_such_layer")
    with pytest.raises(ValueError, match="not a valid regex"):
        unfreeze(meta_resnet, pattern=r"(")
    with pytest.raises(ValueError, match=r"bn must be one of \('eval', 'train'\)"):
        freeze(meta_resnet, bn="frozen")
    with pytest.raises(ValueError, match="policy must be one of"):
        set_bn_policy(meta_resnet, "off")


def test_select_groups_all_forms():
    groups = layer_groups(TinyNet())
    assert select_groups(groups, None) == []
    assert select_groups(groups, ["all_but_head"]) == [0, 1]
    assert select_groups(groups, [2, -1, "head"]) == [2]


# ---------------------------------------------------------------------------------------------- BatchNorm


def test_bn_eval_policy_freezes_stats_and_affine_through_training(resnet):
    freeze(resnet, "all_but_head", bn="eval")
    opt = torch.optim.AdamW(resnet.parameters(), lr=1e-2, weight_decay=0.1)  # all params, frozen ones too
    before = snapshot(resnet)
    stats = {k: v.clone() for k, v in resnet.state_dict().items() if "running" in k}
    for _ in range(2):
        resnet.train()  # every re-entry into train mode must keep frozen BNs in eval
        assert not resnet.bn1.training and not resnet.layer4[1].bn2.training and resnet.training
        _step(resnet, opt)
    assert changed(resnet, before) == {"fc.weight", "fc.bias"}
    for k, v in resnet.state_dict().items():
        if "running" in k:
            assert torch.equal(v, stats[k]), k
    assert int(resnet.bn1.num_batches_tracked) == 0


def test_bn_train_policy_keeps_updating_stats(resnet):
    freeze(resnet, "all_but_head", bn="train")
    opt = torch.optim.SGD(resnet.parameters(), lr=0.1)
    mean = resnet.layer2[0].bn1.running_mean.clone()
    before = snapshot(resnet)
    _step(resnet, opt)
    assert resnet.layer2[0].bn1.training
    assert not torch.equal(resnet.layer2[0].bn1.running_mean, mean)
    assert changed(resnet, before) == {"fc.weight", "fc.bias"}  # affine still frozen: only stats move


def test_unfreeze_releases_bn_of_unfrozen_groups_only(meta_resnet):
    freeze(meta_resnet, bn="eval")
    unfreeze(meta_resnet, "layer4")
    meta_resnet.train()
    assert meta_resnet.layer4[0].bn1.training and not meta_resnet.layer3[0].bn1.training
    # switching a frozen model to "train" BN releases the pins
    freeze(meta_resnet, bn="train")
    meta_resnet.train()
    assert meta_resnet.layer3[0].bn1.training


def test_frozen_param_with_stale_grad_does_not_move(resnet):
    """Freezing after a few steps: Adam's momentum must not keep moving frozen weights (zero_grad(False))."""
    opt = torch.optim.Adam(resnet.parameters(), lr=1e-2)
    _step(resnet, opt)
    freeze(resnet, "all_but_head")
    before = snapshot(resnet)
    resnet.train()
    loss = resnet(torch.randn(2, 3, 16, 16)).pow(2).mean()
    opt.zero_grad(set_to_none=False)
    loss.backward()
    opt.step()
    assert changed(resnet, before) == {"fc.weight", "fc.bias"}


def test_pickle_and_deepcopy_frozen_model(resnet):
    freeze(resnet, bn="eval")
    clone = pickle.loads(pickle.dumps(resnet))  # picklable even with the pins (module-level function)
    clone.train()
    assert not clone.bn1.training
    deep = copy.deepcopy(resnet)
    deep.train()
    assert not deep.bn1.training and deep.bn1 is not resnet.bn1
    clear_bn_policy(resnet)
    assert not any("train" in m.__dict__ for m in resnet.modules())  # plain again: no warmstart reference
    data = pickle.dumps(resnet)
    assert b"warmstart" not in data
    resnet.train()
    assert resnet.bn1.training


# ---------------------------------------------------------------------------------------------- schedule


def test_unfreeze_schedule_forms():
    s = UnfreezeSchedule(num_groups=4, head_epochs=2, every=2)
    assert [s.trainable_indices(e) for e in range(8)] == [
        [3], [3], [2, 3], [2, 3], [1, 2, 3], [1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert s.final_epoch() == 6 and s.trainable_count(5) == 3
    capped = UnfreezeSchedule(num_groups=4, head_epochs=0, every=1, max_groups=2)
    assert [capped.trainable_indices(e) for e in range(3)] == [[2, 3], [2, 3], [2, 3]]
    explicit = UnfreezeSchedule(num_groups=3, at=[5, 2, 0])
    assert [explicit.trainable_indices(e) for e in (0, 2, 5)] == [[2], [1, 2], [0, 1, 2]]
    assert explicit.final_epoch() == 5
    # the final epoch is the first on which nothing changes any more
    for sched in (s, capped, explicit, UnfreezeSchedule(num_groups=1, head_epochs=0, every=3)):
        last = sched.final_epoch()
        assert last >= 0
        assert all(sched.trainable_indices(e) == sched.trainable_indices(last) for e in range(last, last + 5))
        if last > 0:
            assert sched.trainable_indices(last - 1) != sched.trainable_indices(last)


def test_unfreeze_schedule_state_dict_round_trip():
    s = UnfreezeSchedule(num_groups=6, head_epochs=3, every=2, max_groups=5)
    restored = UnfreezeSchedule(num_groups=2)
    restored.load_state_dict(s.state_dict())
    assert restored == s
    assert [restored.trainable_indices(e) for e in range(12)] == [s.trainable_indices(e) for e in range(12)]
    assert pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(ValueError, match="unknown UnfreezeSchedule state keys"):
        restored.load_state_dict({"num_groups": 3, "head_epoch": 1})


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_groups=0), "num_groups must be >= 1"),
    (dict(num_groups=3, every=0), "every must be >= 1"),
    (dict(num_groups=3, at=[0, 1]), "one unfreeze epoch per group"),
    (dict(num_groups=3, max_groups=4), "max_groups=4"),
])
def test_unfreeze_schedule_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UnfreezeSchedule(**kwargs)


def test_apply_schedule_in_training_loop():
    model = TinyNet()
    schedule = UnfreezeSchedule(num_groups=3, head_epochs=1, every=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # every param in the optimizer from the start
    names = ["stem", "body", "head"]
    for epoch in range(4):
        trainable = apply_schedule(model, schedule, epoch)
        expected = names[-len(trainable):]
        assert [names[i] for i in trainable] == expected
        before = snapshot(model)
        stats = model.stem[1].running_mean.clone()
        _step(model, opt)
        moved = {n.split(".")[0] for n in changed(model, before)}
        assert moved == set(expected), (epoch, moved)
        # frozen BN (eval policy) keeps its running stats; once unfrozen they train
        assert torch.equal(model.stem[1].running_mean, stats) == ("stem" not in expected)
    with pytest.raises(ValueError, match=r"UnfreezeSchedule\(num_groups=3"):
        apply_schedule(model, UnfreezeSchedule(num_groups=5), 0)


def test_plain_module_freezing_without_bn():
    m = mlp()
    freeze(m)
    assert frozen_groups(m) == ["0", "2"]


def test_bn_without_affine_follows_its_block():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)), nn.Flatten(),
                          nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    freeze(model, 0)
    model.train()
    assert not model[0][1].training  # frozen with its conv: running stats stay put
    unfreeze(model)
    model.train()
    assert model[0][1].training
