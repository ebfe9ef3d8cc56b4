"""FinetunePlan + FinetuneController on real torch models and a real optimizer loop: which parameters move, the
lr each group has, LoRA under a schedule, resume verification and every bad plan refused with the valid names."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from warmstart.core.controller import FinetuneController
from warmstart.core.plan import FinetunePlan


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return before


def moved(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def test_schedule_freeze_and_layer_decay_in_a_real_loop() -> None:
    model = resnet()
    c = FinetuneController(model, {"head_epochs": 1, "every": 1, "freeze": "stem", "layer_decay": 0.5})
    opt = torch.optim.SGD(c.param_groups(0.1, weight_decay=0.0), lr=0.1)
    c.check_optimizer(opt)
    assert {g["name"]: g["lr"] for g in opt.param_groups}["layer4/decay"] == pytest.approx(0.05)
    expected = [["head"], ["layer4", "head"], ["layer3", "layer4", "head"]]
    for epoch, groups in enumerate(expected):
        assert c.apply(epoch) == groups
        changed = moved(model, train_step(model, opt))
        owners = {n: g.name for g in c.groups for n in g.param_names}
        assert {owners[n] for n in changed} == set(groups), epoch  # exactly the scheduled groups trained
    # stem is frozen for good even when the schedule reaches it, and its BatchNorm keeps eval statistics
    assert "stem" not in c.apply(99) and not model.bn1.training


def test_lora_with_a_schedule_trains_adapters_of_active_groups_only() -> None:
    model = resnet()
    plain = copy.deepcopy(model)
    c = FinetuneController(model, FinetunePlan(head_epochs=1, every=1, lora={"r": 4}))
    opt = torch.optim.AdamW(c.param_groups(1e-2), lr=1e-2)
    for epoch in range(2):
        c.apply(epoch)
        changed = moved(model, train_step(model, opt))
        assert not any(".base_layer." in n for n in changed), "LoRA base weights must never move"
        adapters = {n.split(".")[0] for n in changed if ".lora_" in n}
        assert adapters == (set() if epoch == 0 else {"layer4"}), (epoch, adapters)
        assert {"fc.weight", "fc.bias"} <= changed  # the head trains fully
    assert c.trainable_groups == ["layer4", "head"]
    assert len(plain.state_dict()) < len(model.state_dict())  # adapters were really injected


def test_lr_rules_have_one_meaning_each() -> None:
    c = FinetuneController(resnet(), {"lr_scales": {"backbone": 0.1, "layer4": 0.5}})
    scales = dict(zip(c.group_names, c.lr_scales()))
    assert scales == {"stem": 0.1, "layer1": 0.1, "layer2": 0.1, "layer3": 0.1, "layer4": 0.5, "head": 1.0}
    absolute = FinetuneController(resnet(), {"group_lrs": {"head": 1e-3, "layer[1-4]": 1e-4}})
    lrs = {g["name"]: g["lr"] for g in absolute.param_groups(1e-3)}
    assert lrs["layer2/decay"] == pytest.approx(1e-4) and lrs["head/decay"] == pytest.approx(1e-3)
    ratio = FinetuneController(resnet(), {"backbone_lr_ratio": 0.2})
    assert dict(zip(ratio.group_names, ratio.lr_scales()))["stem"] == pytest.approx(0.2)


def test_state_dict_round_trip_and_mismatches_name_both_layouts() -> None:
    plan = {"at": {"layer3": 2, "layer4": 1}, "freeze": ["stem", "layer1", "layer2"]}
    a = FinetuneController(resnet(), plan)
    a.apply(1)
    b = FinetuneController(resnet(), plan)
    b.load_state_dict(a.state_dict())
    assert b.trainable_groups == a.trainable_groups == ["layer4", "head"]
    other = FinetuneController(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), {})
    with pytest.raises(ValueError, match=r"layer groups \['stem'.*this model has \['0', '1'\]"):
        other.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="plan .* differs"):
        FinetuneController(resnet(), {**plan, "bn": "train"}).load_state_dict(a.state_dict())
    assert FinetunePlan.from_dict(a.state_dict()["plan"]) == a.plan


@pytest.mark.parametrize(("plan", "message"), [
    ({"freeze": "layer9"}, r"freeze: .*layer9.*stem"),
    ({"at": {"layer4": 1}}, r"never trains group\(s\) \['stem', 'layer1', 'layer2', 'layer3'\]"),
    ({"lr_scales": {"neck": 0.5}}, r"lr_scales\['neck'\]: 'neck' matches no layer group.*layer4"),
    ({"lora": {"r": 0}}, r"r must be"),
    ({"layer_decay": 0.5, "backbone_lr_ratio": 0.1}, "at most one lr rule"),
    ({"at": {"head": 0}, "head_epochs": 1}, "either with at"),
    ({"unit": "minutes"}, "unit must be one of"),
    ({"bogus": 1}, r"unknown plan key\(s\) \['bogus'\]"),
])
def test_bad_plans_are_refused_with_the_valid_names(plan: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FinetuneController(resnet(), plan)


def test_schedule_beyond_the_end_of_training_is_refused_or_warned() -> None:
    c = FinetuneController(resnet(), {"head_epochs": 2, "every": 2})  # starts: head 0, layer4 2, ... stem 10
    assert c.starts == [10.0, 8.0, 6.0, 4.0, 2.0, 0.0]
    c.check_horizon(11)
    # open-ended: legal (short runs keep early layers), but said out loud
    with pytest.warns(UserWarning, match=r"group\(s\) \['stem'\] at epoch 10 or later.*after 10 epochs"):
        c.check_horizon(10)
    # a start the plan names explicitly that can never be reached is an error
    explicit = FinetuneController(resnet(), {"at": {"all_but_head": 3}})
    with pytest.raises(ValueError, match=r"at epoch 3 or later, but training ends after 3 epochs.*Groups: \['stem'"):
        explicit.check_horizon(3)


def test_fraction_unit_follows_the_run_length() -> None:
    c = FinetuneController(resnet(), {"at": {"layer4": 0.5}, "freeze": ["stem", "layer1", "layer2", "layer3"],
                                      "unit": "fraction"})
    assert c.trainable_at(c.position(step=40, total_steps=100)) == ["head"]
    assert c.trainable_at(c.position(step=50, total_steps=100)) == ["layer4", "head"]
    assert c.trainable_at(c.position(epoch=3, total_epochs=4)) == ["layer4", "head"]


def test_keep_frozen_parameters_stay_frozen_whatever_the_plan_says() -> None:
    """What a framework freezes itself (Ultralytics' freeze= layers, its fixed DFL conv) is passed to apply()."""
    model = resnet()
    c = FinetuneController(model, {"head_epochs": 1, "every": 1})
    opt = torch.optim.SGD(c.param_groups(0.1, weight_decay=0.0), lr=0.1)
    for mask_grads in (False, True):
        c.apply(10.0, mask_grads=mask_grads, keep_frozen=["layer4.1.", "fc.bias"])  # every group trains by now
        fixed = {n for n in dict(model.named_parameters()) if n.startswith("layer4.1.") or n == "fc.bias"}
        assert not any(p.requires_grad for n, p in model.named_parameters() if n in fixed)
        assert all(p.requires_grad for n, p in model.named_parameters() if n not in fixed)
        assert not ({id(p) for p in c.masked} & {id(p) for n, p in model.named_parameters() if n in fixed})
        before = train_step(model, opt)
        assert moved(model, before) & fixed == set() and "fc.weight" in moved(model, before)
