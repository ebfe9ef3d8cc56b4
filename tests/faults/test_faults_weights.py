"""Bad weight files and partial loads, done for real: truncated and foreign files, unsafe pickles, missing
folders, LoRA / DDP / torch.compile / Lightning key layouts, silently dropped tensors and file permissions.

Every weights read in warmstart goes through ``core.checkpoints`` (ARCHITECTURE.md rule 8: a clear error naming
the file and the problem, never a deep traceback or a silent partial load), so each fault is also tried through
the front ends a user calls: ``warmstart.embed``, Lightning ``LoadBackboneWeights``, the HF vision loaders,
YOLO ``wrap`` and the YOLO LoRA resume.
"""

from __future__ import annotations

import functools
import logging
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from warmstart.core.backbones import build_backbone
from warmstart.core.checkpoints import (
    atomic_write,
    export_backbone,
    load_backbone_weights,
    read_weights,
    save_weights,
)
from warmstart.core.weight_keys import canonical_key, is_adapter_key


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision resnet18 backbone export (random weights): its folder and its state dict."""
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("export")
    files = export_backbone(build_backbone("torchvision/resnet18", image_size=32), out)
    state = read_weights(files["safetensors"])  # safetensors sorts names: keep the model's order (stem first)
    return out, {k: state[k] for k in torchvision.models.resnet18().state_dict() if k in state}


def _assert_clean_error(err: BaseException, path: Path, *phrases: str) -> None:
    """The message names the file and the problem; no chained traceback from inside safetensors/torch."""
    text = str(err)
    assert str(path) in text, text
    for phrase in phrases:
        assert phrase in text, text
    assert err.__cause__ is None and err.__suppress_context__, "the reader's internal traceback leaked"


# ------------------------------------------------------------------------------------ 1. damaged files


@functools.cache
def _yolo():
    """One yolov8n YOLO object for the module (building one costs seconds; ``wrap`` may wrap it again)."""
    from ultralytics import YOLO

    return YOLO("yolov8n.yaml", verbose=False)


def _safetensors_bytes(tmp_path: Path) -> bytes:
    path = save_weights({"w": torch.randn(64, 64), "b": torch.ones(3)}, tmp_path / "good.safetensors")
    return path.read_bytes()


@pytest.mark.parametrize("kind, make, phrase", [
    ("half", lambda good, pt: good[: len(good) // 2], "truncated"),
    ("header cut", lambda good, pt: good[:20], "truncated"),
    ("random bytes", lambda good, pt: np.random.default_rng(0).bytes(4096), "not a safetensors file"),
    ("empty", lambda good, pt: b"", "empty (0 bytes)"),
    ("torch file renamed", lambda good, pt: pt, "rename it to .pt"),
])
def test_damaged_safetensors_is_a_value_error_naming_the_file(tmp_path, kind, make, phrase):
    good = _safetensors_bytes(tmp_path)
    torch.save({"w": torch.ones(2)}, tmp_path / "good.pt")
    bad = tmp_path / "backbone.safetensors"
    bad.write_bytes(make(good, (tmp_path / "good.pt").read_bytes()))
    with pytest.raises(ValueError) as info:
        read_weights(bad)
    _assert_clean_error(info.value, bad, phrase)
    with pytest.raises(ValueError) as info:  # the loader and a folder path take the same road
        load_backbone_weights(torchvision.models.resnet18(), tmp_path)
    _assert_clean_error(info.value, bad, phrase)


@pytest.mark.parametrize("kind, make, phrase", [
    ("zip cut", lambda pt, legacy, st: pt[: len(pt) // 2], "truncated or damaged"),
    ("random bytes", lambda pt, legacy, st: np.random.default_rng(0).bytes(4096), "not a torch weights file"),
    ("empty", lambda pt, legacy, st: b"", "empty (0 bytes)"),
    ("old pickle cut", lambda pt, legacy, st: legacy[: len(legacy) // 2], "truncated"),
    ("safetensors renamed", lambda pt, legacy, st: st, "rename it to .safetensors"),
])
def test_damaged_torch_file_is_a_value_error_naming_the_file(tmp_path, kind, make, phrase):
    state = {"w": torch.randn(64, 64)}
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    pieces = [(tmp_path / n).read_bytes() for n in ("zip.pt", "legacy.pt")] + [_safetensors_bytes(tmp_path)]
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(make(*pieces))
    with pytest.raises(ValueError) as info:
        read_weights(bad)
    _assert_clean_error(info.value, bad, phrase)


class Exploit:
    """Unpickling this would run code (create a file): it must never happen when reading weights."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unsafe_pickle_is_refused_for_safety_with_how_to_resave(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "epoch=3.ckpt"
    torch.save({"state_dict": {"conv.weight": torch.ones(2)}, "callbacks": Exploit(str(marker))}, bad)
    with pytest.raises(ValueError) as info:
        read_weights(bad)
    _assert_clean_error(info.value, bad, "refused for safety", "weights_only=True", "torch.save(")
    assert "open)" in str(info.value)  # names what it would have had to call (io.open / builtins.open)
    assert not marker.exists()


@pytest.fixture(scope="module")
def truncated_export(tmp_path_factory) -> Path:
    """An `hf/vit` export folder (config.json, backbone.json, ...) whose backbone.safetensors lost its end."""
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("truncated") / "exported"
    export_backbone(build_backbone("hf/vit", image_size=32), out)
    target = out / "backbone.safetensors"
    target.write_bytes(target.read_bytes()[:-1000])
    return out


def _through_embed(folder: Path) -> None:
    from warmstart.pretraining import embed
    from warmstart.testing import write_image_folder

    images = write_image_folder(np.zeros((2, 16, 16, 3), np.uint8), None, folder.parent / "images")
    embed(images, None, weights=folder, image_size=32, progress=False)  # the spec comes from backbone.json


def _through_lightning(folder: Path) -> None:
    pytest.importorskip("lightning")
    from warmstart.lightning_callbacks import LoadBackboneWeights

    cb = LoadBackboneWeights(folder / "backbone.safetensors")
    cb.setup(types.SimpleNamespace(callbacks=[cb]), nn.ModuleDict({"backbone": torchvision.models.resnet18()}),
             "fit")


def _through_hf_classifier(folder: Path) -> None:
    from warmstart.hf_integration import image_classifier_from_export

    image_classifier_from_export(folder, num_labels=3)


def _through_yolo_wrap(folder: Path) -> None:
    pytest.importorskip("ultralytics")
    from warmstart.yolo_integration import wrap

    wrap(_yolo(), backbone_weights=folder)


def _through_yolo_lora_resume(folder: Path) -> None:
    pytest.importorskip("ultralytics")
    pytest.importorskip("peft")
    from warmstart.core import apply_lora
    from warmstart.yolo_integration.lora_merge import restore_adapters

    restore_adapters(apply_lora(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1)), r=2),
                     folder / "backbone.safetensors")


@pytest.mark.parametrize("front_end", [_through_embed, _through_lightning, _through_hf_classifier,
                                       _through_yolo_wrap, _through_yolo_lora_resume],
                         ids=["embed", "lightning", "hf", "yolo_wrap", "yolo_lora_resume"])
def test_truncated_export_through_every_front_end(truncated_export, front_end):
    with pytest.raises(ValueError) as info:
        front_end(truncated_export)
    _assert_clean_error(info.value, truncated_export / "backbone.safetensors", "truncated")


# ----------------------------------------------------------------------- 2. export folders, missing paths


def test_yolo_wrap_accepts_an_export_folder_and_names_a_missing_one(tmp_path):
    pytest.importorskip("ultralytics")
    from warmstart.yolo_integration import wrap

    out = tmp_path / "exported"
    export_backbone(build_backbone("ultralytics/yolov8n.yaml"), out)
    model = wrap(_yolo(), backbone_weights=out)
    assert model.warmstart.backbone_weights == str((out / "backbone.safetensors").resolve())
    report = model.warmstart_report
    assert report.total_backbone > 0 and len(report.matched) == report.total_backbone and not report.unexpected
    missing = tmp_path / "no_such_export"
    with pytest.raises(FileNotFoundError, match=f"weights folder {missing} does not exist"):
        wrap(_yolo(), backbone_weights=missing)


def test_missing_weights_folder_is_named_by_embed_lightning_and_hf(tmp_path):
    from warmstart.pretraining import embed
    from warmstart.testing import write_image_folder

    images = write_image_folder(np.zeros((1, 16, 16, 3), np.uint8), None, tmp_path / "images")
    missing = tmp_path / "exported"
    with pytest.raises(FileNotFoundError, match=f"weights folder {missing} does not exist"):
        embed(images, None, weights=missing, progress=False)  # used to say "model is required"
    lightning_callbacks = pytest.importorskip("warmstart.lightning_callbacks")
    cb = lightning_callbacks.LoadBackboneWeights(missing)
    with pytest.raises(FileNotFoundError, match=f"{missing} does not exist"):
        cb.setup(types.SimpleNamespace(callbacks=[cb]), torchvision.models.resnet18(), "fit")
    pytest.importorskip("transformers")
    from warmstart.hf_integration import image_classifier_from_export, load_pretrained_backbone

    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_classifier_from_export(missing, num_labels=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained_backbone(torchvision.models.resnet18(), missing)


def test_embed_reads_the_spec_next_to_an_export_file(export, tmp_path):
    from warmstart.pretraining import embed
    from warmstart.testing import write_image_folder

    folder, _ = export
    images = write_image_folder(np.zeros((2, 16, 16, 3), np.uint8), None, tmp_path / "images")
    from_file = embed(images, None, weights=folder / "backbone.safetensors", image_size=32, progress=False)
    from_folder = embed(images, None, weights=folder, image_size=32, progress=False)
    assert from_file.shape == (2, 512)
    np.testing.assert_allclose(from_file, from_folder)


# --------------------------------------------------------------------------------- 3. key normalisation


def _assert_everything_landed(report, export_state: dict[str, torch.Tensor], model: nn.Module) -> None:
    assert report.total_backbone == len(export_state) == len(report.matched) and not report.unexpected
    landed = set()
    for key, value in model.state_dict().items():
        name = canonical_key(key)
        for holder in ("model.", "backbone."):  # a Lightning-style attribute, found by prefix detection
            name = name if name in export_state else name.removeprefix(holder)
        if name in export_state and not is_adapter_key(key):
            assert torch.equal(value, export_state[name]), key
            landed.add(name)
    assert landed == set(export_state)


def test_lora_on_every_conv_receives_every_export_tensor(export):
    pytest.importorskip("peft")
    from warmstart.core import apply_lora

    folder, state = export
    model = apply_lora(torchvision.models.resnet18(num_classes=3), r=2)
    wrapped = [k for k in model.state_dict() if ".base_layer." in k]
    assert len(wrapped) == 20  # every conv, incl. the stem and the downsample convs
    report = load_backbone_weights(model, folder)
    _assert_everything_landed(report, state, model)
    assert torch.equal(model.layer1[0].conv1.base_layer.weight, state["layer1.0.conv1.weight"])
    assert report.missing == ["fc.weight", "fc.bias"] and len(report.adapters) == 40  # A and B of each conv
    assert all(not v.any() for k, v in model.state_dict().items() if "lora_B" in k)  # adapters start new


def test_peft_model_receives_every_export_tensor(export):
    peft = pytest.importorskip("peft")
    from warmstart.core import lora_config

    folder, state = export
    base = torchvision.models.resnet18(num_classes=3)
    model = peft.get_peft_model(base, lora_config(base, r=2))  # keys "base_model.model.<...>.base_layer.weight"
    report = load_backbone_weights(model, folder / "backbone.pt")
    _assert_everything_landed(report, state, model)


class Holder(nn.Module):
    """A model that keeps the backbone under one attribute: DDP's ``module``, compile's ``_orig_mod``, ..."""

    def __init__(self, attribute: str) -> None:
        super().__init__()
        setattr(self, attribute, torchvision.models.resnet18())


@pytest.mark.parametrize("saved_with, loaded_into", [
    ("module.", "plain"),  # saved under DDP
    ("_orig_mod.", "plain"),  # saved from torch.compile(model)
    ("base_model.model.", "plain"),  # saved from a PeftModel
    ("module._orig_mod.", "backbone"),  # DDP around a compiled model, into a Lightning-style module
    ("", "module"),  # into a DDP-wrapped model
    ("", "_orig_mod"),  # into a compiled model
    ("backbone.", "_orig_mod"),
    ("backbone.", "model"),  # a Lightning checkpoint of self.backbone into a module holding self.model
    ("model.", "backbone"),
])
def test_wrapper_prefixes_on_either_side(export, saved_with, loaded_into):
    _, state = export
    saved = {saved_with + k: v for k, v in state.items()}
    model = torchvision.models.resnet18() if loaded_into == "plain" else Holder(loaded_into)
    report = load_backbone_weights(model, saved)
    _assert_everything_landed(report, state, model)


def test_export_of_a_lora_model_is_merged_and_loads_natively(tmp_path):
    pytest.importorskip("peft")
    from warmstart.core import apply_lora

    torch.manual_seed(0)
    bb = build_backbone("torchvision/resnet18", image_size=32)
    apply_lora(bb.model, r=2, targets=r"layer\d\.\d\.conv\d")
    with torch.no_grad():
        for name, p in bb.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)  # a trained adapter: merging changes the weights
    files = export_backbone(bb, tmp_path / "exported")
    exported = read_weights(files["safetensors"])
    assert not any(".base_layer." in k or is_adapter_key(k) for k in exported)
    assert any(".base_layer." in k for k in bb.model.state_dict())  # the live model keeps its adapters
    plain = torchvision.models.resnet18()
    result = plain.load_state_dict(exported, strict=False)  # ARCHITECTURE.md rule 6: no warmstart needed
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    plain.fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), bb.eval()(x), rtol=1e-4, atol=1e-4)

    unmerged = bb.model.state_dict()  # saved without merging: base_layer + lora_A/B keys
    with pytest.raises(ValueError, match=r"unmerged LoRA adapter tensors.*merge_lora"):
        load_backbone_weights(torchvision.models.resnet18(), unmerged)
    same = build_backbone("torchvision/resnet18", image_size=32)
    apply_lora(same.model, r=2, targets=r"layer\d\.\d\.conv\d")
    report = load_backbone_weights(same, unmerged)
    assert len(report.matched) == report.total_backbone == len(unmerged) and not report.adapters
    with torch.no_grad():
        torch.testing.assert_close(same.eval()(x), bb(x))


# ------------------------------------------------------------------------------ 4. no silent partial loads


def test_dropping_tensors_is_refused_unless_allowed(export, caplog):
    _, state = export
    dropped = [k for i, k in enumerate(state) if i % 12 == 0]  # ~8%, the stem conv among them
    assert "conv1.weight" in dropped and 0.07 < len(dropped) / len(state) < 0.1
    partial = {k: v for k, v in state.items() if k not in dropped}
    model = torchvision.models.resnet18()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"covers too little(?s:.*)stem: conv1\.weight(?s:.*)allow_missing"):
        load_backbone_weights(model, partial)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded

    with caplog.at_level(logging.WARNING, logger="warmstart.core.checkpoints"):
        report = load_backbone_weights(model, partial, allow_missing=["conv1.weight", "bn1.*", "layer*"])
    assert sorted(report.missing) == sorted(dropped + ["fc.weight", "fc.bias"])
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in partial.items())
    assert all(torch.equal(loaded[k], before[k]) for k in dropped)  # allowed gaps keep their initial values
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"{len(dropped)} model tensors keep their initial values" in warning
    assert "stem: conv1.weight" in warning and "layer1:" in warning  # grouped by layer group

    with pytest.raises(ValueError, match="covers too little"):  # a pattern that does not cover all of them
        load_backbone_weights(torchvision.models.resnet18(), partial, allow_missing=["conv1.weight"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="warmstart.core.checkpoints"):
        load_backbone_weights(torchvision.models.resnet18(), partial, min_match=0.9)  # cross-architecture tolerance
    assert "keep their initial values" in caplog.text


def test_export_tensors_without_a_place_are_refused_unless_allowed(export):
    _, state = export
    extra = {**state, "projector.0.weight": torch.ones(8, 512), "projector.0.bias": torch.ones(8)}
    with pytest.raises(ValueError, match=r"only \d+ of the export's \d+ backbone tensors.*projector\.0\.weight"):
        load_backbone_weights(torchvision.models.resnet18(), extra)
    report = load_backbone_weights(torchvision.models.resnet18(), extra, allow_missing="projector.*")
    assert sorted(report.unexpected) == ["projector.0.bias", "projector.0.weight"]


def test_lightning_callback_refuses_a_partial_export_by_default(export, tmp_path):
    pytest.importorskip("lightning")
    from warmstart.lightning_callbacks import LoadBackboneWeights

    _, state = export
    path = save_weights({k: v for k, v in state.items() if not k.startswith("layer4.1.")},
                        tmp_path / "backbone.safetensors")
    module = nn.ModuleDict({"backbone": torchvision.models.resnet18(), "head": nn.Linear(512, 2)})
    cb = LoadBackboneWeights(path)
    with pytest.raises(ValueError, match=r"covers too little(?s:.*)layer4"):
        cb.setup(types.SimpleNamespace(callbacks=[cb]), module, "fit")
    cb = LoadBackboneWeights(path, allow_missing=["layer4.1.*"])
    cb.setup(types.SimpleNamespace(callbacks=[cb]), module, "fit")
    assert cb.report.prefix == "backbone." and len(cb.report.matched) == cb.report.total_backbone


# ------------------------------------------------------------------------------------ 5. file permissions


def test_written_files_get_the_mode_open_would_give(tmp_path):
    from warmstart.pretraining import embed
    from warmstart.testing import write_image_folder

    images = write_image_folder(np.zeros((2, 16, 16, 3), np.uint8), None, tmp_path / "images")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    old = os.umask(0o022)
    try:
        files = export_backbone(build_backbone(net, image_size=16), tmp_path / "exported")
        embed(images, net, image_size=16, out=tmp_path / "emb", progress=False)
        written = [*files.values(), tmp_path / "emb" / "embeddings.npy", tmp_path / "emb" / "files.txt"]
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o644" for p in written}
        os.chmod(files["pt"], 0o640)  # a file the user restricted keeps its mode when rewritten, as with open()
        save_weights({"w": torch.ones(1)}, files["pt"])
        assert files["pt"].stat().st_mode & 0o777 == 0o640
        os.umask(0o077)
        assert atomic_write(tmp_path / "private.txt", lambda t: t.write_text("x")).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
