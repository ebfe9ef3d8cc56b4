"""Weights on disk: atomic safetensors/.pt writes, safe reads, exports, and loud partial-load errors."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import torchvision
from torch import nn

from warmstart.core.backbones import build_backbone
from warmstart.core.checkpoints import (
    LoadReport,
    atomic_write,
    export_backbone,
    load_backbone_weights,
    read_weights,
    save_weights,
)


@pytest.fixture(scope="module")
def resnet_export(tmp_path_factory):
    """A torchvision resnet18 backbone export (random weights) and the backbone it came from."""
    torch.manual_seed(1)
    bb = build_backbone("torchvision/resnet18", image_size=32)
    out = tmp_path_factory.mktemp("export")
    return bb, export_backbone(bb, out)


def test_export_writes_native_state_dict_in_three_files(resnet_export):
    bb, files = resnet_export
    assert {p.name for p in files.values()} == {"backbone.safetensors", "backbone.pt", "backbone.json"}
    from safetensors.torch import load_file  # the plain library reader, no warmstart involved

    plain = load_file(str(files["safetensors"]))
    pt = torch.load(files["pt"], weights_only=True)
    native = bb.native_state_dict()
    assert list(pt) == list(native) and set(plain) == set(native)
    assert all(torch.equal(plain[k], native[k]) and torch.equal(pt[k], native[k]) for k in native)
    meta = json.loads(files["json"].read_text())
    assert meta["spec"] == "torchvision/resnet18" and meta["family"] == "torchvision"
    assert meta["feature_dim"] == 512 and meta["num_tensors"] == len(native)
    assert not list(files["json"].parent.glob("*.tmp"))


def test_torchvision_export_loads_into_plain_resnet18(resnet_export):
    bb, files = resnet_export
    model = torchvision.models.resnet18(num_classes=7)
    result = model.load_state_dict(read_weights(files["safetensors"]), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    report = load_backbone_weights(torchvision.models.resnet18(), files["pt"].parent)  # folder works too
    assert report.missing == ["fc.weight", "fc.bias"] and report.unexpected == []
    assert len(report.matched) == report.total_backbone == len(bb.native_state_dict())
    assert report.summary().startswith(f"transferred {report.total_backbone}/{report.total_backbone} backbone")


class LitLike(nn.Module):
    """A LightningModule-shaped model: the native backbone under ``backbone.``, a task head next to it."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torchvision.models.resnet18()
        self.head = nn.Linear(512, 3)


def test_prefix_is_detected_for_a_wrapped_backbone(resnet_export):
    bb, files = resnet_export
    model = LitLike()
    head_before = model.head.weight.clone()
    report = load_backbone_weights(model, files["safetensors"])
    assert report.prefix == "backbone." and len(report.matched) == report.total_backbone
    assert sorted(report.missing) == ["backbone.fc.bias", "backbone.fc.weight"]  # keys under the prefix only
    torch.testing.assert_close(model.backbone.layer3[1].conv2.weight, bb.model.layer3[1].conv2.weight)
    assert torch.equal(model.head.weight, head_before)
    explicit = load_backbone_weights(LitLike(), files["safetensors"], prefix="backbone")
    assert explicit.prefix == "backbone." and "'backbone.'" in explicit.summary()


def test_checkpoint_with_extra_key_prefix_loads_into_native_and_backbone(tmp_path, resnet_export):
    bb, _ = resnet_export
    module = nn.ModuleDict({"backbone": bb, "projection_head": nn.Linear(512, 8)})  # keys "backbone.model.*"
    ckpt = tmp_path / "last.ckpt"
    torch.save({"epoch": 2, "global_step": 10, "state_dict": module.state_dict(), "hyper_parameters": {"lr": 0.1}},
               ckpt)
    native = torchvision.models.resnet18()
    report = load_backbone_weights(native, ckpt)
    assert report.source_prefix == "backbone.model." and len(report.matched) == report.total_backbone
    fresh = build_backbone("torchvision/resnet18", image_size=32)
    report = load_backbone_weights(fresh, ckpt)
    assert report.missing == [] and len(report.matched) == report.total_backbone
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), bb.eval()(x))


def test_shape_mismatch_names_the_tensors(resnet_export):
    _, files = resnet_export
    with pytest.raises(ValueError, match=r"different shape.*layer1\.0\.conv1\.weight"):
        load_backbone_weights(torchvision.models.resnet50(), files["safetensors"])
    state = read_weights(files["safetensors"])
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    model = torchvision.models.resnet18()
    report = load_backbone_weights(model, state, strict_shapes=False)
    assert len(report.mismatched) == 1 and "conv1.weight" in report.mismatched[0]
    assert "skipped for shape" in report.summary() and "conv1.weight" in report.missing


def test_too_few_matches_fail_loudly(resnet_export):
    _, files = resnet_export
    state = read_weights(files["safetensors"])
    renamed = {(f"other.{k}" if i % 3 == 0 else k): v for i, (k, v) in enumerate(state.items())}
    with pytest.raises(ValueError, match=r"only \d+ of the export's \d+ backbone tensors"):
        load_backbone_weights(torchvision.models.resnet18(), renamed)
    report = load_backbone_weights(torchvision.models.resnet18(), renamed, min_match=0.5)
    assert len(report.unexpected) == len(state) - len(report.matched) > 0
    # The other direction: an export covering half of a deeper model is refused too.
    with pytest.raises(ValueError, match="covers too little"):
        load_backbone_weights(torchvision.models.resnet34(), files["safetensors"])
    with pytest.raises(ValueError, match="min_match"):
        load_backbone_weights(torchvision.models.resnet18(), state, min_match=1.5)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone_weights(nn.Linear(2, 2), tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match=f"weights folder {tmp_path / 'exported'} does not exist"):
        read_weights(tmp_path / "exported")  # also a ValueError: what the front ends raised before
    with pytest.raises(FileNotFoundError, match="backbone.safetensors"):
        read_weights(tmp_path)
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported"):
        read_weights(tmp_path / "w.npz")
    with pytest.raises(ValueError, match="safetensors"):
        save_weights({"w": torch.ones(1)}, tmp_path / "w.h5")
    with pytest.raises(ValueError, match="not a tensor"):
        save_weights({"w": 3}, tmp_path / "w.pt")


class Exploit:
    """Unpickling this would run code: it must never happen when reading weights."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pt_files_are_read_with_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": Exploit(str(marker))}, protocol=2))
    with pytest.raises(ValueError, match="weights_only=True"):
        read_weights(path)
    assert not marker.exists()
    torch.save({"model": {"a.w": torch.ones(2)}, "epoch": 1}, tmp_path / "wrapped.pt")
    assert list(read_weights(tmp_path / "wrapped.pt")) == ["a.w"]
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "nostate.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        read_weights(tmp_path / "nostate.pt")


def test_shared_and_non_contiguous_tensors_save_to_safetensors(tmp_path):
    shared = torch.arange(12.0).reshape(3, 4)
    state = {"emb.weight": shared, "lm_head.weight": shared, "t": shared.t(), "view": shared[1]}
    path = save_weights(state, tmp_path / "tied.safetensors")
    back = read_weights(path)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    save_weights(state, tmp_path / "tied.pt")
    assert torch.equal(read_weights(tmp_path / "tied.pt")["t"], shared.t())


def test_atomic_write_leaves_no_partial_or_temp_file(tmp_path, monkeypatch):
    import safetensors.torch

    target = tmp_path / "w.safetensors"
    save_weights({"w": torch.ones(3)}, target)
    old = target.read_bytes()

    def crash_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial bytes")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(safetensors.torch, "save_file", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_weights({"w": torch.zeros(3)}, target)
    assert target.read_bytes() == old  # the good file is untouched
    with pytest.raises(KeyboardInterrupt):
        save_weights({"w": torch.zeros(3)}, tmp_path / "new.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no partial, no temp file
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.txt", lambda tmp: (tmp.write_text("half"), (_ for _ in ()).throw(RuntimeError)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_yolo_export_loads_into_same_yaml_and_refuses_another():
    from ultralytics.nn.tasks import DetectionModel

    bb = build_backbone("ultralytics/yolov8n.yaml")
    state = bb.native_state_dict()
    same = DetectionModel("yolov8n.yaml", verbose=False)
    report = load_backbone_weights(same, state)
    assert len(report.matched) == report.total_backbone == len(state)
    assert all(int(k.split(".")[1]) >= 10 for k in report.missing)  # neck and detect head only
    torch.testing.assert_close(same.model[9].cv2.conv.weight, bb.model.model[9].cv2.conv.weight)
    with pytest.raises(ValueError, match=r"different shape.*yolov8s vs"):
        load_backbone_weights(DetectionModel("yolov8s.yaml", verbose=False), state)


def test_load_report_summary_is_one_line():
    report = LoadReport(matched=["a"], missing=["b", "c"], unexpected=["d"], total_backbone=2)
    text = report.summary()
    assert "\n" not in text and text.startswith("transferred 1/2 backbone tensors") and "1 unexpected" in text


def test_the_report_carries_the_input_normalisation_the_export_was_trained_with(resnet_export, tmp_path):
    bb, files = resnet_export
    report = load_backbone_weights(torchvision.models.resnet18(), files["pt"].parent)
    assert report.normalize == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # the family's
    assert report.normalize_warning() is None  # ImageNet's: what every torchvision recipe already feeds
    assert load_backbone_weights(torchvision.models.resnet18(), bb.native_state_dict()).normalize is None
    bare = save_weights(bb.native_state_dict(), tmp_path / "bare" / "weights.safetensors")
    assert load_backbone_weights(torchvision.models.resnet18(), bare).normalize is None  # nothing recorded

    # statistics the export recorded (a channels=N run's, from its data) win over the family default, and the
    # report has a line for the front ends to log: they cannot see the user's transforms
    own = build_backbone("torchvision/resnet18", image_size=32)
    own.info["normalize"] = {"mean": [0.25, 0.5, 0.75], "std": [0.1, 0.2, 0.3]}
    export_backbone(own, tmp_path / "own")
    report = load_backbone_weights(LitLike(), tmp_path / "own" / "backbone.safetensors")
    assert report.normalize == own.info["normalize"] and report.prefix == "backbone."
    assert "mean=[0.25, 0.5, 0.75], std=[0.1, 0.2, 0.3]" in report.normalize_warning()

    # a 4-band export that recorded no statistics: ImageNet's three RGB values would be wrong, so none
    bands = build_backbone("torchvision/resnet18", image_size=32, channels=4)
    export_backbone(bands, tmp_path / "bands")
    assert load_backbone_weights(build_backbone("torchvision/resnet18", image_size=32, channels=4),
                                 tmp_path / "bands").normalize is None

    # Ultralytics takes pixels / 255 and no mean/std
    yolo = build_backbone("ultralytics/yolov8n.yaml")
    export_backbone(yolo, tmp_path / "yolo")
    from ultralytics.nn.tasks import DetectionModel

    assert load_backbone_weights(DetectionModel("yolov8n.yaml", verbose=False), tmp_path / "yolo").normalize is None
