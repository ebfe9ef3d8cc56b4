"""apply_lora / merge_lora through peft on CNNs (Conv2d targets), transformers (Linear targets) and a plain MLP."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from core_helpers import changed, mlp, single_thread, snapshot, tiny_bert, tiny_vit  # noqa: F401 (fixture)
from torch import nn

from warmstart.core import (
    apply_lora,
    find_lora_targets,
    has_lora,
    layer_groups,
    lora_config,
    lora_state_dict,
    merge_lora,
    trainable_summary,
)

pytestmark = pytest.mark.usefixtures("single_thread")

peft = pytest.importorskip("peft")
torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def _resnet_proto():
    return torchvision.models.resnet18(num_classes=3)


@pytest.fixture
def resnet(_resnet_proto):
    return copy.deepcopy(_resnet_proto)


def _is_bn(name: str, model: nn.Module) -> bool:
    module = model.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _train(model: nn.Module, inputs: dict | torch.Tensor, steps: int = 2) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        out = out.logits if hasattr(out, "logits") else out
        loss = out.float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _no_peft_left(model: nn.Module) -> None:
    assert not has_lora(model)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert not any(type(m).__module__.startswith("peft") for m in model.modules())
    assert b"peft" not in pickle.dumps(model), "a merged model must load without peft installed"


def test_resnet_conv_targets_train_merge(resnet):
    targets = find_lora_targets(resnet)
    convs = [n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    assert targets == convs and "fc" not in targets
    model = apply_lora(resnet, r=4, alpha=8)
    assert model is resnet and type(model).__name__ == "ResNet"
    assert has_lora(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"fc.weight", "fc.bias", "bn1.weight", "layer4.1.bn2.bias"} <= trainable
    assert all("lora_" in n or n.startswith("fc.") or _is_bn(n, model) for n in trainable)
    assert "conv1.base_layer.weight" not in trainable
    summary = trainable_summary(model)
    assert summary["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < summary["percent"] < 10

    before = snapshot(model)
    _train(model, torch.randn(2, 3, 16, 16))
    moved = changed(model, before)
    assert any("lora_B" in n for n in moved) and "fc.weight" in moved and "bn1.weight" in moved
    assert moved <= trainable

    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    plain = merge_lora(model)
    _no_peft_left(plain)
    with torch.no_grad():
        assert torch.allclose(plain(x), expected, atol=1e-5)
    # the merged weights load into a fresh native model
    torchvision.models.resnet18(num_classes=3).load_state_dict(plain.state_dict())


@pytest.mark.parametrize("build", ["bert", "vit"])
def test_transformer_linear_targets(build):
    pytest.importorskip("transformers")
    model = tiny_bert() if build == "bert" else tiny_vit()
    inputs = ({"input_ids": torch.randint(0, 64, (2, 8))} if build == "bert"
              else {"pixel_values": torch.randn(2, 3, 32, 32)})
    targets = find_lora_targets(model)
    assert targets and all(isinstance(model.get_submodule(t), nn.Linear) for t in targets)
    assert not any(t.startswith(("classifier", "bert.pooler")) for t in targets), "the head is never adapted"
    assert len(targets) == 2 * (6 if build == "bert" else 6)  # q, k, v, attn-out, mlp-in, mlp-out per layer
    head = set(layer_groups(model)[-1].param_names)  # BERT: pooler + classifier; ViT: final norm + classifier
    apply_lora(model, r=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert trainable - head and all("lora_" in n for n in trainable - head), trainable
    before = snapshot(model)
    _train(model, inputs)
    moved = changed(model, before)
    assert moved <= trainable and any("lora_B" in n for n in moved) and "classifier.weight" in moved

    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
        plain = merge_lora(model)
        _no_peft_left(plain)
        assert torch.allclose(plain(**inputs).logits, expected, atol=1e-5)


def test_mlp_and_targets_forms():
    model = mlp()
    assert find_lora_targets(model) == ["0", "2"]  # the last Linear is the head
    assert find_lora_targets(model, ["2"]) == ["2"]
    assert find_lora_targets(model, r"^0$") == ["0"]
    apply_lora(model, r=2, targets=["2"])
    assert [n for n, m in model.named_modules() if n.endswith("lora_A")] == ["2.lora_A"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "2.lora_A.default.weight", "2.lora_B.default.weight", "4.weight", "4.bias"}
    x = torch.randn(5, 6)
    before = snapshot(model)
    _train(model, x)
    assert changed(model, before) == {"2.lora_A.default.weight", "2.lora_B.default.weight", "4.weight", "4.bias"}
    with torch.no_grad():
        expected = model(x)
        plain = merge_lora(model)
        _no_peft_left(plain)
        assert torch.allclose(plain(x), expected, atol=1e-5)


def test_targets_are_exact_not_suffixes(resnet):
    """peft reads ["conv1"] as a suffix; our targets must adapt the stem conv only, not every layerN.M.conv1."""
    apply_lora(resnet, r=2, targets=r"^conv1$")
    assert [n for n, m in resnet.named_modules() if n.endswith("lora_A")] == ["conv1.lora_A"]
    with torch.device("meta"):
        cfg = lora_config(torchvision.models.resnet18(num_classes=3), targets=r"^conv1$")
        pm = peft.get_peft_model(torchvision.models.resnet18(num_classes=3), cfg)
    assert [n for n, m in pm.named_modules() if n.endswith("lora_A")] == ["base_model.model.conv1.lora_A"]


def test_lora_state_dict_contents(resnet, _resnet_proto):
    apply_lora(resnet, r=2)
    _train(resnet, torch.randn(2, 3, 16, 16), steps=1)
    sd = lora_state_dict(resnet)
    full = resnet.state_dict()
    assert set(sd) <= set(full)
    assert {k for k in full if "lora_" in k} <= set(sd)
    assert {"fc.weight", "fc.bias", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
            "layer2.0.downsample.1.running_var"} <= set(sd)
    assert not any(k.endswith("base_layer.weight") for k in sd), "frozen base weights are not saved"
    assert all(torch.equal(sd[k], full[k]) for k in sd)
    # restoring the saved subset into a fresh adapted model reproduces its outputs
    fresh = apply_lora(copy.deepcopy(_resnet_proto), r=2)
    missing, unexpected = fresh.load_state_dict(sd, strict=False)
    assert not unexpected
    resnet.eval(), fresh.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        fresh_base = {k: v for k, v in resnet.state_dict().items() if k in missing}
        fresh.load_state_dict(fresh_base, strict=False)  # same frozen base for the comparison
        assert torch.allclose(fresh(x), resnet(x), atol=1e-6)


def test_peft_model_merge_and_head_saved():
    pytest.importorskip("transformers")
    model = tiny_bert()
    cfg = lora_config(model, r=2)
    assert set(cfg.modules_to_save) == {"bert.pooler.dense", "classifier"}
    pm = peft.get_peft_model(model, cfg)
    pm.eval()
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        expected = pm(input_ids=ids).logits
        plain = merge_lora(pm)
        _no_peft_left(plain)
        assert torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-5)


@pytest.mark.parametrize("targets, match", [
    (["nope"], r"match no nn.Linear / nn.Conv2d outside the head; candidates look like \['conv1'"),
    (["conv1", "nope"], r"\['nope'\] match no adaptable module; candidates look like"),
    (r"^fc$", "candidates look like"),  # the head is not a candidate
    (r"(", "regex .* is invalid"),
])
def test_bad_targets(resnet, targets, match):
    with pytest.raises(ValueError, match=match):
        apply_lora(resnet, targets=targets)
    assert not has_lora(resnet), "a failed apply_lora must leave the model untouched"


def test_bad_rank_and_no_candidates():
    with pytest.raises(ValueError, match="rank r must be >= 1"):
        apply_lora(mlp(), r=0)
    with pytest.raises(ValueError, match="found no nn.Linear or nn.Conv2d"):
        apply_lora(nn.Sequential(nn.Linear(3, 2)))
