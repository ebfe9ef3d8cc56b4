"""Views made on the device in batches (warmstart.pretraining.batched_views) against the PIL path they replace."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from ssl_helpers import digit_folder, one_thread, tiny_cnn  # noqa: F401 - one_thread is an autouse fixture

from warmstart.core.ssl import get_method
from warmstart.core.ssl.views import ViewSpec, channel_view, pil_view
from warmstart.pretraining.batched_views import BatchedViews, LoadResized, LoadResizedChannels

N = 400  # views per path: enough for a standard error of ~0.01-0.02 on every statistic below
SIZE = 32


def _pil_draws(spec: ViewSpec, image: Image.Image, n: int = N) -> torch.Tensor:
    view = pil_view(spec, None)
    out = []
    for i in range(n):  # seeded like SeededViews: torch (torchvision), numpy (lightly's blur/solarize), random
        torch.manual_seed(i)
        np.random.seed(i)
        random.seed(i)
        out.append(view(image))
    return torch.stack(out)


def _batched_draws(spec: ViewSpec, image: Image.Image, n: int = N, frames: bool = True) -> torch.Tensor:
    item = LoadResized(SIZE)(image)
    batch = item.image[None].expand(n, -1, -1, -1)
    shapes = item.shape.expand(n, 2) if frames else None
    return BatchedViews([spec], None, seed=1)(batch, torch.arange(n), epoch=0, shapes=shapes)[0]


def _close(a: torch.Tensor, b: torch.Tensor, what: str, floor: float) -> None:
    """Means of two samples agree within 4 standard errors of their difference (plus ``floor``).

    4 SE: if both paths draw from the same distribution a mismatch has probability ~6e-5, so a failure means the
    distributions differ. ``floor`` absorbs the systematic differences the paths are allowed to have: PIL rounds to
    uint8 after every step and resizes/blurs with its own kernels (antialiased resize, box-approximated blur).
    """
    a, b = a.double(), b.double()
    se = (a.var() / len(a) + b.var() / len(b)).sqrt().item()
    diff = abs(a.mean().item() - b.mean().item())
    assert diff <= 4 * se + floor, f"{what}: PIL {a.mean():.4f} vs batched {b.mean():.4f} (4 SE = {4 * se:.4f})"


def _marker() -> Image.Image:
    # Red encodes the column, green the row: the value range of a view gives the part of the image it kept.
    ramp = np.arange(SIZE, dtype=np.uint8) * 8
    rgb = np.stack([np.tile(ramp, (SIZE, 1)), np.tile(ramp[:, None], (1, SIZE)), np.full((SIZE, SIZE), 128)], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def _kept_area(views: torch.Tensor) -> torch.Tensor:
    span = lambda c: (views[:, c].amax((1, 2)) - views[:, c].amin((1, 2))) * 255 / 8 + 1  # noqa: E731
    return span(0) * span(1) / SIZE**2


def test_crop_scale_matches_the_pil_path() -> None:
    spec = get_method("simclr", tiny_cnn(), SIZE).view_specs[0].with_(cj_prob=0.0, gray_prob=0.0)
    pil, batched = _kept_area(_pil_draws(spec, _marker())), _kept_area(_batched_draws(spec, _marker()))
    assert 0.3 < batched.mean() < 0.8 and batched.min() >= 0.15  # min_scale=0.2 (minus a pixel of rounding)
    _close(pil, batched, "area kept", floor=0.02)
    _close(pil.square(), batched.square(), "area kept, 2nd moment", floor=0.02)  # the spread, not only the mean


def _wide_marker() -> Image.Image:
    # 2:1 (64 x 32). Red encodes the column (4 per column), green the row (8 per row), as in _marker.
    cols, rows = np.arange(2 * SIZE) * 4, np.arange(SIZE) * 8
    rgb = np.stack([np.tile(cols, (SIZE, 1)), np.tile(rows[:, None], (1, 2 * SIZE)),
                    np.full((SIZE, 2 * SIZE), 128)], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def _wide_crops(views: torch.Tensor) -> dict[str, torch.Tensor]:
    # What part of the 64 x 32 image a view kept: its centre column and the kept width / height in image pixels.
    red, green = views[:, 0] * 255, views[:, 1] * 255
    width = (red.amax((1, 2)) - red.amin((1, 2))) / 4 + 1
    height = (green.amax((1, 2)) - green.amin((1, 2))) / 8 + 1
    centre = (red.amax((1, 2)) + red.amin((1, 2))) / 8
    return {"centre column": centre, "width": width, "height": height, "aspect": width / height}


def test_crops_of_a_non_square_image_see_all_of_it_like_the_pil_path() -> None:
    # The PIL path crops the decoded 2:1 file; the batched path squeezes it into the square and draws the crops
    # in the 2:1 frame. Same part of the image, same spread, same aspect; a centre square instead (the frames
    # left out) would never reach the left and right quarters.
    spec = get_method("simclr", tiny_cnn(), SIZE).view_specs[0].with_(cj_prob=0.0, gray_prob=0.0, hf_prob=0.0)
    assert LoadResized(SIZE)(_wide_marker()).shape.tolist() == [SIZE, 2 * SIZE]
    pil, batched = _wide_crops(_pil_draws(spec, _wide_marker())), _wide_crops(_batched_draws(spec, _wide_marker()))
    for key in pil:
        _close(pil[key], batched[key], key, floor=0.03 * float(pil[key].mean()))
        second = float(pil[key].square().mean())
        _close(pil[key].square(), batched[key].square(), f"{key}, 2nd moment", floor=0.06 * second)
    assert batched["centre column"].min() < 12 and batched["centre column"].max() > 52  # reaches both sides
    squeezed = _wide_crops(_batched_draws(spec, _wide_marker(), frames=False))
    with pytest.raises(AssertionError):  # crops drawn in the square: wrong aspect (the mapping is what matters)
        _close(pil["aspect"], squeezed["aspect"], "aspect", floor=0.03 * float(pil["aspect"].mean()))


def _photo() -> Image.Image:
    # Smooth and colourful (every hue, mid saturation), like a photo more than like noise.
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * x), 0.5 + 0.4 * np.cos(5 * y), 0.5 + 0.3 * np.sin(4 * (x + y))], -1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def _colour_stats(views: torch.Tensor) -> dict[str, torch.Tensor]:
    gray = 0.299 * views[:, 0] + 0.587 * views[:, 1] + 0.114 * views[:, 2]
    channel_gap = (views.amax(1) - views.amin(1)).amax((1, 2))
    return {"brightness": gray.mean((1, 2)), "contrast": gray.std((1, 2)),
            "grayscale": (channel_gap < 3 / 255).double(), "saturation": (views.amax(1) - views.amin(1)).mean((1, 2))}


@pytest.mark.parametrize("method,kwargs", [("simclr", {}), ("byol", {"gaussian_blur": 0.5, "solarization_prob": 0.5})])
def test_colour_statistics_match_the_pil_path(method: str, kwargs: dict) -> None:
    for spec in get_method(method, tiny_cnn(), SIZE, **kwargs).view_specs[-1:]:
        pil, batched = _colour_stats(_pil_draws(spec, _photo())), _colour_stats(_batched_draws(spec, _photo()))
        assert 0.1 < batched["grayscale"].mean() < 0.3  # random_gray_scale=0.2
        for key in pil:
            _close(pil[key], batched[key], f"{method} {key}", floor=0.015)


def test_views_of_an_image_depend_only_on_seed_epoch_and_index() -> None:
    make = BatchedViews(get_method("dino", tiny_cnn(), SIZE).view_specs, {"mean": [0.5] * 3, "std": [0.2] * 3})
    images = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8)
    together = make(images, torch.tensor([5, 6, 7]), epoch=2)
    alone = make(images[2:], torch.tensor([7]), epoch=2)
    assert len(together) == 4 and together[-1].shape[-1] == 16  # 2 global + 2 local crops
    assert all(torch.equal(t[2:], a) for t, a in zip(together, alone))
    assert not torch.equal(make(images[2:], torch.tensor([7]), epoch=3)[0], alone[0])
    state = torch.get_rng_state()
    make(images, torch.arange(3), epoch=0)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is never drawn from


def _epoch_losses(out: Path) -> list[float]:
    with (out / "metrics.csv").open() as f:
        return [float(r["train_loss_epoch"]) for r in csv.DictReader(f) if r.get("train_loss_epoch")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return digit_folder(tmp_path_factory.mktemp("digits"), n=48)


def test_batched_path_trains_in_a_lightning_run_and_exports(folder: Path, tmp_path: Path) -> None:
    from warmstart import pretrain

    torch.manual_seed(0)
    summary = pretrain(tmp_path / "run", folder, tiny_cnn(), method="simclr", epochs=6, batch_size=16,
                       image_size=SIZE, accelerator="cpu", devices=1, progress=False, views="batched")
    assert summary["views"] == "batched" and Path(summary["exported"]["safetensors"]).is_file()
    losses = _epoch_losses(tmp_path / "run")
    assert len(losses) == 6 and min(losses[-2:]) < losses[0] - 0.05, losses  # as the PIL path's test


def test_pil_views_still_train_and_a_custom_transform_selects_them(folder: Path, tmp_path: Path) -> None:
    from lightly.transforms import SimCLRTransform

    from warmstart import pretrain

    common = dict(epochs=1, batch_size=16, image_size=SIZE, accelerator="cpu", devices=1, progress=False)
    assert pretrain(tmp_path / "pil", folder, tiny_cnn(), views="pil", **common)["views"] == "pil"
    own = SimCLRTransform(input_size=SIZE, hf_prob=0.0)
    assert pretrain(tmp_path / "own", folder, tiny_cnn(), transform=own, **common)["views"] == "pil"
    with pytest.raises(ValueError, match="views='pil'"):
        pretrain(tmp_path / "bad", folder, tiny_cnn(), transform=own, views="batched", **common)
    with pytest.raises(ValueError, match="views must be"):
        pretrain(tmp_path / "bad2", folder, tiny_cnn(), views="gpu", **common)
    # auto batches on every device (CPU included: no DataLoader worker competes with the model's threads)
    auto = pretrain(tmp_path / "auto", folder, tiny_cnn(), **common)
    assert auto["views"] == "batched" and auto["num_workers"] == 0 and auto["cache"]["mode"] == "ram"


class _Boom(Exception):
    pass


def test_batched_views_resume_mid_epoch_to_identical_weights(folder: Path, tmp_path: Path) -> None:
    """A run stopped mid-epoch (after a step checkpoint) and resumed ends where an uninterrupted run ends."""
    import lightning as L
    from safetensors.torch import load_file

    from warmstart import pretrain

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 5:  # checkpoints every 2 steps: step 4 is mid-epoch (3 batches per epoch)
                raise _Boom

    def net():
        torch.manual_seed(0)
        return tiny_cnn()

    kw = dict(method="byol", epochs=3, batch_size=16, image_size=SIZE, accelerator="cpu", devices=1,
              progress=False, views="batched", checkpoint_every=2)
    pretrain(tmp_path / "full", folder, net(), **kw)
    with pytest.raises(_Boom):
        pretrain(tmp_path / "cut", folder, net(), callbacks=[StopAt()], **kw)
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 4 and ckpt["epoch"] == 1  # mid-epoch 1
    pretrain(tmp_path / "cut", folder, net(), resume=True, **kw)
    full = load_file(tmp_path / "full" / "exported" / "backbone.safetensors")
    again = load_file(tmp_path / "cut" / "exported" / "backbone.safetensors")
    assert all(torch.equal(full[k], again[k]) for k in full)


def test_closed_form_hue_shift_equals_torchvision_adjust_hue_per_image() -> None:
    import torchvision.transforms.v2.functional as F

    from warmstart.pretraining.batched_views import shift_hue

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 9, 7, generator=generator)
    images[0] = 0.5  # grey: hue undefined, must stay grey
    images[1, :, :2] = images[1, 0, :2]  # pixels with r == g == b next to coloured ones
    shifts = torch.rand(12, generator=generator) - 0.5
    ours = shift_hue(images, shifts)
    for i in range(12):
        assert torch.allclose(ours[i], F.adjust_hue(images[i], float(shifts[i])), atol=1e-5), i
    assert not torch.allclose(ours[2:], images[2:], atol=1e-2)  # it really moved the colours


def test_batched_color_jitter_equals_torchvision_ops_per_image_in_the_drawn_order() -> None:
    """Each image gets torchvision's brightness/contrast/saturation/hue with its own factors, in its own order."""
    import torchvision.transforms.v2.functional as F

    from warmstart.pretraining import batched_views as bv

    generator = torch.Generator().manual_seed(1)
    images = torch.rand(24, 3, 8, 8, generator=generator)
    u = torch.rand(24, bv.DRAWS_PER_VIEW, generator=generator)
    spec = ViewSpec(size=8, cj_prob=0.8, cj_bright=0.4, cj_contrast=0.4, cj_sat=0.4, cj_hue=0.1)
    ours = bv._color_jitter(images, spec, u)
    ops = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    jittered = 0
    for i in range(24):
        expected = images[i]
        if u[i, bv._CJ] < spec.cj_prob:
            jittered += 1
            factors = [1 - 0.4 + 0.8 * float(u[i, slot]) for slot in (bv._B, bv._C, bv._S)]
            factors.append((2 * float(u[i, bv._H]) - 1) * 0.1)
            for op in u[i, bv._ORDER:bv._ORDER + 4].argsort().tolist():
                expected = ops[op](expected, factors[op])
        # 2e-4: torchvision's grey uses 0.2989 for red, ours (and kornia's) 0.299; measured differences <= 6e-5.
        assert torch.allclose(ours[i], expected, atol=2e-4), i
    assert 0 < jittered < 24


# ------------------------------------------------------------------------- channels=N: float images of any range
def _bands() -> torch.Tensor:
    """A smooth 3-band float image in [0, 2.2]: past 1.0, so clipping would show."""
    y, x = torch.meshgrid(torch.arange(SIZE) / SIZE, torch.arange(SIZE) / SIZE, indexing="ij")
    return torch.stack([1.0 + 0.8 * torch.sin(6 * x), 1.2 + torch.cos(5 * y), 0.4 + 0.3 * torch.sin(4 * (x + y))])


def _channel_draws(spec: ViewSpec, image: torch.Tensor, batched: bool, n: int = N) -> torch.Tensor:
    if batched:
        item = LoadResizedChannels(SIZE, image.shape[0])(image)
        batch = item.image[None].expand(n, -1, -1, -1)
        return BatchedViews([spec], None, seed=1, channels=image.shape[0])(batch, torch.arange(n), epoch=0,
                                                                             shapes=item.shape.expand(n, 2))[0]
    view = channel_view(spec, None)
    out = []
    for i in range(n):  # seeded like SeededViews (the channel path draws from torch's global RNG only)
        torch.manual_seed(i)
        out.append(view(image))
    return torch.stack(out)


def test_channel_views_crop_like_the_per_image_channel_path() -> None:
    spec = get_method("simclr", tiny_cnn(), SIZE).view_specs[0].with_(cj_prob=0.0)
    ramp = torch.arange(SIZE, dtype=torch.float32) * 0.5  # 0..15.5: a kept span of k pixels reads (k - 1) * 0.5
    image = torch.stack([ramp.expand(SIZE, SIZE), ramp[:, None].expand(SIZE, SIZE)])

    def kept(views: torch.Tensor) -> torch.Tensor:
        span = lambda c: (views[:, c].amax((1, 2)) - views[:, c].amin((1, 2))) / 0.5 + 1  # noqa: E731
        return span(0) * span(1) / SIZE**2

    per_image, batched = kept(_channel_draws(spec, image, False)), kept(_channel_draws(spec, image, True))
    assert 0.3 < batched.mean() < 0.8 and batched.min() >= 0.15
    _close(per_image, batched, "area kept", floor=0.02)
    _close(per_image.square(), batched.square(), "area kept, 2nd moment", floor=0.02)


def test_channel_views_intensity_statistics_match_the_per_image_path_without_clipping() -> None:
    spec = get_method("simclr", tiny_cnn(), SIZE).view_specs[0].with_(noise_prob=0.5, noise_std=0.05)
    per_image, batched = _channel_draws(spec, _bands(), False), _channel_draws(spec, _bands(), True)
    assert batched.shape == (N, 3, SIZE, SIZE) and batched.max() > 1.5  # raw floats keep their range
    # One brightness and one contrast factor shared by the bands, contrast around each band's own mean: the ratio
    # of two bands' means moves only with the crop, so its spread is small in both paths.
    for name, stat in {"mean": lambda v: v.mean((1, 2, 3)), "band 0 contrast": lambda v: v[:, 0].std((1, 2)),
                       "band 2 contrast": lambda v: v[:, 2].std((1, 2)),
                       "band ratio": lambda v: v[:, 2].mean((1, 2)) / v[:, 0].mean((1, 2))}.items():
        a, b = stat(per_image), stat(batched)
        _close(a, b, name, floor=0.03)
        _close((a - a.mean()).abs(), (b - a.mean()).abs(), f"{name}, spread", floor=0.01)


def test_channel_intensity_jitter_scales_every_band_of_an_image_by_one_factor() -> None:
    spec = ViewSpec(size=SIZE, scale=(1.0, 1.0), ratio=(1.0, 1.0), hf_prob=0.0, vf_prob=0.0, rr_prob=0.0,
                    cj_prob=1.0, cj_bright=0.4, cj_contrast=0.0, cj_sat=0.0, cj_hue=0.0, gray_prob=0.0,
                    blur_prob=0.0, solarize_prob=0.0, noise_prob=0.0)
    images = 0.5 + torch.rand(16, 5, SIZE, SIZE) * 3
    views = BatchedViews([spec], None, seed=0, channels=5)(images, torch.arange(16), epoch=0)[0]
    factor = views / images
    assert torch.allclose(factor, factor[:, :1, :1, :1].expand_as(factor), rtol=1e-4)  # one factor per image
    per_image = factor[:, 0, 0, 0]
    assert per_image.min() >= 0.6 - 1e-6 and per_image.max() <= 1.4 + 1e-6 and per_image.std() > 0.1
    # contrast alone: every band moves towards its own mean by one factor per image, the same for all bands
    contrast = spec.with_(cj_bright=0.0, cj_contrast=0.4)
    views = BatchedViews([contrast], None, seed=0, channels=5)(images, torch.arange(16), epoch=0)[0]
    x_c = images - images.mean((-2, -1), keepdim=True)
    v_c = views - views.mean((-2, -1), keepdim=True)
    factor = (v_c * x_c).sum((-2, -1)) / (x_c * x_c).sum((-2, -1))  # per image and band, least squares
    assert torch.allclose(v_c, factor[..., None, None] * x_c, atol=1e-4)  # a pure scaling around the band mean
    assert torch.allclose(factor, factor[:, :1].expand_as(factor), atol=1e-5) and factor[:, 0].std() > 0.1
    with pytest.raises(ValueError, match=r"\(B, 5, H, W\)"):
        BatchedViews([spec], None, channels=5)(images[:, :3], torch.arange(16), epoch=0)


def test_ssl_module_takes_the_channel_count_the_backbone_declares() -> None:
    from warmstart.core.backbones import build_backbone
    from warmstart.pretraining.ssl_module import SSLModule

    one = build_backbone("torchvision/resnet18", image_size=SIZE, channels=1)
    with pytest.raises(ValueError, match="3 mean value"):  # ImageNet's RGB statistics on a 1-channel backbone
        SSLModule("simclr", backbone=one, image_size=SIZE, views="batched")
    one.info["normalize"] = {"mean": [0.5], "std": [0.2]}  # what pretrain(channels=1) computes from the data
    module = SSLModule("simclr", backbone=one, image_size=SIZE, views="batched")
    assert module.batched_views.channels == 1  # not left RGB: float batches would skip the views silently
    views = module.batched_views_of([torch.rand(4, 1, SIZE, SIZE), torch.arange(4)])
    assert len(views) == 2 and views[0].shape == (4, 1, SIZE, SIZE)
    assert SSLModule("simclr", backbone=one, image_size=SIZE, views="batched", channels=3).channels == 1
    assert SSLModule("simclr", backbone=tiny_cnn(), image_size=SIZE, views="batched", channels=3).channels is None
    with pytest.raises(ValueError, match="built for 1 input channel"):
        SSLModule("simclr", backbone=one, image_size=SIZE, views="batched", channels=4)
