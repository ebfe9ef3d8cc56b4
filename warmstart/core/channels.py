"""Images that are not 8-bit RGB: 1-channel (X-ray, depth) and multi-band (satellite) data at full precision.

Three jobs, one per section:

* **Reading** (:func:`read_array`, :func:`load_channels`): every file becomes an ``(H, W, C)`` array in its
  stored dtype, then a float ``(C, H, W)`` tensor. 16-bit samples keep all 16 bits (PIL's own 16-bit
  grayscale modes; for 16-bit multi-band files, which PIL can only open as 8-bit, ``tifffile`` or OpenCV when
  installed, else a clear error). ``.npy`` arrays ``(H, W)`` / ``(H, W, C)`` are read as stored. Integers
  are scaled to [0, 1] by their type's range (uint8 / 255, uint16 / 65535), so an 8-bit and a 16-bit scan of
  the same scene give the same numbers; floats are kept as stored.
* **First-convolution adaptation** (:func:`adapt_first_conv`): the backbone's stem conv gets ``channels``
  inputs. From RGB weights (a model you pass in, usually pretrained) each new input channel gets the mean of
  the RGB filters times ``3 / channels``: an input whose channels all carry one intensity then gives exactly
  the output the RGB conv gives for a gray image of that intensity, so pretrained features and the activation
  scale the following BatchNorm expects both survive, and no band is assumed to be "red". For randomly
  initialised models (built from a spec) the mean would make every input channel start with the *same* filter,
  so fresh weights are drawn instead at the RGB init's standard deviation times ``sqrt(3 / channels)``: the
  output variance stays what the rest of the network was initialised for.
* **Statistics** (:func:`channel_stats`): per-channel mean/std over a fixed, evenly spaced sample of the data,
  used for normalisation when the family's RGB defaults (ImageNet mean/std) cannot apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ARRAY_SUFFIXES = (".npy",)
STATS_IMAGES = 256  # images sampled for channel_stats: enough for stable means, seconds even for large files
_ONE_BAND_MODES = {"L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N", "1"}


# -------------------------------------------------------------------------------------------------- reading


def read_array(path: str | Path) -> np.ndarray:
    """The pixels of an image file or ``.npy`` array as ``(H, W, C)`` in the stored dtype (no 8-bit truncation).

    A multi-page TIFF whose pages are single-band images of one size is read as one band per page.

    Example:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> p = f"{tempfile.mkdtemp()}/x.png"
        >>> Image.fromarray(np.array([[0, 1], [256, 65535]], np.uint16)).save(p)
        >>> a = read_array(p)
        >>> a.shape, a.dtype, int(a[0, 1, 0]), int(a[1, 1, 0])
        ((2, 2, 1), dtype('uint16'), 1, 65535)
    """
    path = Path(path)
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return _npy(path)
    from .data import _pil_open

    with _pil_open(path) as img:
        bits = _bits_per_sample(img, path)
        if bits > 8 and len(img.getbands()) > 1:
            return _deep_multiband(path, len(img.getbands()), bits)
        pages = getattr(img, "n_frames", 1)
        if img.format == "TIFF" and pages > 1:
            return _tiff_pages(img, path, pages)
        img.load()
        return _pil_array(img, bits)


def count_channels(path: str | Path) -> int:
    """How many channels ``read_array`` gives for ``path``, from the header (pixels are not decoded).

    Example:
        >>> import tempfile, numpy as np
        >>> p = f"{tempfile.mkdtemp()}/x.npy"
        >>> np.save(p, np.zeros((4, 4, 6), np.uint16))
        >>> count_channels(p)
        6
    """
    path = Path(path)
    if path.suffix.lower() in ARRAY_SUFFIXES:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        return 1 if len(shape) == 2 else int(shape[-1])
    from .data import _pil_open

    with _pil_open(path) as img:
        pages = getattr(img, "n_frames", 1)
        if img.format == "TIFF" and pages > 1 and img.mode in _ONE_BAND_MODES:
            return int(pages)
        if img.mode == "P":
            return 4 if "transparency" in img.info else 3
        return 1 if img.mode in _ONE_BAND_MODES else len(img.getbands())


def to_tensor(array: np.ndarray) -> Tensor:
    """``(H, W, C)`` array -> float32 ``(C, H, W)``; integers scaled by their type's range, floats as stored.

    Example:
        >>> to_tensor(np.array([[[65535]]], np.uint16)).tolist(), to_tensor(np.array([[[51]]], np.uint8)).tolist()
        ([[[1.0]]], [[[0.20000000298023224]]])
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype == bool:
        out = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.unsignedinteger):
        out = array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    else:  # floats, and signed integers whose range is data-specific: the statistics handle the scale
        out = array.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def load_channels(path: str | Path, channels: int | None = None) -> Tensor:
    """Read ``path`` as a float ``(C, H, W)`` tensor (see :func:`to_tensor`); with ``channels``, C must equal it.

    Example:
        >>> import tempfile, numpy as np
        >>> p = f"{tempfile.mkdtemp()}/x.npy"
        >>> np.save(p, np.full((2, 3, 4), 255, np.uint8))
        >>> tuple(load_channels(p, 4).shape), float(load_channels(p).max())
        ((4, 2, 3), 1.0)
    """
    x = to_tensor(read_array(path))
    if channels is not None and x.shape[0] != int(channels):
        raise ValueError(f"{path} has {x.shape[0]} channel(s) but channels={channels}; "
                         f"{_mismatch_fix(int(channels))}")
    return x


def probe(path: str | Path) -> tuple[int | None, str | None]:
    """``(channels, None)`` if ``path`` reads (fully decoded once), else ``(None, reason)``.

    Example:
        >>> import tempfile
        >>> p = f"{tempfile.mkdtemp()}/bad.png"
        >>> _ = open(p, "w").write("not an image")
        >>> probe(p)
        (None, 'not an image')
    """
    from PIL import Image

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return None, "empty file"
        return int(to_channels_last(read_array(path)).shape[-1]), None
    except FileNotFoundError:
        return None, "broken symlink" if path.is_symlink() else "missing"
    except ImportError:
        raise  # a missing reader is the user's to fix, not a bad file
    except Image.UnidentifiedImageError:
        return None, "not an image"
    except Exception as err:  # PIL / numpy raise many kinds of errors for broken files
        text = str(err)
        return None, "truncated" if "truncated" in text.lower() else f"{type(err).__name__}: {text}"[:200]


def to_channels_last(array: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> ``(H, W, 1)``; ``(H, W, C)`` unchanged.

    Example:
        >>> to_channels_last(np.zeros((2, 3))).shape
        (2, 3, 1)
    """
    return array[:, :, None] if array.ndim == 2 else array


def check_channel_counts(counts: Sequence[tuple[Path, int]], channels: int) -> None:
    """Raise ValueError naming how many files (and which) do not have ``channels`` channels.

    Example:
        >>> from pathlib import Path
        >>> check_channel_counts([(Path("a.png"), 1)], 1)
        >>> check_channel_counts([(Path("a.png"), 1), (Path("b.png"), 3)], 1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: 1 of 2 images do not have channels=1: 1 file(s) with 3 channels (e.g. b.png). Convert them ...
    """
    wrong = [(p, c) for p, c in counts if c != int(channels)]
    if not wrong:
        return
    by_count: dict[int, list[Path]] = {}
    for p, c in wrong:
        by_count.setdefault(c, []).append(p)
    parts = "; ".join(f"{len(ps)} file(s) with {c} channels (e.g. {ps[0]})" for c, ps in sorted(by_count.items()))
    raise ValueError(f"{len(wrong)} of {len(counts)} images do not have channels={channels}: {parts}. "
                     f"{_mismatch_fix(int(channels))}")


def _mismatch_fix(channels: int) -> str:
    how = ' (e.g. PIL .convert("L") or save single-band 16-bit PNGs)' if channels == 1 else ""
    return f"Convert them to {channels} channel(s){how}, or pass the matching --channels/channels=."


def _npy(path: Path) -> np.ndarray:
    array = np.load(path, allow_pickle=False)
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        raise ValueError(f"{path}: a .npy image must be (H, W) or (H, W, C), got shape {array.shape}")
    if array.dtype.kind not in "buif":
        raise ValueError(f"{path}: a .npy image must hold numbers, got dtype {array.dtype}")
    return to_channels_last(array)


def _bits_per_sample(img: Any, path: Path) -> int:
    """Bits per stored sample as the file declares it (TIFF tag 258, PNG IHDR); 8 when unknown."""
    if img.format == "TIFF":
        bits = img.tag_v2.get(258, 8)
        return int(max(bits) if isinstance(bits, (tuple, list)) else bits)
    if img.format == "PNG":
        with open(path, "rb") as f:
            head = f.read(25)
        return int(head[24]) if len(head) == 25 else 8
    return 16 if img.mode.startswith("I;16") else 8


def _pil_array(img: Any, bits: int) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("YCbCr", "LAB", "HSV") or mode.startswith("BGR"):
        img = img.convert("RGB")
    array = np.asarray(img)
    if mode.startswith("I;16"):
        array = array.astype(np.uint16)  # big-endian I;16B -> native
    elif mode == "I" and bits == 16 and array.size and array.min() >= 0 and array.max() <= 65535:
        array = array.astype(np.uint16)  # 16-bit samples PIL widened to 32-bit: keep the 16-bit scale
    return to_channels_last(array)


def _tiff_pages(img: Any, path: Path, pages: int) -> np.ndarray:
    bands = []
    for page in range(pages):
        img.seek(page)
        if img.mode not in _ONE_BAND_MODES:
            raise ValueError(f"{path}: a multi-page TIFF is read as one band per page, but page {page} has mode "
                             f"{img.mode}; save one multi-band page, or one single-band page per band")
        img.load()
        band = _pil_array(img, _bits_per_sample(img, path))[:, :, 0]
        if bands and band.shape != bands[0].shape:
            raise ValueError(f"{path}: page {page} is {band.shape}, page 0 is {bands[0].shape}; bands must match")
        bands.append(band)
    return np.stack(bands, axis=-1)


def _deep_multiband(path: Path, bands: int, bits: int) -> np.ndarray:
    """A >8-bit file with several bands: PIL would return 8-bit data, so read it with tifffile or OpenCV."""
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile
        except ImportError:
            pass
        else:
            return to_channels_last(np.asarray(tifffile.imread(path)))
    try:
        import cv2
    except ImportError:
        raise ImportError(
            f"{path} stores {bands} bands at {bits} bits; PIL reads such files only at 8 bits. Install "
            "tifffile (pip install tifffile) or opencv-python to read them at full precision, or save the images "
            "as .npy arrays (H, W, C).") from None
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError(f"{path}: OpenCV could not decode this {bits}-bit {bands}-band file")
    array = to_channels_last(array)
    # OpenCV returns colour files as BGR(A): back to the order stored in the file.
    if array.shape[-1] == 3:
        array = array[:, :, ::-1]
    elif array.shape[-1] == 4:
        array = array[:, :, [2, 1, 0, 3]]
    return np.ascontiguousarray(array)


# ------------------------------------------------------------------------------------ first-conv adaptation


def first_conv_name(model: nn.Module) -> str | None:
    """Name of the stem convolution: timm's ``pretrained_cfg["first_conv"]`` if set, else the first ``Conv2d``.

    Example:
        >>> first_conv_name(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)))
        '0'
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    named = cfg.get("first_conv")
    if isinstance(named, str):
        for candidate in (named, f"{named}.conv", f"{named}.proj"):
            try:
                if isinstance(model.get_submodule(candidate), nn.Conv2d):
                    return candidate
            except AttributeError:
                continue
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    return None


def adapt_first_conv(model: nn.Module, channels: int, *, init: str = "rgb") -> str:
    """Give ``model``'s stem convolution ``channels`` input channels, in place; returns the conv's name.

    ``init="rgb"``: new filters from the RGB ones (mean over R, G, B, repeated, times ``3 / channels``);
    ``init="random"``: fresh normal filters at the RGB filters' std times ``sqrt(3 / channels)``. See the module
    docstring for why. A conv that already has ``channels`` inputs is left alone. Raises ValueError when the
    model has no ``Conv2d`` stem with 3 inputs and ``groups=1`` (nothing that can be adapted).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> gray = torch.rand(1, 1, 8, 8)
        >>> before = net(gray.expand(1, 3, 8, 8))
        >>> adapt_first_conv(net, 1), net[0].in_channels, torch.allclose(net(gray), before, atol=1e-6)
        ('0', 1, True)
    """
    channels = _check_channels(channels)
    if init not in ("rgb", "random"):
        raise ValueError(f"init must be 'rgb' or 'random', got {init!r}")
    name = first_conv_name(model)
    if name is None:
        raise ValueError(f"cannot adapt {type(model).__name__} to {channels} input channel(s): it has no Conv2d "
                         "stem. Build the model with the right number of input channels yourself and pass it in.")
    conv = model.get_submodule(name)
    if conv.in_channels == channels:
        return name
    if conv.in_channels != 3 or conv.groups != 1:
        raise ValueError(f"cannot adapt {type(model).__name__} to {channels} input channel(s): its first conv "
                         f"'{name}' has {conv.in_channels} inputs and groups={conv.groups} (expected an RGB stem: 3 "
                         "inputs, groups=1). Build the model with the right number of input channels yourself.")
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode, device=conv.weight.device,
                    dtype=conv.weight.dtype)
    with torch.no_grad():
        weight = conv.weight
        if init == "rgb":
            new.weight.copy_(weight.mean(1, keepdim=True).expand_as(new.weight) * (3 / channels))
        else:
            std = float(weight.std()) * math.sqrt(3 / channels)
            new.weight.normal_(0.0, std if std > 0 else 1.0 / math.sqrt(new.weight[0].numel()))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    new.train(conv.training)
    new.weight.requires_grad_(conv.weight.requires_grad)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    _set_channel_attributes(model, channels)
    return name


def conv_in_channels(model: nn.Module) -> int | None:
    """Input channels of ``model``'s stem convolution (None without one).

    Example:
        >>> conv_in_channels(nn.Sequential(nn.Conv2d(4, 8, 3)))
        4
    """
    name = first_conv_name(model)
    return None if name is None else int(model.get_submodule(name).in_channels)


def _set_channel_attributes(model: nn.Module, channels: int) -> None:
    """Attributes that still say 3 after the conv swap (HF configs and patch embeddings check them in forward;
    torchvision's GoogLeNet/Inception re-normalise RGB input when ``transform_input`` is set)."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "num_channels", None) == 3:
        config.num_channels = channels
    for module in model.modules():
        if getattr(module, "num_channels", None) == 3 and not isinstance(module, nn.GroupNorm):
            module.num_channels = channels
        if getattr(module, "transform_input", False):
            module.transform_input = False


def _check_channels(channels: Any) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a whole number >= 1 (1 for grayscale/X-ray/depth, 4+ for multi-band "
                         f"images), got {channels!r}")
    return int(channels)


# ------------------------------------------------------------------------------------------------ statistics


def channel_stats(images: Sequence[Any] | Any, max_images: int = STATS_IMAGES,
                  load: Callable[[Any], Tensor] | None = None) -> dict[str, list[float]]:
    """Per-channel ``{"mean": [...], "std": [...]}`` of the pixels of up to ``max_images`` evenly spaced items.

    ``images`` is a sequence (or Dataset) of ``(C, H, W)`` tensors, or of anything ``load`` turns into one.
    Sums are taken in float64; a channel with zero spread gets std 1 (normalising by 0 would give inf).

    Example:
        >>> stats = channel_stats([torch.zeros(2, 4, 4), torch.ones(2, 4, 4)])
        >>> stats["mean"], stats["std"]
        ([0.5, 0.5], [0.5, 0.5])
    """
    n = len(images)
    if n == 0:
        raise ValueError("cannot compute channel statistics of an empty dataset")
    take = sorted({int(i) for i in np.linspace(0, n - 1, num=min(n, int(max_images)))})
    total = total_sq = None
    count = 0
    for i in take:
        x = images[i] if load is None else load(images[i])
        x = torch.as_tensor(x).double().flatten(1)
        if total is None:
            total, total_sq = x.sum(1), (x * x).sum(1)
        elif x.shape[0] != total.shape[0]:
            raise ValueError(f"item {i} has {x.shape[0]} channels, earlier items {total.shape[0]}")
        else:
            total, total_sq = total + x.sum(1), total_sq + (x * x).sum(1)
        count += x.shape[1]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}


def shorter_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """``(height, width)`` after resizing the shorter side to ``size`` with the aspect kept (never below ``size``).

    Example:
        >>> shorter_side_shape(40, 60, 16), shorter_side_shape(32, 32, 8)
        ((16, 24), (8, 8))
    """
    scale = size / min(height, width)
    return max(size, round(height * scale)), max(size, round(width * scale))


def resize_center_crop(x: Tensor, size: int) -> Tensor:
    """Shorter side to ``size`` (bilinear, antialiased), then the centre square: the eval view of any channels.

    Example:
        >>> tuple(resize_center_crop(torch.rand(5, 40, 60), 16).shape)
        (5, 16, 16)
    """
    h, w = x.shape[-2:]
    nh, nw = shorter_side_shape(h, w, size)
    if (nh, nw) != (h, w):
        x = nn.functional.interpolate(x[None].float(), size=(nh, nw), mode="bilinear", align_corners=False,
                                      antialias=True)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top:top + size, left:left + size]


def eval_channels_transform(image_size: int, normalize: dict | None) -> Callable[[Tensor], Tensor]:
    """``(C, H, W)`` float tensor -> resized, centre-cropped, normalised: what ``embed`` and kNN use for channels.

    Example:
        >>> t = eval_channels_transform(8, {"mean": [0.5], "std": [0.5]})
        >>> tuple(t(torch.ones(1, 16, 12)).shape), float(t(torch.ones(1, 16, 12)).mean())
        ((1, 8, 8), 1.0)
    """
    return _EvalChannels(int(image_size), normalize)


class _EvalChannels:
    """A picklable eval transform (DataLoader workers pickle it under spawn)."""

    def __init__(self, size: int, normalize: dict | None) -> None:
        self.size, self.normalize = size, normalize

    def __call__(self, x: Tensor) -> Tensor:
        x = resize_center_crop(x, self.size)
        if self.normalize:
            mean = x.new_tensor(self.normalize["mean"])[:, None, None]
            std = x.new_tensor(self.normalize["std"])[:, None, None]
            x = (x - mean) / std
        return x
