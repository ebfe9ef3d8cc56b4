"""Backbone adapters: pooled (B, D) features with gradients for every family, native weights round-trip."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from warmstart.core.backbones import Backbone, build_backbone, list_backbones

# resnet18 / timm / hf-vit / yolov8n are checked the same way inside their round-trip tests below.
SPECS = ["torchvision/mobilenet_v3_small", "hf/convnext", "hf/resnet"]


def check_features_and_gradients(bb: Backbone, size: int) -> None:
    """(B, feature_dim) output, train mode kept, and a gradient on every parameter."""
    assert bb.training, "building must leave the model in train mode"
    feats = bb(torch.randn(3, 3, size, size))
    assert feats.shape == (3, bb.feature_dim) and bb.feature_dim > 0
    feats.pow(2).mean().backward()
    params = list(bb.named_parameters())
    # Every parameter is used (DDP refuses unused ones): no classifier or detection head rides along.
    assert params and [n for n, p in params if p.grad is None] == []
    assert params[0][1].grad.abs().sum() > 0  # the stem learns
    bb.zero_grad(set_to_none=True)


@pytest.mark.parametrize("spec", SPECS)
def test_pooled_features_and_gradients(spec):
    bb = build_backbone(spec, image_size=32)
    assert isinstance(bb, Backbone) and bb.family == spec.split("/")[0] and bb.spec == spec
    check_features_and_gradients(bb, 32)


def test_feature_dim_inference_leaves_bn_statistics_alone():
    import torchvision

    model = torchvision.models.resnet18()
    before = model.bn1.running_mean.clone()
    bb = build_backbone(model, image_size=32)
    assert torch.equal(model.bn1.running_mean, before) and bb.training and bb.model is model
    assert bb.feature_dim == 512 and isinstance(model.fc, nn.Identity)


def test_torchvision_vit_uses_class_token_without_classifier():
    import torchvision

    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=10)
    bb = build_backbone(vit)
    assert bb.family == "torchvision" and bb.feature_dim == 16 and bb.image_size == 32
    assert not any(k.startswith("heads") for k in bb.native_state_dict())
    assert bb(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    n_linear = sum(isinstance(m, nn.Linear) for m in vit.modules())
    again = build_backbone(vit)  # already stripped: the encoder's MLP Linears must survive
    assert again.feature_dim == 16 and sum(isinstance(m, nn.Linear) for m in vit.modules()) == n_linear


def test_torchvision_export_loads_into_native_resnet18_and_gives_same_features():
    import torchvision

    bb = build_backbone("torchvision/resnet18", image_size=32)
    check_features_and_gradients(bb, 32)
    native = torchvision.models.resnet18()
    result = native.load_state_dict(bb.native_state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    again = build_backbone(native).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again(x), bb.eval()(x))


@pytest.mark.parametrize("name,kwargs", [("resnet18", {}), ("vit_tiny_patch16_224", {"img_size": 32})])
def test_timm_export_loads_into_timm_create_model(name, kwargs):
    import timm

    bb = build_backbone(f"timm/{name}", image_size=32, **kwargs)
    check_features_and_gradients(bb, 32)
    native = timm.create_model(name, pretrained=False, **kwargs)
    result = native.load_state_dict(bb.native_state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith(("fc.", "head.")) for k in result.missing_keys)
    native.reset_classifier(0)
    assert build_backbone(native).image_size == (32 if kwargs else 64)  # a ViT's own input size is found
    torch.testing.assert_close(native.eval()(torch.ones(1, 3, 32, 32)), bb.eval()(torch.ones(1, 3, 32, 32)))


def test_hf_tiny_vit_export_loads_into_transformers_models(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    from warmstart.core.checkpoints import export_backbone, load_backbone_weights

    bb = build_backbone("hf/vit", image_size=32)
    check_features_and_gradients(bb, 32)
    config = ViTConfig(**bb.info["hf_config"])
    base = ViTModel(config, add_pooling_layer=False)
    result = base.load_state_dict(bb.native_state_dict(), strict=True)
    assert not result.missing_keys
    classifier = ViTForImageClassification(config)  # holds the ViT under "vit."
    report = load_backbone_weights(classifier, bb.native_state_dict())
    assert report.prefix == "vit." and len(report.matched) == report.total_backbone
    torch.testing.assert_close(classifier.vit.embeddings.cls_token, bb.model.embeddings.cls_token)
    # The export folder has config.json, so "hf/<folder>" rebuilds the same architecture; weights load into it.
    export_backbone(bb, tmp_path)
    rebuilt = build_backbone(f"hf/{tmp_path}")
    load_backbone_weights(rebuilt, tmp_path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), bb.eval()(x))


def test_yolo_backbone_shares_layers_and_exports_detectionmodel_keys():
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    yolo = YOLO("yolov8n.yaml")
    bb = build_backbone(yolo)
    check_features_and_gradients(bb, 64)
    assert bb.family == "ultralytics" and bb.info["backbone_layers"] == 10  # through SPPF (layer 9)
    assert bb.model.model[0] is yolo.model.model[0]
    with torch.no_grad():
        bb.model.model[0].conv.weight.fill_(0.5)
    assert float(yolo.model.model[0].conv.weight.detach().mean()) == 0.5
    state = bb.native_state_dict()
    assert "model.0.conv.weight" in state and "model.9.cv2.conv.weight" in state
    assert not any(k.startswith("model.10.") for k in state)
    fresh = DetectionModel("yolov8n.yaml", verbose=False)
    result = fresh.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert all(int(k.split(".")[1]) >= 10 for k in result.missing_keys)  # only neck and head stay untrained
    torch.testing.assert_close(fresh.model[0].conv.weight, yolo.model.model[0].conv.weight)


def test_custom_module_with_and_without_feature_fn():
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
    bb = build_backbone(net, image_size=16)  # 4-D output: global average pooled
    assert bb.family == "custom" and bb.feature_dim == 6
    bb2 = build_backbone(net, feature_fn=lambda m, x: m(x).amax(dim=(2, 3)), image_size=16)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(bb2(x), net(x).amax(dim=(2, 3)))
    bad = build_backbone(nn.Flatten(), image_size=4)  # flattened (2, 48): still valid features
    assert bad.feature_dim == 48
    spec_fn = build_backbone("hf/resnet", feature_fn=lambda m, x: m(pixel_values=x).last_hidden_state.amax((2, 3)))
    assert spec_fn.family == "hf" and spec_fn.spec == "hf/resnet" and spec_fn.feature_dim == 128


def test_bad_feature_fn_and_unknown_specs_are_clear_errors():
    with pytest.raises(ValueError, match="pooled"):
        build_backbone(nn.Conv2d(3, 4, 1), feature_fn=lambda m, x: m(x), image_size=8)
    with pytest.raises(ValueError, match="torchvision/<name>"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="Valid forms"):
        build_backbone("keras/resnet50")
    with pytest.raises(ValueError, match="torchvision has no classification model"):
        build_backbone("torchvision/resnet7")
    with pytest.raises(ValueError, match="timm has no model"):
        build_backbone("timm/not_a_model_xyz")
    with pytest.raises(ValueError, match="yaml"):
        build_backbone("ultralytics/yolov8n.pt")
    assert "torchvision/resnet18" in list_backbones()


def test_deepcopy_is_independent_for_momentum_teachers():
    bb = build_backbone("hf/resnet", image_size=32)
    twin = copy.deepcopy(bb)
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
    x = torch.randn(2, 3, 32, 32)
    assert twin.eval()(x).abs().sum() == 0 and bb.eval()(x).abs().sum() > 0


def test_importing_core_modules_does_not_import_frameworks():
    code = ("import sys, warmstart.core.backbones, warmstart.core.checkpoints, warmstart.core.data; "
            "import warmstart.pretraining.embedding; "
            "bad = [m for m in ('timm', 'transformers', 'ultralytics', 'lightning') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
