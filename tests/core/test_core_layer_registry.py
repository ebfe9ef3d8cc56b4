"""The declarative layer-map registry over whole model zoos: every torchvision classifier, 20+ timm families,
Hugging Face encoder / decoder / encoder-decoder / two-tower models, and a user-registered family.

Models are built on the meta device (shapes, no storage): a 600M-parameter model costs milliseconds, and
layer_groups only reads names and shapes. HF configs are tiny and built in code (no download).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from core_helpers import TinyNet, assert_partition
from torch import nn

from warmstart.core import group_names, layer_groups
from warmstart.core.layer_registry import LayerRule, apply_rules, register_layer_map, unregister_layer_map
from warmstart.core.layers import layer_family


def check_ordered(model: nn.Module, groups, min_body: int = 4) -> None:
    """A partition, stem first and head last, body groups in registration (depth) order, >= min_body of them."""
    assert_partition(model, groups)
    index = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    firsts = [min(index[n] for n in g.param_names) for g in groups if g.role == "body"]
    assert firsts == sorted(firsts), group_names(groups)
    assert sum(g.role == "body" for g in groups) >= min_body, group_names(groups)
    assert groups[0].role == "stem", group_names(groups)
    assert len(set(group_names(groups))) == len(groups), group_names(groups)


# ----------------------------------------------------------------------------------------------- torchvision

torchvision = pytest.importorskip("torchvision")
TV_MODELS = torchvision.models.list_models(module=torchvision.models)


@pytest.fixture(scope="module")
def regnet_on_meta():
    """RegNet computes its stage widths with tensor ops and ``.tolist()``: run that part on the CPU."""
    from torchvision.models import regnet

    original = regnet.BlockParams.__dict__["from_init_params"]

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return original.__func__(cls, *args, **kwargs)

    regnet.BlockParams.from_init_params = classmethod(on_cpu)
    yield
    regnet.BlockParams.from_init_params = original


def tv(name: str) -> nn.Module:
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # googlenet / inception_v3 init-weight FutureWarnings
        return torchvision.models.get_model(name, weights=None)


@pytest.mark.parametrize("name", TV_MODELS)
def test_torchvision_classifiers(name, regnet_on_meta):
    m = tv(name)
    groups = layer_groups(m)
    check_ordered(m, groups)
    assert layer_family(m) == "torchvision"
    assert group_names(groups)[-1] == "head" and len(groups[-1].param_names) >= 1


def test_torchvision_regnet_stages(regnet_on_meta):
    """Was: stem.stem.0, stem.stem.1 (both body), one group for the whole trunk, fc."""
    m = tv("regnet_y_400mf")
    groups = layer_groups(m)
    assert [(g.name, g.role) for g in groups] == [("stem", "stem")] + [
        (f"trunk_output.block{i}", "body") for i in range(1, 5)] + [("head", "head")]
    assert groups[-1].param_names == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("name, expected", [
    ("densenet121", ["stem", "features.denseblock1", "features.transition1", "features.denseblock2"]),
    ("googlenet", ["stem", "inception3a", "inception3b", "inception4a"]),
    ("shufflenet_v2_x0_5", ["stem", "stage2", "stage3", "stage4", "conv5", "head"]),
    ("maxvit_t", ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "head"]),
])
def test_torchvision_names(name, expected):
    groups = layer_groups(tv(name))
    assert group_names(groups)[:len(expected)] == expected
    if name == "googlenet":  # the auxiliary classifiers are heads, not depth
        assert {n.split(".")[0] for n in groups[-1].param_names} == {"aux1", "aux2", "fc"}


# ------------------------------------------------------------------------------------------------------ timm

TIMM_MODELS = [
    "resnet18", "convnext_atto", "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
    "efficientnet_b0", "mobilenetv3_small_100", "regnetx_002", "densenet121", "beit_base_patch16_224",
    "eva02_tiny_patch14_224", "levit_128s", "mixer_s16_224", "coatnet_0_rw_224", "maxvit_tiny_rw_224",
    "dm_nfnet_f0", "rexnet_100", "ghostnet_100", "hrnet_w18_small", "dla34", "cait_xxs24_224",
    "xcit_nano_12_p16_224", "mobilevit_xxs", "edgenext_xx_small", "repvgg_a0", "fastvit_t8", "pvt_v2_b0",
]


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_architectures(name):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        m = timm.create_model(name, pretrained=False)
    groups = layer_groups(m)
    check_ordered(m, groups)
    assert layer_family(m) == "timm"
    if m.num_classes:  # with a classifier the last group is named "head"; a feature model keeps its block name
        assert group_names(groups)[-1] == "head"


# ---------------------------------------------------------------------------------------------- Hugging Face

transformers = pytest.importorskip("transformers")
SEQ2SEQ = dict(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, pad_token_id=0,
               bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
TEXT = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32)
VISION = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32,
              patch_size=8)


def _configs() -> dict[str, tuple[str, object, list[str]]]:
    """name -> (model class, config, block stacks in the expected order: encoder first)."""
    t = transformers
    clip = t.CLIPConfig(text_config=dict(TEXT, max_position_embeddings=16), vision_config=VISION, projection_dim=8)
    return {
        "t5": ("T5ForConditionalGeneration", t.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2,
               num_decoder_layers=2, num_heads=2), ["encoder.block", "decoder.block"]),
        "bart": ("BartForSequenceClassification", t.BartConfig(max_position_embeddings=32, **SEQ2SEQ),
                 ["model.encoder.layers", "model.decoder.layers"]),
        "marian": ("MarianMTModel", t.MarianConfig(max_position_embeddings=32, **SEQ2SEQ),
                   ["model.encoder.layers", "model.decoder.layers"]),
        "whisper": ("WhisperForConditionalGeneration", t.WhisperConfig(num_mel_bins=8, max_source_positions=16,
                    max_target_positions=16, **SEQ2SEQ), ["model.encoder.layers", "model.decoder.layers"]),
        "clip": ("CLIPModel", clip, ["text_model.encoder.layers", "vision_model.encoder.layers"]),
        "clip_text": ("CLIPTextModel", clip.text_config, None),
        "clip_vision": ("CLIPVisionModel", clip.vision_config, None),
        "bert": ("BertForMaskedLM", t.BertConfig(**TEXT), ["bert.encoder.layer"]),
        "roberta": ("RobertaForSequenceClassification", t.RobertaConfig(**TEXT, pad_token_id=0),
                    ["roberta.encoder.layer"]),
        "distilbert": ("DistilBertModel", t.DistilBertConfig(vocab_size=64, dim=16, n_layers=2, n_heads=2,
                       hidden_dim=32, max_position_embeddings=32), ["transformer.layer"]),
        "gpt2": ("GPT2LMHeadModel", t.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32),
                 ["transformer.h"]),
        "llama": ("LlamaForCausalLM", t.LlamaConfig(**TEXT, num_key_value_heads=2, tie_word_embeddings=False),
                  ["model.layers"]),
        "vit": ("ViTForImageClassification", t.ViTConfig(**VISION), None),
        "swin": ("SwinForImageClassification", t.SwinConfig(image_size=32, patch_size=4, embed_dim=8,
                 depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2), ["swin.encoder.layers"]),
        "convnext": ("ConvNextForImageClassification", t.ConvNextConfig(hidden_sizes=[8, 16, 32, 64],
                     depths=[1, 1, 1, 1]), ["convnext.encoder.stages"]),
    }


HF = _configs()


def hf_model(key: str) -> nn.Module:
    cls_name, cfg, _ = HF[key]
    with torch.device("meta"):
        return getattr(transformers, cls_name)(cfg)


@pytest.mark.parametrize("key", sorted(HF))
def test_hf_each_block_its_own_group_encoder_first(key):
    from warmstart.core.layer_families import block_stacks

    m = hf_model(key)
    stacks = HF[key][2] or block_stacks(m)
    assert block_stacks(m) == stacks
    groups = layer_groups(m)
    assert_partition(m, groups)
    names = group_names(groups)
    assert names[0] == "embeddings" and groups[0].role == "stem"
    expected_blocks = [f"{s}.{k}" for s in stacks for k, _ in m.get_submodule(s).named_children()]
    # each block is one group (named by its path; an encoder's final norm may join its last block as "+...")
    owners = [next(i for i, g in enumerate(groups) if any(n.startswith(b + ".") for n in g.param_names))
              for b in expected_blocks]
    assert owners == sorted(set(owners)), names  # distinct and in order: encoder blocks before decoder blocks
    for b, i in zip(expected_blocks, owners):
        assert names[i].split("+")[0] == b
        assert all(n.startswith(b + ".") for n in groups[i].param_names if n.startswith(b.rsplit(".", 1)[0] + "."))
    assert layer_family(m) == "hf"


def test_t5_encoder_inside_embeddings_bug_fixed():
    """Was: embeddings, decoder.block.0, decoder.block.1, head (the whole encoder inside "embeddings")."""
    m = hf_model("t5")
    groups = layer_groups(m)
    assert [(g.name, g.role) for g in groups] == [
        ("embeddings", "stem"), ("encoder.block.0", "body"), ("encoder.block.1+encoder.final_layer_norm", "body"),
        ("decoder.block.0", "body"), ("decoder.block.1", "body"), ("head", "head")]
    assert groups[0].param_names == ["shared.weight"]
    assert groups[-1].param_names == ["decoder.final_layer_norm.weight"]


def test_decoder_and_second_tower_embeddings_are_stems():
    bart = group_names(layer_groups(hf_model("bart")))
    # BART registers encoder.layernorm_embedding after its layers: still input side
    assert bart[0] == "embeddings" and "model.decoder.embed_positions+model.decoder.layernorm_embedding" in bart
    clip = layer_groups(hf_model("clip"))
    roles = {g.name: g.role for g in clip}
    assert roles["vision_model.embeddings+vision_model.pre_layrnorm"] == "stem"
    head = set(clip[-1].param_names)  # the temperature is registered first but is output side
    assert {"logit_scale", "visual_projection.weight", "text_projection.weight"} <= head


# ------------------------------------------------------------------------------------------- user families


class Trunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 2)


@pytest.fixture
def trunk_family():
    register_layer_map("trunk", [(r"^inp\.", "stem", "stem"), (r"^blocks\.(\d+)\.", "body", "block{0}"),
                                 LayerRule(r"^norm\.", merge=True), (r"^out\.", "head", "head")],
                       detect=lambda m: isinstance(m, Trunk))
    yield
    unregister_layer_map("trunk")


def test_user_registered_family_is_used(trunk_family):
    m = Trunk()
    assert layer_family(m) == "trunk"
    groups = layer_groups(m)
    assert_partition(m, groups)
    assert [(g.name, g.role) for g in groups] == [("stem", "stem"), ("block0", "body"), ("block1", "body"),
                                                  ("block2+norm", "body"), ("head", "head")]
    # through a wrapper (names kept) and inside a generic model (names prefixed, its head demoted to body)
    assert group_names(layer_groups(nn.DataParallel(m))) == group_names(groups)
    outer = nn.Sequential(m, nn.Linear(2, 2))
    assert group_names(layer_groups(outer))[:2] == ["0.stem", "0.block0"]
    assert [g.role for g in layer_groups(outer)][-2:] == ["body", "head"]


def test_user_family_wins_over_builtin_and_can_be_removed():
    m = torchvision.models.resnet18(num_classes=3)
    register_layer_map("resnet-blocks", lambda model: [(r"^(?:conv1|bn1)\.", "stem", "stem"),
                                                       (r"^layer\d+\.\d+\.", "body"), ("", "head", "head")],
                       detect=lambda model: type(model).__name__ == "ResNet")
    try:
        assert layer_family(m) == "resnet-blocks"
        assert group_names(layer_groups(m)) == ["stem"] + [f"layer{s}.{b}" for s in range(1, 5) for b in
                                                           range(2)] + ["head"]
    finally:
        unregister_layer_map("resnet-blocks")
    assert group_names(layer_groups(m)) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


def test_patterns_override_still_wins(trunk_family):
    groups = layer_groups(Trunk(), patterns=[r"^(inp|blocks)\.", ".*"])
    assert group_names(groups) == [r"^(inp|blocks)\.", ".*"]


def test_bad_registrations_are_clear():
    with pytest.raises(ValueError, match="role 'middle'"):
        register_layer_map("x", [(r"^a", "middle")], detect=lambda m: True)
    with pytest.raises(ValueError, match="not a valid regex"):
        register_layer_map("x", [(r"(", "body")], detect=lambda m: True)
    with pytest.raises(ValueError, match="non-empty list"):
        register_layer_map("x", [], detect=lambda m: True)
    with pytest.raises(ValueError, match="detect must be"):
        register_layer_map("x", [(r"^a", "body")], detect=None)
    assert layer_family(TinyNet()) == "generic"


def test_unmatched_parameters_join_the_head():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    groups = apply_rules(m, [LayerRule(r"^0\.", "stem", "stem"), LayerRule(r"^1\.")])
    assert [(g.name, g.param_names) for g in groups][-1] == ("head", ["2.weight", "2.bias"])
