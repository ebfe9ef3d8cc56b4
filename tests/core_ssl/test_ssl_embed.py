"""warmstart.embed: pooled features of a folder, written as .npy + file list, deterministic, with exported weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ssl_core_helpers import rgb

import warmstart
from warmstart.core.backbones import build_backbone
from warmstart.core.checkpoints import export_backbone
from warmstart.pretraining import embed
from warmstart.testing import write_image_folder


@pytest.fixture()
def folder(tmp_path):
    root = write_image_folder(np.stack([rgb(i, 20) for i in range(5)]), [0, 1, 0, 1, 1], tmp_path / "imgs")
    (root / "1" / "corrupt.png").write_bytes(b"not a png")
    return root


def test_embed_writes_npy_and_file_list(folder, tmp_path):
    bb = build_backbone("torchvision/resnet18", image_size=32)
    out = tmp_path / "emb"
    with pytest.warns(UserWarning, match="skipped 1 of 6"):
        feats = warmstart.embed(folder, bb, out=out, batch_size=2, image_size=32, progress=False)
    assert feats.shape == (5, 512) and feats.dtype == np.float32 and np.isfinite(feats).all()
    saved = np.load(out / "embeddings.npy")
    files = (out / "files.txt").read_text().splitlines()
    assert np.array_equal(saved, feats) and len(files) == 5
    assert files[0].endswith("0/00000.png") and not any("corrupt" in f for f in files)
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.npy", "files.txt"]  # no temp files left
    # Deterministic: same backbone, same folder -> same numbers, whatever the batch size; train mode restored.
    with pytest.warns(UserWarning):
        again = embed(folder, bb, batch_size=5, image_size=32, progress=False)
    np.testing.assert_allclose(again, feats, rtol=1e-5, atol=1e-5)
    assert bb.training
    # Rows are the features of the files listed: embed one file alone and compare.
    single = embed([files[3]], bb, image_size=32, progress=False)
    np.testing.assert_allclose(single[0], feats[3], rtol=1e-4, atol=1e-5)


def test_embed_with_exported_weights_matches_the_trained_backbone(folder, tmp_path):
    torch.manual_seed(3)
    trained = build_backbone("torchvision/resnet18", image_size=32)
    with torch.no_grad():  # "training": make the weights differ from any fresh init
        trained.model.conv1.weight.mul_(3.0)
    export_backbone(trained, tmp_path / "exported")
    with pytest.warns(UserWarning):
        expected = embed(folder, trained, image_size=32, progress=False)
    with pytest.warns(UserWarning):
        from_file = embed(folder, "torchvision/resnet18", weights=tmp_path / "exported" / "backbone.safetensors",
                          image_size=32, progress=False)
    with pytest.warns(UserWarning):
        from_folder = embed(folder, None, weights=tmp_path / "exported", image_size=32, progress=False)
    np.testing.assert_allclose(from_file, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(from_folder, expected, rtol=1e-5, atol=1e-5)


def test_embed_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        embed(tmp_path / "missing", "torchvision/resnet18", progress=False)
    root = write_image_folder(np.zeros((1, 8, 8), np.uint8), None, tmp_path / "one")
    with pytest.raises(ValueError, match="model is required"):
        embed(root, None, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        embed(root, "torchvision/resnet18", batch_size=0)


def test_embed_without_model_names_a_damaged_backbone_json(tmp_path):
    # The export's backbone.json is the only source of the spec when model is omitted: a damaged one is named,
    # not a raw JSONDecodeError.
    root = write_image_folder(np.zeros((1, 8, 8), np.uint8), None, tmp_path / "one")
    export_backbone(build_backbone("torchvision/resnet18", image_size=32), tmp_path / "exported")
    (tmp_path / "exported" / "backbone.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"model is required.*backbone.json names no spec.*damaged"):
        embed(root, None, weights=tmp_path / "exported", image_size=32, progress=False)


def test_package_attribute_is_the_function_and_old_module_still_callable():
    import importlib
    import sys

    saved = sys.modules.pop("warmstart.embed", None)
    vars(warmstart).pop("embed", None)  # an earlier test may have imported the old module
    assert warmstart.embed is embed  # the lazy export: no module of the same name shadows it any more
    try:
        with pytest.warns(DeprecationWarning, match="warmstart.pretraining.embedding"):
            module = importlib.import_module("warmstart.embed")  # sets warmstart.embed to the (deprecated) module
        assert callable(warmstart.embed) and callable(module) and module.embed is embed
    finally:
        if saved is not None:
            sys.modules["warmstart.embed"] = saved
        warmstart.embed = embed
