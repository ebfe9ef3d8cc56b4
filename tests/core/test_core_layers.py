"""layer_groups: one test per model family of issue #2 item 3, all built with random weights (no downloads).

Big torchvision models are built on the meta device: layer_groups only reads names and shapes, so this is the
same answer at a fraction of the cost.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from core_helpers import TinyNet, assert_partition, group_of, mlp, tiny_bert, tiny_vit
from torch import nn

from warmstart.core import group_names, layer_groups

torchvision = pytest.importorskip("torchvision")


def _tv(name: str) -> nn.Module:
    with torch.device("meta"):
        return getattr(torchvision.models, name)(num_classes=3)


FEATURES_HEAD = {  # torchvision families with a `features` Sequential: number of feature stages with params
    "convnext_tiny": 8, "efficientnet_b0": 9, "mobilenet_v3_small": 13, "swin_t": 8,
}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_resnet(name):
    m = _tv(name)
    groups = layer_groups(m)
    assert_partition(m, groups)
    assert group_names(groups) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [g.role for g in groups] == ["stem", "body", "body", "body", "body", "head"]
    assert groups[0].param_names == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert groups[-1].param_names == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("name", sorted(FEATURES_HEAD))
def test_torchvision_features_families(name):
    m = _tv(name)
    groups = layer_groups(m)
    assert_partition(m, groups)
    n = FEATURES_HEAD[name]
    assert group_names(groups) == [f"features.{i}" for i in range(n)] + ["head"]
    assert [g.role for g in groups] == ["stem"] + ["body"] * (n - 1) + ["head"]
    head_modules = {p.split(".")[0] for p in groups[-1].param_names}
    # swin's final norm sits beside `head`; convnext's LayerNorm2d is inside `classifier`
    assert head_modules == ({"norm", "head"} if name == "swin_t" else {"classifier"})


def test_torchvision_vit_b_16():
    m = _tv("vit_b_16")
    groups = layer_groups(m)
    assert_partition(m, groups)
    assert group_names(groups) == ["stem"] + [f"encoder.layers.encoder_layer_{i}" for i in range(12)] + ["head"]
    assert set(groups[0].param_names) == {"class_token", "encoder.pos_embedding", "conv_proj.weight",
                                          "conv_proj.bias"}
    assert set(groups[-1].param_names) == {"encoder.ln.weight", "encoder.ln.bias", "heads.head.weight",
                                           "heads.head.bias"}


# ------------------------------------------------------------------------------------------------- timm

TIMM_EXPECTED = {
    "resnet18": ["stem"] + [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)] + ["head"],
    "vit_tiny_patch16_224": ["stem"] + [f"blocks.{i}" for i in range(11)] + ["blocks.11+norm", "head"],
    # timm's matcher puts each stage's downsample with that stage's first block
    "convnext_atto": ["stem", "stages.0.blocks.0", "stages.0.blocks.1", "stages.1.downsample+stages.1.blocks.0",
                      "stages.1.blocks.1", "stages.2.downsample+stages.2.blocks.0"]
    + [f"stages.2.blocks.{i}" for i in range(1, 6)] + ["stages.3.downsample+stages.3.blocks.0",
                                                       "stages.3.blocks.1", "head"],
    "efficientnet_b0": ["stem", "blocks.0"] + [f"blocks.{s}.{b}" for s, n in [(1, 2), (2, 2), (3, 3), (4, 3), (5, 4)]
                                               for b in range(n)] + ["blocks.6+conv_head+bn2", "head"],
}


@pytest.mark.parametrize("name", sorted(TIMM_EXPECTED))
def test_timm_group_matcher(name):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        m = timm.create_model(name, pretrained=False, num_classes=3)
    assert hasattr(m, "group_matcher")
    groups = layer_groups(m)
    assert_partition(m, groups)
    assert group_names(groups) == TIMM_EXPECTED[name]
    assert groups[0].role == "stem" and groups[-1].role == "head"
    assert all(g.role == "body" for g in groups[1:-1])
    # group names are module prefixes: each group's params are exactly the params under its "+"-joined prefixes
    for g in groups[1:-1]:
        prefixes = g.name.split("+")
        under = [n for n, _ in m.named_parameters() if any(n.startswith(p + ".") for p in prefixes)]
        assert sorted(under) == sorted(g.param_names), g.name


def test_timm_without_group_matcher_uses_generic_fallback():
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        m = timm.create_model("pit_ti_224", pretrained=False, num_classes=3)
    assert not hasattr(m, "group_matcher")
    groups = layer_groups(m)
    assert_partition(m, groups)
    # root tensors (pos_embed, cls_token) first, then top-level children with params in registration order
    assert group_names(groups) == ["root", "patch_embed", "transformers", "norm", "head"]
    assert set(groups[0].param_names) == {"pos_embed", "cls_token"}


# ------------------------------------------------------------------------------------------- Hugging Face


@pytest.mark.parametrize("cls_name, prefix, head", [
    ("BertModel", "", {"pooler.dense.weight", "pooler.dense.bias"}),
    ("BertForSequenceClassification", "bert.", {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                                "classifier.weight", "classifier.bias"}),
])
def test_hf_bert(cls_name, prefix, head):
    pytest.importorskip("transformers")
    m = tiny_bert(cls_name)
    groups = layer_groups(m)
    assert_partition(m, groups)
    assert group_names(groups) == ["embeddings", f"{prefix}encoder.layer.0", f"{prefix}encoder.layer.1", "head"]
    assert [g.role for g in groups] == ["stem", "body", "body", "head"]
    assert all(n.startswith(f"{prefix}embeddings.") for n in groups[0].param_names)
    assert set(groups[-1].param_names) == head


def test_hf_vit():
    pytest.importorskip("transformers")
    m = tiny_vit()
    groups = layer_groups(m)
    assert_partition(m, groups)
    layer_names = group_names(groups)[1:-1]
    assert group_names(groups)[0] == "embeddings" and len(layer_names) == 2
    assert all(n.startswith("vit.") and n.endswith(str(i)) for i, n in enumerate(layer_names))
    assert "vit.embeddings.cls_token" in groups[0].param_names
    assert {"classifier.weight", "vit.layernorm.weight"} <= set(groups[-1].param_names)


def test_hf_layer_list_with_named_children():
    """A model whose block list is a Sequential with named (not numbered) children keeps every block a group."""
    pytest.importorskip("transformers")
    m = tiny_bert("BertModel")
    m.encoder.layer = nn.Sequential(OrderedDict(first=m.encoder.layer[0], second=m.encoder.layer[1]))
    groups = layer_groups(m)
    assert_partition(m, groups)
    assert group_names(groups) == ["embeddings", "encoder.layer.first", "encoder.layer.second", "head"]


# -------------------------------------------------------------------------------------------- Ultralytics


@pytest.fixture(scope="module", params=["yolov8n.yaml", "yolo11n.yaml"])
def yolo_model(request):
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    return tasks.DetectionModel(request.param, verbose=False)


def test_ultralytics_detection_model(yolo_model):
    groups = layer_groups(yolo_model)
    assert_partition(yolo_model, groups)
    n_backbone = len(yolo_model.yaml["backbone"])
    with_params = [i for i, layer in enumerate(yolo_model.model) if any(True for _ in layer.parameters())]
    assert group_names(groups) == [f"model.{i}" for i in with_params]
    last = len(yolo_model.model) - 1
    for g, i in zip(groups, with_params):
        assert g.role == ("head" if i == last else "backbone" if i < n_backbone else "neck"), g.name
        assert all(n.startswith(f"model.{i}.") for n in g.param_names)
    assert type(yolo_model.model[last]).__name__ == "Detect"


# ------------------------------------------------------------------------------------------------- peft


def test_peft_get_peft_model_keeps_structure():
    peft = pytest.importorskip("peft")
    m = torchvision.models.resnet18(num_classes=3)
    pm = peft.get_peft_model(m, peft.LoraConfig(r=2, target_modules=["conv1", "conv2"], modules_to_save=["fc"]))
    groups = layer_groups(pm)
    assert_partition(pm, groups)
    assert group_names(groups) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert group_of(groups, "base_model.model.conv1.lora_A.default.weight") == "stem"
    assert group_of(groups, "base_model.model.layer3.1.conv2.lora_B.default.weight") == "layer3"
    assert group_of(groups, "base_model.model.fc.modules_to_save.default.weight") == "head"


def test_peft_inject_adapter_in_model():
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    m = tiny_bert()
    peft.inject_adapter_in_model(peft.LoraConfig(r=2, target_modules=["query", "value"]), m)
    groups = layer_groups(m)
    assert_partition(m, groups)
    assert group_names(groups) == ["embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "head"]
    lora = [n for n, _ in m.named_parameters() if "lora_" in n]
    assert len(lora) == 8
    for n in lora:
        assert group_of(groups, n) == f"bert.encoder.layer.{n.split('.')[3]}"


# ---------------------------------------------------------------------------------------------- generic


def test_generic_module_top_level_children_in_registration_order():
    m = TinyNet()
    groups = layer_groups(m)
    assert_partition(m, groups)
    assert [(g.name, g.role) for g in groups] == [("stem", "body"), ("body", "body"), ("head", "head")]


def test_generic_sequential_and_wrapper():
    m = mlp()
    assert group_names(layer_groups(m)) == ["0", "2", "4"]

    class Wrapper(nn.Module):  # a user model holding a torchvision backbone and its own classifier
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torchvision.models.resnet18(num_classes=3)
            self.classifier = nn.Linear(3, 2)

    w = Wrapper()
    groups = layer_groups(w)
    assert_partition(w, groups)
    assert group_names(groups) == [f"backbone.{n}" for n in ["stem", "layer1", "layer2", "layer3", "layer4",
                                                             "head"]] + ["classifier"]
    # the backbone's own classifier is not this model's head
    assert [g.role for g in groups][-2:] == ["body", "head"]


# ------------------------------------------------------------------------------------------ regex override


def test_regex_override_first_match_wins():
    m = torchvision.models.resnet18(num_classes=3)
    patterns = [r"^(conv1|bn1|layer1)\.", r"^layer[23]\.", r".*"]
    groups = layer_groups(m, patterns)
    assert_partition(m, groups)
    assert group_names(groups) == patterns
    assert group_of(groups, "layer1.0.conv1.weight") == patterns[0]
    assert group_of(groups, "layer3.1.bn2.bias") == patterns[1]
    assert group_of(groups, "layer4.0.conv1.weight") == patterns[2]
    assert group_of(groups, "fc.weight") == patterns[2]
    assert [g.role for g in groups] == ["body", "body", "head"]


def test_regex_override_errors():
    m = TinyNet()
    with pytest.raises(ValueError, match="unassigned.*catch-all"):
        layer_groups(m, [r"^stem\.", r"^body\."])
    with pytest.raises(ValueError, match=r"\^nothing.*match no parameter.*stem\.0\.weight"):
        layer_groups(m, [r"^nothing", r".*"])
    with pytest.raises(ValueError, match="not a valid regex"):
        layer_groups(m, [r"(", r".*"])
    with pytest.raises(ValueError, match="non-empty"):
        layer_groups(m, [])


def test_timm_feature_extractor_last_block_not_named_head():
    """With num_classes=0 there is no classifier: the last block is the head by position, not by name."""
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        m = timm.create_model("resnet18", pretrained=False, num_classes=0)
    groups = layer_groups(m)
    assert_partition(m, groups)
    assert group_names(groups)[-2:] == ["layer4.0", "layer4.1"]
    assert groups[-1].role == "head"


@pytest.mark.parametrize("wrap", ["compile", "data_parallel"])
def test_torch_wrappers_keep_group_names(wrap):
    """torch.compile / DataParallel add a prefix to every parameter name but must not rename the groups."""
    m = TinyNet()
    wrapped = torch.compile(m) if wrap == "compile" else nn.DataParallel(m)
    groups = layer_groups(wrapped)
    assert_partition(wrapped, groups)
    assert group_names(groups) == ["stem", "body", "head"]
    prefix = "_orig_mod." if wrap == "compile" else "module."
    assert groups[-1].param_names == [f"{prefix}head.weight", f"{prefix}head.bias"]


def test_peft_wrapped_generic_model_keeps_group_names():
    peft = pytest.importorskip("peft")
    m = mlp()
    pm = peft.get_peft_model(m, peft.LoraConfig(r=2, target_modules=["0", "2"]))
    groups = layer_groups(pm)
    assert_partition(pm, groups)
    assert group_names(groups) == ["0", "2", "4"]
    assert group_of(groups, "base_model.model.2.lora_B.default.weight") == "2"
