"""View specs: each method's augmentation parameters as plain data, so the PIL and the batched path share them.

A method lists one :class:`ViewSpec` per view (``method.view_specs``). :func:`pil_views` turns the list into the
per-image PIL transform the DataLoader runs (lightly's building blocks, in lightly's order: crop, flips, rotation,
colour jitter, grayscale, blur, solarization, tensor, normalization); ``warmstart.pretraining.batched_views`` turns
the same list into views made on the training device, a batch at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor

from ..._optional import require


@dataclass(frozen=True)
class ViewSpec:
    """The random augmentations of one view, with lightly's meanings (jitter amounts already times strength).

    Args:
        size: side of the square output view in pixels.
        scale, ratio: RandomResizedCrop's area fraction and aspect-ratio ranges.
        interpolation: "bilinear" (SimCLR/BYOL) or "bicubic" (DINO) for the crop's resize.
        hf_prob, vf_prob: horizontal / vertical flip probability.
        rr_prob, rr_degrees: rotation probability; ``None`` degrees = 90 degrees (lightly's RandomRotate),
            a number d = uniform in [-d, d], a pair = uniform in it.
        cj_prob, cj_bright, cj_contrast, cj_sat, cj_hue: torchvision ColorJitter amounts and the chance to apply.
        gray_prob: chance of converting to grayscale. blur_prob, sigmas: Gaussian blur chance and sigma range.
        solarize_prob: chance of inverting pixels >= 128/255. noise_prob, noise_std: additive Gaussian noise.

    Example:
        >>> spec = ViewSpec(size=32, scale=(0.2, 1.0))
        >>> spec.hf_prob, spec.as_dict()["size"]
        (0.5, 32)
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    hf_prob: float = 0.5
    vf_prob: float = 0.0
    rr_prob: float = 0.0
    rr_degrees: float | tuple[float, float] | None = None
    cj_prob: float = 0.8
    cj_bright: float = 0.8
    cj_contrast: float = 0.8
    cj_sat: float = 0.8
    cj_hue: float = 0.2
    gray_prob: float = 0.2
    blur_prob: float = 0.0
    sigmas: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0
    noise_prob: float = 0.0
    noise_std: float = 0.0

    def as_dict(self) -> dict:
        """The fields as a plain dict (for logs, ``warmstart models`` and JSON).

        Example:
            >>> ViewSpec(size=16).as_dict()["scale"]
            (0.08, 1.0)
        """
        return asdict(self)

    def with_(self, **changes) -> ViewSpec:
        """A copy with some fields changed.

        Example:
            >>> ViewSpec(size=16).with_(blur_prob=1.0).blur_prob
            1.0
        """
        return replace(self, **changes)


def jitter_view(size: int, min_scale: float, strength: float, amounts: tuple[float, float, float, float],
                **fields) -> ViewSpec:
    """A view with RandomResizedCrop from ``min_scale`` and ColorJitter ``amounts`` (b, c, s, h) times ``strength``.

    Example:
        >>> jitter_view(32, 0.2, 0.5, (0.8, 0.8, 0.8, 0.2)).cj_bright
        0.4
    """
    b, c, s, h = (float(a) * float(strength) for a in amounts)
    return ViewSpec(size=int(size), scale=(float(min_scale), 1.0), cj_bright=b, cj_contrast=c, cj_sat=s, cj_hue=h,
                    **fields)


# ColorJitter amounts (brightness, contrast, saturation, hue) of lightly's recipes, before cj_strength.
SIMCLR_JITTER = (0.8, 0.8, 0.8, 0.2)
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)
DINO_JITTER = (0.8, 0.8, 0.4, 0.2)


class _GaussianNoise:
    """Adds N(0, std) noise with probability ``prob`` (global torch RNG, seeded per image), clipped to [0, 1] for
    images (``clip=True``) or not for raw float channels, which keep their stored range."""

    def __init__(self, prob: float, std: float, clip: bool = True) -> None:
        self.prob, self.std, self.clip = prob, std, clip

    def __call__(self, x: Tensor) -> Tensor:
        if self.prob > 0 and float(torch.rand(())) < self.prob:
            noisy = x + self.std * torch.randn_like(x)
            return noisy.clamp(0, 1) if self.clip else noisy
        return x


def pil_view(spec: ViewSpec, normalize: dict | None) -> Callable:
    """The per-image PIL transform of one view (lightly's blocks and order), ending in a normalized tensor.

    Example:
        >>> from PIL import Image
        >>> pil_view(ViewSpec(size=8), None)(Image.new("RGB", (16, 16))).shape
        torch.Size([3, 8, 8])
    """
    T = require("torchvision.transforms", "ssl")
    blur = require("lightly.transforms.gaussian_blur", "ssl")
    solarize = require("lightly.transforms.solarize", "ssl")
    rotation = require("lightly.transforms.rotation", "ssl")
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[spec.interpolation]
    jitter = T.ColorJitter(brightness=spec.cj_bright, contrast=spec.cj_contrast, saturation=spec.cj_sat,
                           hue=spec.cj_hue)
    steps = [
        T.RandomResizedCrop(size=spec.size, scale=tuple(spec.scale), ratio=tuple(spec.ratio), interpolation=mode),
        T.RandomHorizontalFlip(p=spec.hf_prob),
        T.RandomVerticalFlip(p=spec.vf_prob),
        rotation.random_rotation_transform(rr_prob=spec.rr_prob, rr_degrees=spec.rr_degrees),
        T.RandomApply([jitter], p=spec.cj_prob),
        T.RandomGrayscale(p=spec.gray_prob),
        blur.GaussianBlur(sigmas=tuple(spec.sigmas), prob=spec.blur_prob),
        solarize.RandomSolarization(prob=spec.solarize_prob),
        T.ToTensor(),
    ]
    if spec.noise_prob > 0 and spec.noise_std > 0:
        steps.append(_GaussianNoise(spec.noise_prob, spec.noise_std))
    if normalize:
        steps.append(T.Normalize(mean=normalize["mean"], std=normalize["std"]))
    return T.Compose(steps)


def pil_views(specs: Sequence[ViewSpec], normalize: dict | None) -> Callable:
    """The multi-view PIL transform of a method: PIL image -> list of view tensors, one per spec.

    Example:
        >>> from PIL import Image
        >>> views = pil_views([ViewSpec(size=8), ViewSpec(size=4)], None)(Image.new("RGB", (16, 16)))
        >>> [tuple(v.shape) for v in views]
        [(3, 8, 8), (3, 4, 4)]
    """
    multi_view = require("lightly.transforms.multi_view_transform", "ssl")
    return multi_view.MultiViewTransform([pil_view(spec, normalize) for spec in specs])


def blur_kernel_size(sigma_max: float) -> int:
    """Odd kernel side covering +-3 sigma of the widest blur (what PIL's radius=sigma blur reaches).

    Example:
        >>> blur_kernel_size(2.0)
        13
    """
    return 2 * math.ceil(3 * float(sigma_max)) + 1


# ------------------------------------------------------------------------------- views for non-RGB channels
# For 1-channel (X-ray, depth) and multi-band (satellite) images, made per image from float (C, H, W) tensors
# (``warmstart.core.channels``). From a ViewSpec we keep what means the same for any channel count: the crop,
# flips, rotation, Gaussian blur and additive noise. Colour jitter becomes an *intensity* jitter: one brightness
# factor (multiplies every channel) and one contrast factor (blends every channel with its own mean), drawn per
# image and shared by all channels, so ratios between bands (NDVI-like indices) keep their meaning. Saturation,
# hue and grayscale (colour operations) and solarization (inverting above a mid-grey that raw 16-bit or float
# data does not have) are left out. Nothing is clipped: floats keep their stored range.


class _IntensityJitter:
    """With probability ``prob``: brightness x U[1-b, 1+b] and contrast U[1-c, 1+c] around each channel's mean,
    in random order, one factor per image shared by all channels (global torch RNG, seeded per image)."""

    def __init__(self, prob: float, brightness: float, contrast: float) -> None:
        self.prob, self.brightness, self.contrast = prob, brightness, contrast

    def __call__(self, x: Tensor) -> Tensor:
        if self.prob <= 0 or float(torch.rand(())) >= self.prob:
            return x
        b = 1 + self.brightness * (2 * float(torch.rand(())) - 1)
        c = 1 + self.contrast * (2 * float(torch.rand(())) - 1)
        ops = [lambda t: t * max(b, 0.0), lambda t: max(c, 0.0) * t + (1 - max(c, 0.0)) * t.mean((-2, -1), True)]
        for i in torch.randperm(2).tolist():
            x = ops[i](x)
        return x


class _RandomBlur:
    """Gaussian blur with sigma ~ U[sigmas] with probability ``prob`` (any channel count)."""

    def __init__(self, prob: float, sigmas: tuple[float, float], size: int) -> None:
        self.prob, self.sigmas = prob, tuple(sigmas)
        self.kernel = min(blur_kernel_size(self.sigmas[1]), 2 * ((int(size) - 1) // 2) + 1)

    def __call__(self, x: Tensor) -> Tensor:
        if self.prob <= 0 or float(torch.rand(())) >= self.prob:
            return x
        F = require("torchvision.transforms.functional", "ssl")
        lo, hi = self.sigmas
        sigma = lo + (hi - lo) * float(torch.rand(()))
        return F.gaussian_blur(x, [self.kernel, self.kernel], [sigma, sigma])


def channel_view(spec: ViewSpec, normalize: dict | None) -> Callable:
    """One view of a float ``(C, H, W)`` tensor of any channel count: crop, flips, rotation, intensity jitter,
    blur, noise (see the comment above for what is left out and why), then per-channel normalisation.

    Example:
        >>> import torch
        >>> view = channel_view(ViewSpec(size=8), {"mean": [0.5] * 5, "std": [0.25] * 5})
        >>> tuple(view(torch.rand(5, 16, 16)).shape)
        (5, 8, 8)
    """
    T = require("torchvision.transforms", "ssl")
    rotation = require("lightly.transforms.rotation", "ssl")
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[spec.interpolation]
    steps = [
        T.RandomResizedCrop(size=spec.size, scale=tuple(spec.scale), ratio=tuple(spec.ratio), interpolation=mode,
                            antialias=True),
        T.RandomHorizontalFlip(p=spec.hf_prob),
        T.RandomVerticalFlip(p=spec.vf_prob),
        rotation.random_rotation_transform(rr_prob=spec.rr_prob, rr_degrees=spec.rr_degrees),
        _IntensityJitter(spec.cj_prob, spec.cj_bright, spec.cj_contrast),
        _RandomBlur(spec.blur_prob, spec.sigmas, spec.size),
    ]
    if spec.noise_prob > 0 and spec.noise_std > 0:
        steps.append(_GaussianNoise(spec.noise_prob, spec.noise_std, clip=False))
    if normalize:
        steps.append(T.Normalize(mean=normalize["mean"], std=normalize["std"]))
    return T.Compose(steps)


def channel_views(specs: Sequence[ViewSpec], normalize: dict | None) -> Callable:
    """The multi-view transform for non-RGB images: float ``(C, H, W)`` tensor -> list of views, one per spec.

    Example:
        >>> import torch
        >>> views = channel_views([ViewSpec(size=8), ViewSpec(size=4)], None)(torch.rand(1, 16, 16))
        >>> [tuple(v.shape) for v in views]
        [(1, 8, 8), (1, 4, 4)]
    """
    multi_view = require("lightly.transforms.multi_view_transform", "ssl")
    return multi_view.MultiViewTransform([channel_view(spec, normalize) for spec in specs])
