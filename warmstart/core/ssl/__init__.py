"""Self-supervised and distillation methods: one module per method, each a ``Method`` (pure torch + lightly).

A Method owns the backbone, its heads, a multi-view ``transform`` (PIL image -> list of view tensors) and a loss:
``training_loss(views)``, ``on_step_end(step, max_steps)`` (momentum updates), ``trainable_parameters()``.
Any loop can drive one; ``warmstart.pretraining.SSLModule`` drives it with a Lightning ``Trainer``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from warmstart.core.ssl import get_method
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    >>> method = get_method("simclr", net, image_size=32)
    >>> views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    >>> method.training_loss(views).shape
    torch.Size([])
"""

from __future__ import annotations

import inspect

from torch import nn

from .byol import BYOL
from .common import IMAGENET_NORMALIZE, Method, is_small_image, knn_accuracy
from .dino import DINO
from .distillation import Distillation
from .simclr import SimCLR
from .views import ViewSpec, pil_views

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (SimCLR, BYOL, DINO, Distillation)}


def method_options(name: str) -> list[str]:
    """The keyword options a method accepts (besides backbone and image_size).

    Example:
        >>> "temperature" in method_options("simclr")
        True
    """
    params = inspect.signature(_method_class(name).__init__).parameters
    return [p for p in params if p not in ("self", "backbone", "image_size")]


def _method_class(name: str) -> type[Method]:
    key = str(name).lower()
    if key not in METHODS:
        raise ValueError(f"unknown SSL method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[key]


def get_method(name: str, backbone: nn.Module, image_size: int = 64, **kwargs) -> Method:
    """Build method ``name`` ("simclr", "byol", "dino", "distillation") around ``backbone``.

    Unknown names or options raise ValueError listing the valid ones.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> get_method("byol", net, image_size=32).name
        'byol'
        >>> get_method("mae", net)
        Traceback (most recent call last):
        ...
        ValueError: unknown SSL method 'mae'; valid methods: byol, dino, distillation, simclr
    """
    cls = _method_class(name)
    valid = method_options(cls.name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"method {cls.name!r} got unknown option(s) {unknown}; valid options: {', '.join(valid)}")
    return cls(backbone, image_size, **kwargs)


__all__ = ["BYOL", "DINO", "IMAGENET_NORMALIZE", "METHODS", "Distillation", "Method", "SimCLR", "get_method",
           "ViewSpec", "is_small_image", "knn_accuracy", "method_options", "pil_views"]
