"""SSL views made on the training device, a batch at a time, with random parameters drawn per image.

The DataLoader only decodes and resizes (:class:`LoadResized`: the whole image as uint8 ``(3, S, S)`` plus the shape
its crops are drawn on); :class:`BatchedViews` turns a batch of those into a method's views on whatever device the
batch is on, following the same :class:`~warmstart.core.ssl.views.ViewSpec` list as the PIL path (crop, flips,
rotation, colour jitter, grayscale, blur, solarization, noise, then the backbone's normalization). Pure torch +
kornia.

Why parameters are drawn here and not by ``kornia.augmentation``: kornia's modules sample from torch's global RNG
for the whole batch at once, so an image's views would depend on its batch neighbours and on the global RNG state.
Here every image draws one fixed-size block of uniforms from its own ``torch.Generator`` seeded from ``(seed, epoch,
index)`` (the same seed :class:`~warmstart.pretraining.ssl_data.SeededViews` uses), and the block is mapped to
parameters vectorised over the batch. The views of an image then depend on nothing else, so a run killed mid-epoch
resumes to bit-identical weights, and the global RNG is never touched. The image operations are kornia's kernels
(``crop_and_resize``, ``rotate``, ``gaussian_blur2d``), the same ones ``kornia.augmentation`` calls; brightness,
contrast, saturation and hue use torchvision's formulas (hue in a closed form, ``shift_hue``) so the statistics
match the PIL path's ``ColorJitter``.

Non-square images: the loader squeezes the *whole* image into the ``S x S`` square and keeps the shape it would have
with its shorter side at ``S`` (``Resized.shape``). Crops are drawn on that shape, as torchvision's
RandomResizedCrop draws them on the decoded file in the PIL path, and mapped into the square: a view sees the same
part of the image with the same aspect as a PIL view would (a centre square would never show the sides of a wide
photo). The price is resolution along the longer side (stored at ``S`` pixels instead of ``S * aspect``).

Non-RGB images (``channels=N``: X-ray, depth, multi-band satellite data) take the same path with float
``(N, S, S)`` tensors (:class:`LoadResizedChannels`) and ``BatchedViews(..., channels=N)``, which makes what the
per-image channel views (``warmstart.core.ssl.views.channel_view``) make: crop, flips, rotation, one brightness
and one contrast factor per image shared by every band, blur, noise; no colour operation, no solarization and no
clipping (floats keep their stored range).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .._optional import require
from ..core.channels import shorter_side_shape
from ..core.ssl.views import ViewSpec, blur_kernel_size

CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 (scale, ratio) draws before its centre-crop fallback
# Layout of an image's uniforms for one view: 4 per crop attempt, then the other draws (fixed, so adding a draw
# never shifts the others).
_CROP = 4 * CROP_ATTEMPTS
_HFLIP, _VFLIP, _ROT, _ROT_ANGLE, _CJ, _B, _C, _S, _H = range(_CROP, _CROP + 9)
_ORDER = _CROP + 9  # 4 uniforms whose argsort is ColorJitter's random order of its 4 operations
_GRAY, _BLUR, _SIGMA, _SOLAR, _NOISE = range(_ORDER + 4, _ORDER + 9)
DRAWS_PER_VIEW = _ORDER + 9
SHAPE_BYTES = 16  # Resized.shape: two int64


def image_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentations: the same formula as ``SeededViews`` uses for the PIL path.

    Example:
        >>> image_seed(0, 1, 2)
        100005
    """
    return (int(seed) * 1_000_003 + int(epoch) * 100_003 + int(index)) % (2**31 - 1)


def draw_uniforms(seed: int, epoch: int, indices: Sequence[int], n_views: int) -> Tensor:
    """``(B, n_views, DRAWS_PER_VIEW)`` uniforms in [0, 1), each image's from its own seeded generator (CPU).

    Example:
        >>> u = draw_uniforms(0, 0, [3, 7], 2)
        >>> u.shape == (2, 2, DRAWS_PER_VIEW), torch.equal(u[1], draw_uniforms(0, 0, [7], 2)[0])
        (True, True)
    """
    out = torch.empty(len(indices), n_views, DRAWS_PER_VIEW)
    generator = torch.Generator()
    for row, index in enumerate(indices):
        generator.manual_seed(image_seed(seed, epoch, int(index)))
        torch.rand(n_views, DRAWS_PER_VIEW, generator=generator, out=out[row])
    return out


class Resized(NamedTuple):
    """One image as the batched path's loader step gives it (and the RAM cache keeps it).

    ``image``: the whole image resized to ``(C, S, S)`` (squeezed along its longer side); ``shape``: int64
    ``(height, width)`` of the image resized with its shorter side to ``S`` and its aspect kept, the frame the
    crops are drawn in (``(S, S)`` for a square image).
    """

    image: Tensor
    shape: Tensor


def _virtual_shape(height: int, width: int, size: int) -> Tensor:
    # The crop frame: the image's size with the shorter side at ``size`` (the eval resize's), int64 (height, width).
    return torch.tensor(shorter_side_shape(height, width, size), dtype=torch.int64)


class LoadResized:
    """The loader side of the batched path: PIL image -> :class:`Resized` (uint8 ``(3, size, size)`` + shape).

    The whole image is resized to ``size x size`` (PIL, antialiased), so every image of a batch has one shape,
    nothing of a non-square image is cut away, and the crops are drawn on the device in the image's own aspect
    (``Resized.shape``). Cheap: no float conversion, no augmentation.

    Example:
        >>> from PIL import Image
        >>> out = LoadResized(8)(Image.new("RGB", (32, 16), (255, 0, 0)))
        >>> out.image.shape, out.image.dtype, int(out.image[0].min()), out.shape.tolist()
        (torch.Size([3, 8, 8]), torch.uint8, 255, [8, 16])
    """

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, image) -> Resized:
        from PIL import Image

        image = image.convert("RGB")
        w, h = image.size
        if (w, h) != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR, reducing_gap=None)
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(self.size, self.size, 3)
        return Resized(pixels.permute(2, 0, 1).contiguous(), _virtual_shape(h, w, self.size))

    @property
    def item_bytes(self) -> int:
        """Bytes of one prepared image (what the RAM cache keeps per image: pixels and shape)."""
        return 3 * self.size * self.size + SHAPE_BYTES

    def __repr__(self) -> str:
        return f"LoadResized({self.size})"


class LoadResizedChannels:
    """The loader side of the batched path for ``channels=N``: float ``(N, H, W)`` -> :class:`Resized` (float32
    ``(N, size, size)`` + shape).

    The whole image resized to ``size x size`` (bilinear, antialiased): the float counterpart of
    :class:`LoadResized` (full precision is kept, so 16-bit data is not cut to 8 bits).

    Example:
        >>> out = LoadResizedChannels(8, 4)(torch.full((4, 32, 16), 2.0))
        >>> out.image.shape, out.image.dtype, round(float(out.image.max()), 4), out.shape.tolist()
        (torch.Size([4, 8, 8]), torch.float32, 2.0, [16, 8])
    """

    def __init__(self, size: int, channels: int) -> None:
        self.size, self.channels = int(size), int(channels)

    def __call__(self, image: Tensor) -> Resized:
        if image.ndim != 3 or image.shape[0] != self.channels:
            raise ValueError(f"expected a ({self.channels}, H, W) tensor, got shape {tuple(image.shape)}")
        h, w = image.shape[-2:]
        x = image.float()
        if (h, w) != (self.size, self.size):
            x = torch.nn.functional.interpolate(x[None], size=(self.size, self.size), mode="bilinear",
                                                align_corners=False, antialias=True)[0]
        return Resized(x.contiguous(), _virtual_shape(h, w, self.size))

    @property
    def item_bytes(self) -> int:
        """Bytes of one prepared image (float32 pixels and the shape)."""
        return 4 * self.channels * self.size * self.size + SHAPE_BYTES

    def __repr__(self) -> str:
        return f"LoadResizedChannels({self.size}, channels={self.channels})"


class BatchedViews:
    """A method's views of a uint8 image batch, made on the batch's device with per-image random parameters.

    Args:
        specs: one ViewSpec per view (``method.view_specs``).
        normalize: ``{"mean": [...], "std": [...]}`` (``Backbone.normalize``) or None for pixels / 255.
        seed: run seed; an image's parameters come from ``(seed, epoch, index)``.
        channels: None for RGB images (uint8 or [0, 1] floats); N for float ``(B, N, H, W)`` images of any range
            (``channels=`` runs): intensity jitter instead of colour jitter, no grayscale or solarization, no
            clipping.

    Example:
        >>> from warmstart.core.ssl.views import ViewSpec
        >>> make = BatchedViews([ViewSpec(size=16), ViewSpec(size=8)], None, seed=0)
        >>> images = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
        >>> views = make(images, torch.arange(4), epoch=0)
        >>> [tuple(v.shape) for v in views], torch.equal(views[0], make(images, torch.arange(4), epoch=0)[0])
        ([(4, 3, 16, 16), (4, 3, 8, 8)], True)
    """

    def __init__(self, specs: Sequence[ViewSpec], normalize: dict | None, seed: int = 0,
                 channels: int | None = None) -> None:
        if not specs:
            raise ValueError("BatchedViews needs at least one ViewSpec (the method's view_specs)")
        self.specs, self.normalize, self.seed = list(specs), normalize, int(seed)
        self.channels = None if channels is None else int(channels)
        expected = self.channels or 3
        if normalize is not None and len(normalize.get("mean", ())) != expected:
            # torch would broadcast 3 means over a 1-channel batch and return 3-channel views without a word
            raise ValueError(f"normalize has {len(normalize.get('mean', ()))} mean value(s) for {expected}-channel "
                             "images; use one per channel (warmstart.core.channels.channel_stats computes them)")

    def __call__(self, images: Tensor, indices: Tensor | Sequence[int], epoch: int,
                 shapes: Tensor | None = None) -> list[Tensor]:
        """The views ``[(B, C, size, size), ...]`` of ``images`` ((B, 3, H, W) uint8 or float in [0, 1]; with
        ``channels``, (B, channels, H, W) floats as stored). ``shapes``: (B, 2) ``(height, width)`` each image's
        crops are drawn in (``Resized.shape``: a squeezed non-square image); None: the stored size."""
        expected = 3 if self.channels is None else self.channels
        if images.ndim != 4 or images.shape[1] != expected:
            raise ValueError(f"BatchedViews expects images of shape (B, {expected}, H, W), got "
                             f"{tuple(images.shape)}")
        if shapes is not None and tuple(shapes.shape) != (images.shape[0], 2):
            raise ValueError(f"shapes must be (B, 2) = ({images.shape[0]}, 2), got {tuple(shapes.shape)}")
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        idx = indices.tolist() if isinstance(indices, Tensor) else list(indices)
        # Drawn on the CPU (a few hundred numbers per image) and moved once: device RNGs differ across hardware.
        u = draw_uniforms(self.seed, epoch, idx, len(self.specs)).to(x.device)
        frame = None if shapes is None else shapes.cpu()
        return [self.view(x, spec, u[:, v], frame) for v, spec in enumerate(self.specs)]

    def view(self, x: Tensor, spec: ViewSpec, u: Tensor, shapes: Tensor | None = None) -> Tensor:
        """One view of images ``x`` (floats in [0, 1]; any range with ``channels``) from per-image uniforms ``u``
        (B, DRAWS_PER_VIEW); ``shapes`` as in ``__call__``."""
        kornia = require("kornia", "ssl")
        rgb = self.channels is None
        out = _resized_crop(x, spec, u, clip=rgb, shapes=shapes)
        out = torch.where((u[:, _HFLIP] < spec.hf_prob)[:, None, None, None], out.flip(-1), out)
        out = torch.where((u[:, _VFLIP] < spec.vf_prob)[:, None, None, None], out.flip(-2), out)
        if spec.rr_prob > 0:
            out = _rotate(out, spec, u, kornia)
        if spec.cj_prob > 0:
            out = _color_jitter(out, spec, u) if rgb else _intensity_jitter(out, spec, u)
        if spec.gray_prob > 0 and rgb:
            gray = _gray(out).expand_as(out)
            out = torch.where((u[:, _GRAY] < spec.gray_prob)[:, None, None, None], gray, out)
        if spec.blur_prob > 0:
            chosen = (u[:, _BLUR] < spec.blur_prob).nonzero().flatten()
            if chosen.numel():  # only the images that are blurred pay for the convolution
                lo, hi = spec.sigmas
                sigma = (lo + (hi - lo) * u[chosen, _SIGMA])[:, None].expand(-1, 2).contiguous()
                size = min(blur_kernel_size(hi), 2 * ((out.shape[-1] - 1) // 2) + 1)
                out = out.index_copy(0, chosen, kornia.filters.gaussian_blur2d(out[chosen], size, sigma))
        if spec.solarize_prob > 0 and rgb:  # PIL's ImageOps.solarize(threshold=128): pixels >= 128 are inverted
            solar = torch.where(out >= 128 / 255, 1.0 - out, out)
            out = torch.where((u[:, _SOLAR] < spec.solarize_prob)[:, None, None, None], solar, out)
        if spec.noise_prob > 0 and spec.noise_std > 0:
            out = _noise(out, spec, u, clip=rgb)
        if self.normalize:
            mean = torch.tensor(self.normalize["mean"], device=out.device, dtype=out.dtype)[None, :, None, None]
            std = torch.tensor(self.normalize["std"], device=out.device, dtype=out.dtype)[None, :, None, None]
            out = (out - mean) / std
        return out


def crop_boxes(height: int | Tensor, width: int | Tensor, spec: ViewSpec, u: Tensor) -> Tensor:
    """torchvision's RandomResizedCrop.get_params, vectorised: ``(B, 4)`` integer boxes ``(top, left, h, w)``.

    ``height``/``width``: one size for the batch, or ``(B,)`` tensors (each image's own frame).

    Example:
        >>> spec = ViewSpec(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0))
        >>> crop_boxes(10, 10, spec, torch.rand(2, DRAWS_PER_VIEW)).tolist()
        [[0, 0, 10, 10], [0, 0, 10, 10]]
        >>> crop_boxes(torch.tensor([10, 10]), torch.tensor([10, 20]), spec, torch.rand(2, DRAWS_PER_VIEW))[1, 2:]
        tensor([10, 10])
    """
    a = u[:, :_CROP].reshape(-1, CROP_ATTEMPTS, 4).double()
    rows = torch.arange(a.shape[0], device=u.device)
    height = torch.as_tensor(height, dtype=torch.double, device=u.device).expand(a.shape[0])
    width = torch.as_tensor(width, dtype=torch.double, device=u.device).expand(a.shape[0])
    lo, hi = spec.scale
    log_lo, log_hi = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    target = (height * width)[:, None] * (lo + (hi - lo) * a[..., 0])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * a[..., 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = ok.double().argmax(1)  # the first attempt that fits, as torchvision takes it
    w, h = w[rows, first], h[rows, first]
    top = torch.floor(a[rows, first, 2] * (height - h + 1))
    left = torch.floor(a[rows, first, 3] * (width - w + 1))
    # Fallback when no attempt fits: the centre crop clamped to the ratio range.
    in_ratio = width / height
    narrow, wide = in_ratio < spec.ratio[0], in_ratio > spec.ratio[1]
    fw = torch.where(wide, torch.round(height * spec.ratio[1]), width)
    fh = torch.where(narrow, torch.round(width / spec.ratio[0]), height)
    fallback = torch.stack([torch.div(height - fh, 2, rounding_mode="floor"),
                            torch.div(width - fw, 2, rounding_mode="floor"), fh, fw], 1)
    boxes = torch.stack([top, left, h, w], 1)
    return torch.where(ok.any(1)[:, None], boxes, fallback).long()


def _resized_crop(x: Tensor, spec: ViewSpec, u: Tensor, clip: bool = True, shapes: Tensor | None = None) -> Tensor:
    kornia = require("kornia", "ssl")
    stored_h, stored_w = x.shape[-2], x.shape[-1]
    # On the CPU in float64 like torchvision's Python floats (and MPS has no float64).
    if shapes is None:
        frame_h, frame_w = torch.tensor(float(stored_h)), torch.tensor(float(stored_w))
    else:
        frame_h, frame_w = shapes[:, 0].cpu().double(), shapes[:, 1].cpu().double()
    top, left, h, w = crop_boxes(frame_h, frame_w, spec, u.cpu()).double().unbind(1)
    # Pixel centres of the box in the frame, mapped into the stored (squeezed) image: index i of the frame is at
    # (i + 0.5) * stored / frame - 0.5 there (the identity when the frame is the stored size).
    sy, sx = stored_h / frame_h, stored_w / frame_w
    x0, x1 = (left + 0.5) * sx - 0.5, (left + w - 0.5) * sx - 0.5
    y0, y1 = (top + 0.5) * sy - 0.5, (top + h - 0.5) * sy - 0.5
    x0, y0, x1, y1 = (c.to(x.device, x.dtype) for c in (x0, y0, x1, y1))  # kornia boxes: pixel corners, inclusive
    boxes = torch.stack([torch.stack([x0, y0], 1), torch.stack([x1, y0], 1), torch.stack([x1, y1], 1),
                         torch.stack([x0, y1], 1)], 1)
    # "border" (edge pixels repeated, as PIL's resampling clamps at the edge): a squeezed frame's edge pixel centres
    # sit up to half a stored pixel outside the image, and bicubic reads a pixel past the edge; zeros would darken
    out = kornia.geometry.transform.crop_and_resize(x, boxes, (spec.size, spec.size), mode=spec.interpolation,
                                                    padding_mode="border", align_corners=True)
    return out.clamp_(0, 1) if clip else out  # bicubic overshoots; PIL clips to uint8 too (raw floats: kept)


def _rotate(x: Tensor, spec: ViewSpec, u: Tensor, kornia) -> Tensor:
    chosen = u[:, _ROT] < spec.rr_prob
    if spec.rr_degrees is None:  # lightly's RandomRotate: a quarter turn counter-clockwise
        return torch.where(chosen[:, None, None, None], torch.rot90(x, 1, (-2, -1)), x)
    lo, hi = ((-abs(spec.rr_degrees), abs(spec.rr_degrees)) if isinstance(spec.rr_degrees, (int, float))
              else spec.rr_degrees)
    angle = torch.where(chosen, lo + (hi - lo) * u[:, _ROT_ANGLE], torch.zeros_like(u[:, _ROT_ANGLE]))
    return kornia.geometry.transform.rotate(x, angle.to(x.dtype), mode="nearest", align_corners=False)


def _color_jitter(x: Tensor, spec: ViewSpec, u: Tensor) -> Tensor:
    """torchvision's ColorJitter per image: factors, a random order of the 4 operations, applied with cj_prob.

    At each position of the order an image runs at most one operation, so brightness (``b*x``), contrast
    (``c*x + (1-c)*mean``) and saturation (``s*x + (1-s)*gray``) fold into one full-batch blend
    ``clamp(alpha*x + beta_c*mean + beta_s*gray)`` with per-image coefficients (alpha 1, betas 0 where the image
    runs another operation: an exact identity on [0, 1] images). Hue (an HSV round trip, the costly one) runs on
    the rows that take it at that position only. One blend per position instead of three gives bitwise the same
    output with fewer passes over the batch.
    """
    order = u[:, _ORDER:_ORDER + 4].argsort(1)
    apply = u[:, _CJ] < spec.cj_prob
    factors = []
    for amount, slot in ((spec.cj_bright, _B), (spec.cj_contrast, _C), (spec.cj_sat, _S)):
        lo, hi = max(0.0, 1 - amount), 1 + amount
        factors.append((lo + (hi - lo) * u[:, slot]).to(x.dtype))
    hue = ((2 * u[:, _H] - 1) * spec.cj_hue).to(x.dtype)
    out = x
    for position in range(4):
        chosen = torch.where(apply, order[:, position], -1)
        alpha = torch.where(chosen == 0, factors[0], torch.where(chosen == 1, factors[1],
                                                                 torch.where(chosen == 2, factors[2], 1.0)))
        beta_c = torch.where(chosen == 1, 1 - factors[1], 0.0)[:, None, None, None]
        beta_s = torch.where(chosen == 2, 1 - factors[2], 0.0)[:, None, None, None]
        gray = _gray(out)
        mean = gray.mean((-3, -2, -1), keepdim=True)
        out = (alpha[:, None, None, None] * out + beta_c * mean + beta_s * gray).clamp(0, 1)
        rows = (chosen == 3).nonzero().flatten()
        if spec.cj_hue and rows.numel():
            out = out.index_copy(0, rows, shift_hue(out[rows], hue[rows]))
    return out


def _intensity_jitter(x: Tensor, spec: ViewSpec, u: Tensor) -> Tensor:
    """The channel path's ``_IntensityJitter`` per image: brightness ``b*x`` and contrast ``c*x + (1-c)*mean``
    around each channel's own mean, one ``b`` and one ``c`` per image shared by all channels, with cj_prob.

    The per-image path applies the two in a random order; both orders give ``b * (c*x + (1-c)*mean(x))`` (the
    mean of ``b*x`` is ``b*mean(x)``), so no order is drawn here.
    """
    apply = u[:, _CJ] < spec.cj_prob
    b = (1 + spec.cj_bright * (2 * u[:, _B] - 1)).clamp_min(0).to(x.dtype)
    c = (1 + spec.cj_contrast * (2 * u[:, _C] - 1)).clamp_min(0).to(x.dtype)
    b = torch.where(apply, b, torch.ones_like(b))[:, None, None, None]
    c = torch.where(apply, c, torch.ones_like(c))[:, None, None, None]
    return b * (c * x + (1 - c) * x.mean((-2, -1), keepdim=True))


def _gray(x: Tensor) -> Tensor:
    # ITU-R 601 luma, kornia's rgb_to_grayscale weights (torchvision rounds red to 0.2989), as one batched reduction
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x * weights[None, :, None, None]).sum(1, keepdim=True)


def shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of RGB images ``x`` (N, 3, H, W) in [0, 1] by ``shift`` (N,) fractions of the colour circle.

    torchvision's ``adjust_hue`` per image (RGB -> HSV, hue + shift mod 1, HSV -> RGB), written with the closed
    form of HSV -> RGB (channel = V - V*S*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1): a handful
    of batched ops, ~5x faster on the CPU than kornia's general ``adjust_hue``, which dominated the views' cost.

    Example:
        >>> red = torch.zeros(1, 3, 1, 1); red[:, 0] = 1.0
        >>> shift_hue(red, torch.tensor([1 / 3])).flatten().tolist()  # a third of the circle: red -> green
        [0.0, 1.0, 0.0]
    """
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    chroma = maxc - minc
    divisor = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    # torchvision's _rgb2hsv: which channel is the maximum decides the hue's sector (r wins ties, then g)
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h6 = torch.remainder(h + 6.0 * shift.to(x.dtype)[:, None, None], 6.0)
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device)[None, :, None, None]
                        + h6[:, None], 6.0)
    return (maxc[:, None] - chroma[:, None] * torch.minimum(k, 4.0 - k).clamp(0, 1)).clamp(0, 1)


def _noise(x: Tensor, spec: ViewSpec, u: Tensor, clip: bool = True) -> Tensor:
    # Per-image noise from a generator seeded by the image's own uniforms, so it is as reproducible as the rest.
    noisy = x.clone()
    for row in (u[:, _NOISE] < spec.noise_prob).nonzero().flatten().tolist():
        generator = torch.Generator().manual_seed(int(u[row, _NOISE].item() * 2**31))
        noise = torch.randn(x.shape[1:], generator=generator).to(x.device, x.dtype)
        noisy[row] = (x[row] + spec.noise_std * noise).clamp(0, 1) if clip else x[row] + spec.noise_std * noise
    return noisy
