"""load_pretrained_backbone: an HF-layout backbone export starts an HF image classifier; other layouts are refused."""

from __future__ import annotations

import pytest
import torch
from hf_helpers import ImageDataset, tiny_vit_config, training_args

transformers = pytest.importorskip("transformers")
checkpoints = pytest.importorskip("warmstart.core.checkpoints")

from warmstart.core.backbones import build_backbone  # noqa: E402
from warmstart.hf_integration import (  # noqa: E402
    GradualUnfreezing,
    image_classifier_from_export,
    load_pretrained_backbone,
)


@pytest.mark.parametrize("spec", ["hf/vit", "hf/convnext", "hf/resnet"])
def test_export_of_each_hf_family_starts_its_image_classifier(tmp_path, spec):
    """What `warmstart pretrain` writes for an hf/... backbone rebuilds and initialises the matching classifier."""
    torch.manual_seed(0)
    backbone = build_backbone(spec, image_size=32)
    checkpoints.export_backbone(backbone, tmp_path)
    model, report = image_classifier_from_export(tmp_path, num_labels=3)
    assert model.config.num_labels == 3 and model.base_model_prefix in type(model).__name__.lower()
    assert len(report.matched) == report.total_backbone == len(backbone.native_state_dict())
    loaded = model.state_dict()
    for key, value in backbone.native_state_dict().items():
        assert torch.equal(loaded[f"{model.base_model_prefix}.{key}"], value), key
    with torch.no_grad():
        assert model(pixel_values=torch.randn(2, 3, 32, 32)).logits.shape == (2, 3)


def test_non_hf_export_folder_is_refused_with_the_reason(tmp_path):
    checkpoints.export_backbone(build_backbone("torchvision/resnet18", image_size=32), tmp_path)
    with pytest.raises(ValueError, match=r"(?s)no config.json.*hf/.*torchvision ResNet export"):
        image_classifier_from_export(tmp_path, num_labels=3)


def _vit_export(tmp_path, image_size: int = 32):
    """What `warmstart pretrain` writes for an ``hf/...`` ViT backbone: the base ViTModel's own keys."""
    torch.manual_seed(1)
    backbone = transformers.ViTModel(tiny_vit_config(image_size=image_size), add_pooling_layer=False)
    path = checkpoints.save_weights(backbone.state_dict(), tmp_path / "backbone.safetensors")
    return backbone, path


def test_vit_export_loads_into_vit_classifier_and_fine_tunes(tmp_path):
    backbone, path = _vit_export(tmp_path)
    torch.manual_seed(2)
    model = transformers.ViTForImageClassification(tiny_vit_config())
    head_before = model.classifier.weight.detach().clone()
    report = load_pretrained_backbone(model, path)

    exported = backbone.state_dict()
    assert len(report.matched) == len(exported)
    for key, value in exported.items():
        assert torch.equal(model.state_dict()[f"vit.{key}"], value), key
    assert torch.equal(model.classifier.weight, head_before)  # the new head is left alone

    # ... and it fine-tunes with the Trainer front end (head first, then the top layer)
    cb = GradualUnfreezing(unit="step", head_epochs=1, every=1, max_groups=2)
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path / "run", max_steps=2),
                                   train_dataset=ImageDataset(16), callbacks=[cb])
    trainer.train()
    assert cb.trainable_groups in (["vit.layers.1", "head"], ["vit.encoder.layer.1", "head"])  # transformers 5 | 4
    assert torch.equal(model.vit.embeddings.patch_embeddings.projection.weight,
                       exported["embeddings.patch_embeddings.projection.weight"])


def test_torchvision_resnet_export_is_refused_for_hf_resnet(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    path = checkpoints.save_weights(torchvision.models.resnet18(num_classes=10).state_dict(),
                                    tmp_path / "resnet18.safetensors")
    hf_resnet = transformers.ResNetForImageClassification(transformers.ResNetConfig(
        layer_type="basic", depths=[2, 2, 2, 2], embedding_size=8, hidden_sizes=[8, 16, 16, 16]))
    before = {k: v.clone() for k, v in hf_resnet.state_dict().items()}
    with pytest.raises(ValueError, match="torchvision ResNet export.*hf/"):
        load_pretrained_backbone(hf_resnet, path)
    assert all(torch.equal(before[k], v) for k, v in hf_resnet.state_dict().items())  # nothing half-loaded


def test_mismatched_vit_size_and_missing_file_are_refused(tmp_path):
    _, path = _vit_export(tmp_path, image_size=64)  # 64 px -> 65 position embeddings, the classifier has 17
    with pytest.raises(ValueError, match="shape"):
        load_pretrained_backbone(transformers.ViTForImageClassification(tiny_vit_config(image_size=32)), path)
    with pytest.raises(ValueError, match="does not exist"):
        load_pretrained_backbone(transformers.ViTForImageClassification(tiny_vit_config()), tmp_path / "nope.pt")


def test_an_export_with_its_own_input_statistics_is_logged_and_reported(tmp_path, caplog):
    import json

    _, path = _vit_export(tmp_path)
    report = load_pretrained_backbone(transformers.ViTForImageClassification(tiny_vit_config()), path)
    assert report.normalize is None and report.normalize_warning() is None  # no backbone.json: nothing recorded
    stats = {"mean": [0.2, 0.3, 0.4], "std": [0.5, 0.5, 0.5]}
    (tmp_path / "backbone.json").write_text(json.dumps({"family": "hf", "info": {"normalize": stats}}))
    with caplog.at_level("WARNING", logger="warmstart.hf_integration.vision"):
        report = load_pretrained_backbone(transformers.ViTForImageClassification(tiny_vit_config()), tmp_path)
    assert report.normalize == stats  # an image processor's ImageNet mean/std would be wrong for this export
    assert "mean=[0.2, 0.3, 0.4], std=[0.5, 0.5, 0.5]" in caplog.text


def test_the_statistics_warning_is_logged_by_the_first_process_only(tmp_path, caplog, monkeypatch):
    # Under torchrun every process loads the backbone: the other ranks report the statistics but stay quiet.
    import json

    _, path = _vit_export(tmp_path)
    stats = {"mean": [0.2, 0.3, 0.4], "std": [0.5, 0.5, 0.5]}
    (tmp_path / "backbone.json").write_text(json.dumps({"family": "hf", "info": {"normalize": stats}}))
    for rank, logged in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        caplog.clear()
        with caplog.at_level("WARNING", logger="warmstart.hf_integration.vision"):
            report = load_pretrained_backbone(transformers.ViTForImageClassification(tiny_vit_config()), tmp_path)
        assert report.normalize == stats
        assert ("mean=[0.2, 0.3, 0.4]" in caplog.text) == logged, rank

