"""Pooled backbone features of every image in a folder: ``warmstart.embed`` / ``warmstart embed``.

(The module is ``embedding``, not ``embed``: a submodule named like the package's lazily exported ``embed``
function would replace that function as the package attribute as soon as anything imported the submodule.)

For retrieval, clustering, kNN checks or a quick linear probe of a pretrained backbone. Images go through a
fixed eval transform (resize, center crop, ImageNet normalisation) so the same folder always gives the same
array; row ``i`` of ``embeddings.npy`` belongs to line ``i`` of ``files.txt``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .._optional import require
from ..core.backbones import IMAGENET_NORMALIZE, Backbone, build_backbone
from ..core.checkpoints import export_metadata, load_backbone_weights, resolve_weights_path
from ..core.data import UnlabeledImages
from .embedding_files import check_format, write_embeddings


def eval_transform(image_size: int = 64, normalize: dict | None = IMAGENET_NORMALIZE) -> Callable[[Any], torch.Tensor]:
    """Resize (shorter side) + center crop to ``image_size``, to tensor, ``normalize`` mean/std (None: skip).

    Pass ``backbone.normalize`` so features see the inputs the backbone was pretrained on.

    Example:
        >>> from PIL import Image
        >>> tuple(eval_transform(32)(Image.new("RGB", (48, 40))).shape)
        (3, 32, 32)
    """
    t = require("torchvision.transforms", "timm")
    steps = [t.Resize(image_size), t.CenterCrop(image_size), t.ToTensor()]
    if normalize:
        steps.append(t.Normalize(normalize["mean"], normalize["std"]))
    return t.Compose(steps)


def embed(
    data: str | Path | Sequence[str | Path] | Dataset,
    model: str | nn.Module | None,
    weights: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int = 64,
    image_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    channels: int | None = None,
    format: str = "npy",  # noqa: A002 - the CLI's --format
) -> np.ndarray:
    """Return the pooled features ``(N, feature_dim)`` (float32) of every readable image in ``data``.

    ``data``: an image folder (recursive), a list of image paths or a Dataset of images. ``model``: a backbone
    spec (``"torchvision/resnet18"``), a model object or a :class:`Backbone`; None takes the spec from
    ``weights``' ``backbone.json``. ``weights``: a warmstart export (file or folder) loaded with
    ``load_backbone_weights`` (a missing path raises FileNotFoundError; a damaged file, a ValueError naming it).
    With ``out``, writes ``out/embeddings.npy`` and ``out/files.txt`` (one path per row; unreadable files are
    skipped with a warning, so they have no row). ``format``: ``"npy"`` (that pair), ``"csv"`` (``out/embeddings.csv``:
    a ``path`` column, then ``embedding_0`` .. ``embedding_{D-1}``) or ``"parquet"`` (the same table, needs
    ``pyarrow``); see :mod:`warmstart.pretraining.embedding_files`.
    ``channels``: non-RGB images (see ``warmstart.pretrain``); default: the ``in_channels`` recorded in the
    weights' ``backbone.json``, else RGB. Such images are normalised with the export's recorded statistics
    (else statistics computed from ``data``), after a resize and centre crop of the full-precision tensor.

    Example:
        >>> import tempfile, numpy as np
        >>> from warmstart.testing import write_image_folder
        >>> root = write_image_folder(np.zeros((3, 16, 16, 3), np.uint8), None, tempfile.mkdtemp())
        >>> embed(root, "torchvision/resnet18", image_size=32, progress=False).shape
        (3, 512)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    format = check_format(format)  # noqa: A001 - a bad format / missing pyarrow fails before any image is read
    # Data first: a wrong folder should fail before any model is built.
    exported = _export_info(weights)
    if channels is None:
        channels = exported.get("in_channels")
    channels = None if channels in (None, 3) else channels
    if channels is None:
        dataset = data if isinstance(data, UnlabeledImages) else UnlabeledImages(data, progress=progress)
        backbone = _backbone(model, weights, image_size)
        dataset.transform = eval_transform(image_size, backbone.normalize)
    else:
        dataset, backbone = _channel_inputs(data, model, weights, image_size, int(channels), exported, progress)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                          else "cpu")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    was_training = backbone.training
    backbone.to(device).eval()
    feats = []
    try:
        batches = loader
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(loader, desc="embedding", unit="batch")
        with torch.inference_mode():
            for batch in batches:
                feats.append(backbone(batch.to(device, non_blocking=True)).float().cpu())
    finally:
        backbone.train(was_training)
    result = torch.cat(feats).numpy()
    if out is not None:
        _write(Path(out), result, dataset, format)
    return result


def _export_info(weights: str | Path | None) -> dict:
    """``info`` of the export's ``backbone.json`` next to ``weights`` (``{}`` when there is none)."""
    if weights is None:
        return {}
    try:  # a missing/damaged weights path is reported later, after the data check, as before
        return dict(export_metadata(weights).get("info") or {})
    except (OSError, ValueError):
        return {}


def _channel_inputs(data: Any, model: Any, weights: Any, image_size: int, channels: int, exported: dict,
                    progress: bool) -> tuple[UnlabeledImages, Backbone]:
    """Dataset and backbone for non-RGB images: statistics from the export, else from the data."""
    from ..core.channels import channel_stats, eval_channels_transform

    dataset = data if isinstance(data, UnlabeledImages) else UnlabeledImages(data, progress=progress,
                                                                              channels=channels)
    backbone = _backbone(model, weights, image_size, channels)
    if "normalize" in exported:
        backbone.info["normalize"] = exported["normalize"]
    elif "normalize" not in backbone.info and backbone.normalize is not None:
        backbone.info["normalize"] = channel_stats(dataset)
    dataset.transform = eval_channels_transform(image_size, backbone.normalize)
    return dataset, backbone


def _backbone(model: str | nn.Module | None, weights: str | Path | None, image_size: int,
              channels: int | None = None) -> Backbone:
    # Resolve the weights first: a missing or empty folder is the real problem, not the omitted model.
    weights_file = resolve_weights_path(weights) if weights is not None else None
    if model is None:
        # export_metadata is the one reader of backbone.json (a damaged file reads as none, as everywhere else)
        spec = export_metadata(weights_file).get("spec") if weights_file is not None else None
        if not spec:
            meta = weights_file.parent / "backbone.json" if weights_file is not None else None
            why = ("no weights were given" if meta is None
                   else f"{meta} names no spec (a custom module, or the file is damaged)" if meta.is_file()
                   else "there is no export's backbone.json next to the weights")
            raise ValueError(f"model is required: a spec like 'torchvision/resnet18' or a model object ({why}; "
                             "it can be omitted only when weights is a warmstart export).")
        model = spec
    if channels is not None:
        backbone = build_backbone(model, image_size=image_size, channels=channels)
    else:
        backbone = model if isinstance(model, Backbone) else build_backbone(model, image_size=image_size)
    if weights_file is not None:
        load_backbone_weights(backbone, weights_file)
    return backbone


def _write(out: Path, features: np.ndarray, dataset: UnlabeledImages, format: str) -> Path:  # noqa: A002
    names = [str(p) for p in dataset.files] if dataset.files is not None else [str(i) for i in range(len(dataset))]
    return write_embeddings(out, features, names, format)


__all__ = ["embed", "eval_transform"]
