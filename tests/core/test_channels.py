"""Non-RGB images in the core: full-precision reading, channel-count checks, first-conv adaptation, statistics,
and the per-channel views. No Lightning here (tests/ssl/test_pretrain_channels.py runs the real training)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from core_helpers import single_thread  # noqa: F401 (fixture)
from PIL import Image
from torch import nn

from warmstart.core.backbones import build_backbone
from warmstart.core.channels import (
    adapt_first_conv,
    channel_stats,
    conv_in_channels,
    count_channels,
    load_channels,
    read_array,
)
from warmstart.core.data import UnlabeledImages, load_rgb

pytestmark = pytest.mark.usefixtures("single_thread")


def _gray16(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint16)).save(path)
    return path


def test_16_bit_values_below_8_bit_precision_are_kept(tmp_path: Path) -> None:
    # Two 16-bit scans that differ only in the low byte: identical after any 8-bit conversion.
    base = np.full((8, 8), 40_000, np.uint16)
    a = _gray16(tmp_path / "a.png", base)
    b = _gray16(tmp_path / "b.png", base + 7)
    assert np.array_equal(np.asarray(load_rgb(a)), np.asarray(load_rgb(b)))  # the RGB path cannot tell them apart
    ta, tb = load_channels(a, 1), load_channels(b, 1)
    assert ta.dtype == torch.float32 and tuple(ta.shape) == (1, 8, 8)
    assert not torch.equal(ta, tb)
    assert torch.allclose(tb - ta, torch.full_like(ta, 7 / 65535), atol=1e-7)
    assert float(ta[0, 0, 0]) == pytest.approx(40_000 / 65535, abs=1e-7)
    # Through the dataset the training data module uses.
    ds = UnlabeledImages(tmp_path, channels=1, progress=False)
    assert [p.name for p in ds.files] == ["a.png", "b.png"]
    assert not torch.equal(ds[0], ds[1]) and torch.equal(ds[0], ta)
    # 16-bit TIFF too.
    tif = _gray16(tmp_path / "c.tif", base + 3)
    assert read_array(tif).dtype == np.uint16 and int(read_array(tif)[0, 0, 0]) == 40_003


def test_multi_band_arrays_and_tiffs_are_read_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bands = rng.integers(0, 65536, (5, 7, 6), dtype=np.uint16)  # (H, W, C)
    np.save(tmp_path / "six.npy", bands)
    assert count_channels(tmp_path / "six.npy") == 6
    assert torch.equal(load_channels(tmp_path / "six.npy", 6), torch.from_numpy(bands.transpose(2, 0, 1) / 65535.0)
                       .float())
    # One 16-bit band per TIFF page.
    pages = [Image.fromarray(bands[..., i]) for i in range(5)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    assert count_channels(tmp_path / "pages.tif") == 5
    assert np.array_equal(read_array(tmp_path / "pages.tif"), bands[..., :5])
    # Float arrays keep their values (no scaling).
    np.save(tmp_path / "f.npy", np.full((4, 4), -2.5, np.float32))
    assert float(load_channels(tmp_path / "f.npy", 1).min()) == -2.5


def test_16_bit_four_band_tiff_is_not_truncated_by_pil(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    four = np.random.default_rng(1).integers(0, 65536, (9, 11, 4), dtype=np.uint16)
    path = tmp_path / "four.tif"
    assert cv2.imwrite(str(path), four[..., [2, 1, 0, 3]])  # OpenCV writes BGRA: store the bands in our order
    assert Image.open(path).mode == "RGBA"  # PIL alone would give 8-bit data here
    got = read_array(path)
    assert got.dtype == np.uint16 and np.array_equal(got, four)


def test_channel_mismatch_is_an_error_naming_the_files(tmp_path: Path) -> None:
    for i in range(3):
        _gray16(tmp_path / f"{i}.png", np.full((8, 8), i * 1000))
    Image.new("RGB", (8, 8)).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match=r"1 of 4 images do not have channels=1: 1 file\(s\) with 3 channels "
                                         r"\(e\.g\. .*colour\.png\)"):
        UnlabeledImages(tmp_path, channels=1, progress=False)
    with pytest.raises(ValueError, match="channels must be a whole number >= 1"):
        UnlabeledImages(tmp_path, channels=0, progress=False)
    # Unreadable files are still skipped and counted, not mistaken for a mismatch.
    (tmp_path / "colour.png").unlink()
    (tmp_path / "broken.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        ds = UnlabeledImages(tmp_path, channels=1, progress=False)
    assert len(ds) == 3 and ds.skipped == 1


def test_rgb_scan_is_unchanged_by_the_channel_path(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", np.zeros((8, 8, 4), np.uint8))
    rgb = UnlabeledImages(tmp_path, progress=False)
    assert len(rgb) == 1 and rgb.scan.counts()["ignored_rules"] == {"not an image suffix": 1}
    torch.manual_seed(0)
    plain = build_backbone("torchvision/resnet18", image_size=32).native_state_dict()
    torch.manual_seed(0)
    three = build_backbone("torchvision/resnet18", image_size=32, channels=3)
    assert "in_channels" not in three.info
    assert all(torch.equal(plain[k], v) for k, v in three.native_state_dict().items())


def test_first_conv_from_rgb_weights_keeps_the_response_to_gray_images() -> None:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None).eval()
    model4 = copy.deepcopy(model)
    gray = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        before = model(gray.expand(-1, 3, -1, -1))
    assert adapt_first_conv(model, 1) == "conv1"
    with torch.no_grad():
        after = model(gray)
    assert model.conv1.in_channels == 1 and torch.allclose(after, before, atol=1e-4)
    # 4 bands that all carry the same intensity: same response again; every band starts with the same filter.
    adapt_first_conv(model4, 4)
    assert torch.equal(model4.conv1.weight[:, 0], model4.conv1.weight[:, 3])
    with torch.no_grad():
        assert torch.allclose(model4(gray.expand(-1, 4, -1, -1)), before, atol=1e-4)


def test_random_init_keeps_the_output_scale_and_differs_per_channel() -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 256, 3, bias=False))
    rgb_std = float(conv[0].weight.detach().std())
    adapt_first_conv(conv, 12, init="random")
    w = conv[0].weight
    assert w.shape == (256, 12, 3, 3)
    assert float(w.std()) == pytest.approx(rgb_std * (3 / 12) ** 0.5, rel=0.05)
    assert not torch.allclose(w[:, 0], w[:, 1])  # channels do not start identical


@pytest.mark.parametrize("spec", ["torchvision/mobilenet_v3_small", "timm/test_resnet", "hf/resnet", "hf/vit"])
def test_every_family_builds_with_other_channel_counts(spec: str) -> None:
    for channels in (1, 5):
        bb = build_backbone(spec, image_size=32, channels=channels)
        assert bb.in_channels == channels and bb.info["in_channels"] == channels
        assert conv_in_channels(bb.model) == channels
        assert bb(torch.rand(2, channels, 32, 32)).shape == (2, bb.feature_dim)


def test_a_backbone_that_cannot_be_adapted_is_refused() -> None:
    with pytest.raises(ValueError, match="has no Conv2d stem"):
        build_backbone(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), channels=1, image_size=2)
    grouped = nn.Sequential(nn.Conv2d(3, 6, 3, groups=3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="groups=3"):
        build_backbone(grouped, channels=4, image_size=8)
    already = build_backbone("torchvision/resnet18", image_size=32, channels=4)
    with pytest.raises(ValueError, match="takes 4 input channels, not channels=2"):
        build_backbone(already, channels=2)


def test_channel_stats_match_numpy() -> None:
    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.random((3, 6, 5)).astype(np.float32) * (i + 1)) for i in range(10)]
    stats = channel_stats(images)
    stacked = np.concatenate([x.numpy().reshape(3, -1) for x in images], axis=1)
    assert np.allclose(stats["mean"], stacked.mean(1), atol=1e-5)
    assert np.allclose(stats["std"], stacked.std(1), atol=1e-5)
    assert channel_stats([torch.zeros(2, 3, 3)])["std"] == [1.0, 1.0]  # no division by zero later


def test_channel_views_are_geometric_and_intensity_only() -> None:
    from warmstart.core.ssl.views import ViewSpec, channel_views

    spec = ViewSpec(size=16, cj_prob=1.0, cj_bright=0.5, cj_contrast=0.0, cj_sat=0.8, cj_hue=0.2, gray_prob=1.0)
    x = torch.rand(1, 24, 24) + 0.1
    bands = torch.cat([x, 3 * x, 0.5 * x])  # band ratios 1 : 3 : 0.5 everywhere
    torch.manual_seed(0)
    views = channel_views([spec, spec], None)(bands)
    assert [tuple(v.shape) for v in views] == [(3, 16, 16), (3, 16, 16)]
    for v in views:  # brightness is shared by all bands and no colour op ran: the ratios survive
        assert torch.allclose(v[1] / v[0], torch.full_like(v[0], 3.0), rtol=1e-4)
        assert torch.allclose(v[2] / v[0], torch.full_like(v[0], 0.5), rtol=1e-4)
    assert not torch.equal(views[0], views[1])
