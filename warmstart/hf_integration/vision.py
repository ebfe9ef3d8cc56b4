"""Start a transformers image classifier from a ``warmstart pretrain`` backbone export.

What loads and why. An export is written in its backbone's *native* key layout (ARCHITECTURE.md rule 6), and
``core.checkpoints.load_backbone_weights`` matches keys up to a prefix it detects; it never renames layers.

Works (same architecture, same library, only a prefix differs) -- the one-liner is
``image_classifier_from_export(export_dir, num_labels=...)``, which rebuilds the classifier from the
``config.json`` that ``export_backbone`` writes next to an ``hf/...`` export, then loads the weights:
  - ``hf/...`` ViT export (``ViTModel`` keys: ``embeddings.*``, ``layers.*``) -> ``ViTForImageClassification``
    (keys under ``vit.``), and the same for ``ConvNextModel`` -> ``ConvNextForImageClassification``
    (``convnext.``) and ``ResNetModel`` -> ``ResNetForImageClassification`` (``resnet.``): the classifier head
    is new, the backbone is the pretrained one. Config must match (hidden size, depth, patch and image size:
    a different image size changes the position-embedding shape and is refused as a shape mismatch).
  - an export from the ``*For*`` model itself, or the same ``*Model`` class.

Refused with a ValueError (never a silent partial load):
  - torchvision or timm exports into transformers models, e.g. torchvision ``resnet18`` -> HF
    ``ResNetForImageClassification``: the tensors are the same kind but named differently
    (``conv1.weight``, ``layer1.0.bn1.weight`` vs ``resnet.embedder.embedder.convolution.weight``,
    ``resnet.encoder.stages.0.layers.0.layer.0.normalization.weight``), so a key match finds ~0 tensors.
    Pretrain with an ``hf/<config or folder>`` backbone spec instead, or fine-tune the torchvision/timm model
    where it lives (Lightning front end).
  - different architectures or sizes (ViT export -> ConvNext, ViT-S -> ViT-B): shape or coverage mismatch.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from torch import nn

from warmstart._optional import require

require("transformers")
log = logging.getLogger(__name__)

# A few key shapes that identify where an export came from, for the error message only.
_LAYOUTS = (
    ("torchvision ResNet", re.compile(r"^(layer[1-4]\.\d+\.(conv|bn)\d|conv1\.weight$|bn1\.)")),
    ("torchvision ViT", re.compile(r"^(conv_proj\.|encoder\.layers\.encoder_layer_)")),
    ("timm", re.compile(r"^(blocks\.\d+\.|stages\.\d+\.blocks|patch_embed\.proj|stem\.\d)")),
    ("YOLO", re.compile(r"^model\.\d+\.")),
)


def image_classifier_from_export(export_dir: str | os.PathLike, num_labels: int, **config_overrides: Any):
    """A transformers image classifier (``AutoModelForImageClassification``) started from an ``hf/...`` export.

    ``export_dir`` is the folder ``warmstart pretrain`` / ``core.checkpoints.export_backbone`` wrote
    (``backbone.safetensors`` + ``config.json``). The architecture comes from that config, so it matches by
    construction; the classifier head is new (``num_labels`` outputs). Works for ViT, ConvNext, ResNet and any
    other transformers vision model with an image-classification class. Exports from torchvision / timm / YOLO
    backbones have no ``config.json`` and are refused with the reason (see the module docstring).

    Example:
        >>> import tempfile
        >>> from warmstart.core.backbones import build_backbone
        >>> from warmstart.core.checkpoints import export_backbone
        >>> out = tempfile.mkdtemp()
        >>> _ = export_backbone(build_backbone("hf/vit", image_size=32), out)
        >>> model, report = image_classifier_from_export(out, num_labels=3)
        >>> type(model).__name__, len(report.matched) == report.total_backbone
        ('ViTForImageClassification', True)
    """
    from warmstart.core import checkpoints

    transformers = require("transformers")
    folder = Path(export_dir)
    if not folder.is_dir():
        raise checkpoints.WeightsNotFoundError(
            f"export folder {folder} does not exist" if not folder.exists() else
            f"{folder} is a file; pass the export folder (with config.json) that `warmstart pretrain` wrote")
    if not (folder / "config.json").is_file():
        weights = _weights_file(folder)
        hint = _layout_hint_for_keys(_file_keys(weights), "a transformers image classifier", weights) if weights else ""
        raise ValueError(
            f"{str(folder)!r} has no config.json, so it is not an export of an `hf/...` backbone and there is no "
            "transformers architecture to rebuild. Pretrain with an `hf/<vit|convnext|resnet|config folder>` "
            "backbone, or build the classifier yourself and call load_pretrained_backbone(model, path)."
            + (f"\n{hint}" if hint else ""))
    config = transformers.AutoConfig.from_pretrained(str(folder), **config_overrides)
    config.num_labels = num_labels  # regenerates id2label / label2id for the new head
    model = transformers.AutoModelForImageClassification.from_config(config)
    return model, load_pretrained_backbone(model, folder)


def load_pretrained_backbone(model: nn.Module, path: str | os.PathLike, *, min_match: float = 1.0,
                             prefix: str | None = None, allow_missing: str | list[str] | None = None):
    """Load a backbone export (``.safetensors`` / ``.pt``) into an HF image classifier; returns the LoadReport.

    ``path`` is the weights file or the export folder (its ``backbone.safetensors`` / ``backbone.pt``; a missing
    path raises FileNotFoundError, a damaged file a ValueError naming it). Thin wrapper over
    ``warmstart.core.checkpoints.load_backbone_weights`` (prefix auto-detected, e.g. ``vit.``; the load is
    complete or raises, except the classifier; ``allow_missing`` / ``min_match`` ask for a partial load; any
    shape difference raises). Adds what an HF user needs on failure: which layout the file is in and how to get
    one that fits. See the module docstring for the combinations that work and why the others cannot.

    Example:
        >>> import tempfile, transformers
        >>> from warmstart.core.checkpoints import save_weights
        >>> cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                              intermediate_size=64, image_size=32, patch_size=8, num_labels=3)
        >>> path = save_weights(transformers.ViTModel(cfg, add_pooling_layer=False).state_dict(),
        ...                     tempfile.mkdtemp() + "/backbone.safetensors")
        >>> report = load_pretrained_backbone(transformers.ViTForImageClassification(cfg), path)
    """
    from warmstart.core import checkpoints, processes  # pure torch + safetensors

    path = checkpoints.resolve_weights_path(path)  # missing: a FileNotFoundError (and ValueError) naming it
    try:
        report = checkpoints.load_backbone_weights(model, path, min_match=min_match, prefix=prefix,
                                                   allow_missing=allow_missing)
    except ValueError as err:
        hint = _layout_hint(model, path)
        if not hint:
            raise
        # The layout is the real cause; the loader's own message (often a spurious shape clash between two
        # unrelated tensors that happen to share a name suffix) is detail.
        raise ValueError(f"{hint}\n(loader: {err})") from err
    # An image processor's ImageNet mean/std would be wrong for this export: said once per run, by the first process
    # (under torchrun every process loads the backbone).
    if (note := report.normalize_warning()) and not processes.is_launched_child():
        log.warning("%s: %s", path, note)
    return report


def _weights_file(folder: Path) -> Path | None:
    from warmstart.core.checkpoints import resolve_weights_path

    try:
        return resolve_weights_path(folder)
    except (FileNotFoundError, ValueError):
        return None


def _layout_hint(model: nn.Module, path: str | os.PathLike) -> str:
    if not hasattr(model, "base_model_prefix"):
        return ""
    return _layout_hint_for_keys(_file_keys(path), f"transformers' {type(model).__name__}", path)


def _layout_hint_for_keys(keys: list[str], target: str, path) -> str:
    if not keys:
        return ""
    for layout, rx in _LAYOUTS:
        if sum(bool(rx.search(k)) for k in keys) >= len(keys) / 2:
            return (f"{path} is a {layout} export, and {target} names its tensors "
                    "differently, so warmstart will not load it (it never renames layers). Pretrain with an "
                    "`hf/<config or folder>` backbone of the same architecture to get an HF-layout export, or "
                    f"fine-tune the {layout} model in its own framework.")
    return ""


def _file_keys(path: str | os.PathLike) -> list[str]:
    from warmstart.core.checkpoints import read_weights

    try:
        return list(read_weights(path))
    except (OSError, ValueError):  # the hint is best effort; the load's own error is what matters
        return []
