"""What every SSL method shares: the Method base, image-size-aware augmentation defaults, feature-dim discovery.

Pure torch (+ lightly inside the methods); no Lightning import, so any training loop can drive a Method.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..backbones import IMAGENET_NORMALIZE

# At or below this side length an image is "small" (CIFAR-like): the 224 px recipes' strong crops, blur and
# solarization destroy most of the signal in a 32 px image, so the methods switch to milder defaults.
SMALL_IMAGE_MAX = 96


def is_small_image(image_size: int) -> bool:
    """True when ``image_size`` gets the small-image (32-96 px) augmentation defaults.

    Example:
        >>> is_small_image(32), is_small_image(224)
        (True, False)
    """
    return int(image_size) <= SMALL_IMAGE_MAX


def check_image_size(image_size: int) -> int:
    """Validate an image size and return it as int.

    Example:
        >>> check_image_size(64)
        64
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8 pixels, got {image_size!r}")
    return image_size


def feature_dim_of(module: nn.Module, image_size: int = 64) -> int:
    """The backbone's pooled feature size: ``module.feature_dim`` or, failing that, one dummy forward.

    Example:
        >>> feature_dim_of(nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 16)
        5
    """
    dim = getattr(module, "feature_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, 3, image_size, image_size, device=_device_of(module)))
    finally:
        module.train(was_training)
    if not isinstance(out, Tensor) or out.ndim != 2:
        raise ValueError(
            f"the backbone must return pooled features of shape (B, D); {type(module).__name__} returned "
            f"{getattr(out, 'shape', type(out).__name__)}. Wrap it with "
            "warmstart.core.backbones.build_backbone(module, feature_fn=...)"
        )
    return int(out.shape[1])


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` to be updated by exponential moving average (BYOL/DINO teachers).

    Example:
        >>> ema = momentum_copy(nn.Linear(2, 2))
        >>> any(p.requires_grad for p in ema.parameters())
        False
    """
    ema = copy.deepcopy(module)
    for param in ema.parameters():
        param.requires_grad = False
    return ema


def resolve(value, small, large, image_size: int):
    """``value`` if the user set it, otherwise the small- or large-image default.

    Example:
        >>> resolve(None, 0.2, 0.08, 32), resolve(0.5, 0.2, 0.08, 32)
        (0.2, 0.5)
    """
    if value is not None:
        return value
    return small if is_small_image(image_size) else large


class Method(nn.Module, abc.ABC):
    """Base of the SSL methods: a backbone, heads, a multi-view ``transform`` and a loss.

    Subclasses set ``name``, build ``self.transform`` (PIL image -> list of view tensors) and implement
    ``training_loss(views)``. Momentum teachers are updated in ``on_step_end`` (after the optimizer step).
    ``self.backbone`` is the network that is trained and exported.

    Example:
        >>> class Identity(Method):
        ...     name = "identity"
        ...     def training_loss(self, views):
        ...         return self.backbone(views[0]).pow(2).mean()
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> m = Identity(net, image_size=16)
        >>> m.feature_dim, len(m.trainable_parameters())
        (4, 2)
    """

    name: ClassVar[str] = "method"
    # Defaults tuned for short runs on small data with AdamW (see docs/ssl.md); SSLModule reads them.
    default_lr: ClassVar[float] = 1e-3
    default_weight_decay: ClassVar[float] = 1e-4
    # Submodules the caller builds and passes in frozen (a distillation teacher): rebuilt on resume from the same
    # spec and weights, so checkpoints leave them out (SSLModule keeps a fingerprint instead).
    external_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbone: nn.Module, image_size: int = 64) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise ValueError(
                f"backbone must be an nn.Module (e.g. warmstart.core.backbones.build_backbone('torchvision/resnet18'))"
                f", got {type(backbone).__name__}"
            )
        self.image_size = check_image_size(image_size)
        self.backbone = backbone
        self.feature_dim = feature_dim_of(backbone, self.image_size)
        # The input statistics of the backbone's own framework (ImageNet mean/std; none for Ultralytics): the
        # views use them so the exported weights meet the same inputs when the user fine-tunes natively.
        self.normalize = getattr(backbone, "normalize", IMAGENET_NORMALIZE)
        # Subclasses replace this with their lightly multi-view transform (PIL image -> list of tensors).
        self.transform: Callable | None = None
        # One ViewSpec per view (plain data, core/ssl/views.py): the PIL transform and the batched on-device views
        # (warmstart.pretraining.batched_views) are both built from it. Empty: only the PIL transform is known.
        self.view_specs: list = []

    @abc.abstractmethod
    def training_loss(self, views: Sequence[Tensor]) -> Tensor:
        """The loss of one batch; ``views`` is a list of (B, 3, H, W) tensors, one per augmented view."""

    def on_step_end(self, step: int, max_steps: int) -> None:
        """Called after each optimizer step (momentum updates); ``step`` counts finished steps."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer should update (momentum copies and frozen teachers excluded)."""
        return [p for _, p in self.named_trainable_parameters()]

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs of ``trainable_parameters``, names relative to the method."""
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, image_size={self.image_size}, feature_dim={self.feature_dim}"


def concat_forward(net: Callable[[Tensor], Tensor], views: Sequence[Tensor]) -> list[Tensor]:
    """Run ``net`` once per distinct view resolution (faster than one call per view) and split back.

    Example:
        >>> outs = concat_forward(lambda x: x.mean((1, 2, 3))[:, None], [torch.ones(2, 3, 4, 4)] * 2)
        >>> [o.shape for o in outs]
        [torch.Size([2, 1]), torch.Size([2, 1])]
    """
    outs: list[Tensor | None] = [None] * len(views)
    start = 0
    while start < len(views):
        end = start
        while end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
            end += 1
        chunk = net(torch.cat(list(views[start:end])))
        for i, part in enumerate(chunk.chunk(end - start)):
            outs[start + i] = part
        start = end
    return outs  # type: ignore[return-value]


def cosine_momentum(step: int, max_steps: int, start: float, end: float) -> float:
    """EMA momentum at ``step`` of ``max_steps``: lightly's cosine schedule from ``start`` to ``end``.

    Example:
        >>> cosine_momentum(0, 100, 0.99, 1.0), cosine_momentum(100, 100, 0.99, 1.0)
        (0.99, 1.0)
    """
    from ..._optional import require

    scheduler = require("lightly.utils.scheduler", "ssl")
    return float(scheduler.cosine_schedule(min(step, max_steps), max(max_steps, 1), start, end))


def knn_accuracy(features: Tensor, labels: Tensor, k: int = 20, temperature: float = 0.07) -> float:
    """Leave-one-out weighted kNN accuracy on L2-normalized features (the standard SSL monitor).

    Each sample is classified by its ``k`` most cosine-similar *other* samples, votes weighted by
    ``exp(similarity / temperature)`` (as in InstDisc / DINO's kNN eval).

    Example:
        >>> feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> knn_accuracy(feats, torch.tensor([0, 0, 1, 1]), k=1)
        1.0
    """
    n = features.shape[0]
    if n < 2:
        raise ValueError("kNN accuracy needs at least 2 labeled samples")
    feats = nn.functional.normalize(features.float(), dim=1)
    labels = labels.long()
    k = max(1, min(int(k), n - 1))
    num_classes = int(labels.max()) + 1
    correct = 0
    for start in range(0, n, 1024):  # chunks keep the similarity matrix small for large validation sets
        sims = feats[start:start + 1024] @ feats.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -float("inf")  # leave the query itself out
        top_sims, top_idx = sims.topk(k, dim=1)
        votes = torch.zeros(sims.shape[0], num_classes)
        votes.scatter_add_(1, labels[top_idx], (top_sims / temperature).exp())
        correct += int((votes.argmax(1) == labels[start:start + sims.shape[0]]).sum())
    return correct / n
