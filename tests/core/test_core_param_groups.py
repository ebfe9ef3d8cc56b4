"""param_groups: every parameter once, explicit lr per layer group, no-decay rules, ratios kept by schedulers."""

from __future__ import annotations

import math

import pytest
import torch
from core_helpers import TinyNet, single_thread, tiny_bert  # noqa: F401 (fixture)
from torch import nn

from warmstart.core import freeze, group_lr_table, is_no_decay, layer_groups, param_groups

pytestmark = pytest.mark.usefixtures("single_thread")

NAMES = ["stem", "body", "head"]


def _all_once(model: nn.Module, groups: list[dict]) -> None:
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    for g in groups:  # param_names line up with params
        params = dict(model.named_parameters())
        assert [id(params[n]) for n in g["param_names"]] == [id(p) for p in g["params"]]


def test_all_params_once_including_frozen():
    model = TinyNet()
    freeze(model, "all_but_head")
    groups = param_groups(model, 0.1, layer_decay=0.5, weight_decay=0.01)
    _all_once(model, groups)
    assert [g["name"] for g in groups] == [f"{n}/{k}" for n in NAMES for k in ("decay", "no_decay")]


def test_layer_decay_lr_and_scale():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        model = torchvision.models.resnet18(num_classes=3)
    names = [g.name for g in layer_groups(model)]
    groups = param_groups(model, 1e-3, layer_decay=0.8, weight_decay=0.05)
    _all_once(model, groups)
    for g in groups:
        layer = g["name"].split("/")[0]
        distance = len(names) - 1 - names.index(layer)
        assert g["lr_scale"] == pytest.approx(0.8 ** distance)
        assert g["lr"] == pytest.approx(1e-3 * 0.8 ** distance)
    assert [g["name"] for g in groups][-2:] == ["head/decay", "head/no_decay"]


def test_group_lrs_by_name_and_regex():
    model = TinyNet()
    groups = param_groups(model, 0.1, group_lrs={"stem": 0.001, r"b.d.": 0.01})
    lrs = {g["name"].split("/")[0]: g["lr"] for g in groups}
    assert lrs == pytest.approx({"stem": 0.001, "body": 0.01, "head": 0.1})
    assert {g["name"].split("/")[0]: g["lr_scale"] for g in groups} == pytest.approx(
        {"stem": 0.01, "body": 0.1, "head": 1.0})


def test_backbone_lr_ratio_and_scale_key():
    model = TinyNet()
    groups = param_groups(model, 0.1, backbone_lr_ratio=0.1, scale_key="warmstart_lr_scale")
    assert {g["name"].split("/")[0]: g["lr"] for g in groups} == pytest.approx(
        {"stem": 0.01, "body": 0.01, "head": 0.1})
    assert all("warmstart_lr_scale" in g and "lr_scale" not in g for g in groups)


def test_no_weight_decay_for_bias_norm_and_embeddings():
    pytest.importorskip("transformers")
    model = tiny_bert()
    groups = param_groups(model, 1e-3, layer_decay=0.9, weight_decay=0.1)
    _all_once(model, groups)
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert wd["bert.embeddings.position_embeddings.weight"] == 0.0
    assert wd["bert.embeddings.LayerNorm.weight"] == 0.0
    assert wd["bert.encoder.layer.0.attention.self.query.bias"] == 0.0
    assert wd["bert.encoder.layer.0.attention.self.query.weight"] == 0.1
    assert wd["classifier.weight"] == 0.1
    assert wd["bert.embeddings.word_embeddings.weight"] == 0.1
    for g in groups:
        assert g["name"].endswith("/no_decay") == (g["weight_decay"] == 0.0)


@pytest.mark.parametrize("name, shape, expected", [
    ("blocks.0.norm1.weight", (8,), True), ("fc.bias", (3,), True), ("pos_embed", (1, 5, 8), True),
    ("cls_token", (1, 1, 8), True), ("class_token", (1, 1, 8), True), ("encoder.pos_embedding", (1, 5, 8), True),
    ("features.1.0.attn.relative_position_bias_table", (9, 2), True), ("fc.weight", (3, 8), False),
    ("conv.weight", (4, 3, 3, 3), False),
])
def test_is_no_decay(name, shape, expected):
    assert is_no_decay(name, nn.Parameter(torch.zeros(shape))) is expected


@pytest.mark.parametrize("kwargs, match", [
    (dict(layer_decay=0.0), r"layer_decay must be in \(0, 1\]"),
    (dict(layer_decay=1.5), r"layer_decay must be in \(0, 1\]"),
    (dict(layer_decay=-0.5), r"layer_decay must be in \(0, 1\]"),
    (dict(layer_decay=math.nan), r"layer_decay must be in \(0, 1\]"),
    (dict(group_lrs={"neck": 0.1}), r"'neck' matches no layer group; valid groups are \['stem', 'body', 'head'\]"),
    (dict(group_lrs={"stem": -1.0}), "must be >= 0"),
    (dict(backbone_lr_ratio=-0.1), "backbone_lr_ratio must be >= 0"),
    (dict(layer_decay=0.5, backbone_lr_ratio=0.1), "only one of"),
    (dict(layer_patterns=[r"^stem\."]), "unassigned"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        param_groups(TinyNet(), 0.1, **kwargs)


def test_layer_decay_one_is_uniform_and_bad_lr():
    groups = param_groups(TinyNet(), 0.1, layer_decay=1.0)
    assert {g["lr"] for g in groups} == {0.1}
    with pytest.raises(ValueError, match="lr must be > 0"):
        param_groups(TinyNet(), 0.0)


# ------------------------------------------------------------------------------- schedulers in a real loop


def _schedulers(opt: torch.optim.Optimizer, steps: int) -> dict:
    return {
        # OneCycleLR overwrites every group's lr with max_lr: pass one max_lr per group to keep the ratios
        "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                                 total_steps=steps),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
        "lambda": lambda: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3) * 0.9 ** s),
    }


@pytest.mark.parametrize("sched", ["onecycle", "cosine", "lambda"])
def test_ratio_to_head_kept_at_every_step(sched):
    model = TinyNet()
    freeze(model, "stem")  # frozen groups are in the optimizer too and follow the schedule
    steps = 8
    opt = torch.optim.AdamW(param_groups(model, 1e-2, layer_decay=0.5, weight_decay=0.01))
    scales = [g["lr_scale"] for g in opt.param_groups]
    scheduler = _schedulers(opt, steps)[sched]()
    head = [g["name"] for g in opt.param_groups].index("head/decay")
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    seen_head_lrs = []
    for _ in range(steps):
        lrs = [g["lr"] for g in opt.param_groups]
        seen_head_lrs.append(lrs[head])
        for lr, scale in zip(lrs, scales):
            assert lr == pytest.approx(lrs[head] * scale, rel=1e-9)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        scheduler.step()
    assert len(set(seen_head_lrs)) > 3, "the schedule must actually move the lr"
    table = group_lr_table(opt)
    assert table["stem/decay"] == pytest.approx(table["head/decay"] * 0.25)


def test_explicit_groups_must_cover_every_param():
    model = TinyNet()
    groups = layer_groups(model)
    assert len(param_groups(model, 0.1, groups=groups)) == 6
    with pytest.raises(ValueError, match=r"every parameter of the model exactly once; missing \['head.bias'"):
        param_groups(model, 0.1, groups=groups[:-1] + [type(groups[-1])("head", "head", ["head.weight"])])
