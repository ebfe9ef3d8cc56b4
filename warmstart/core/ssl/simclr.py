"""SimCLR: two augmented views, a projection MLP and the NT-Xent contrastive loss (all from lightly)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..._optional import require
from .common import Method, concat_forward, resolve
from .views import SIMCLR_JITTER, jitter_view, pil_views


class SimCLR(Method):
    """SimCLR (Chen et al., 2020) over any backbone with pooled features.

    Small images (<= 96 px) get milder augmentations by default: crops down to 20% of the image instead of 8%,
    half-strength color jitter and no blur, because at 32 px the 224 px recipe leaves too little of the image.

    Args:
        backbone: module returning (B, D) features (``feature_dim`` attribute or inferred).
        image_size: side of the square training views.
        temperature: NT-Xent temperature (0.2 suits the small batches of CPU runs).
        hidden_dim / output_dim: projection MLP sizes (hidden defaults to the feature size).
        min_scale, cj_strength, gaussian_blur: augmentation strength; None = size-dependent default.
        gather_distributed: use the negatives of all DDP ranks.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> m = SimCLR(net, image_size=16)
        >>> m.training_loss([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)]).ndim
        0
    """

    name = "simclr"
    default_lr = 1e-3
    default_weight_decay = 1e-4

    def __init__(self, backbone: nn.Module, image_size: int = 64, *, temperature: float = 0.2,
                 hidden_dim: int | None = None, output_dim: int = 128, min_scale: float | None = None,
                 cj_strength: float | None = None, gaussian_blur: float | None = None,
                 gather_distributed: bool = True) -> None:
        super().__init__(backbone, image_size)
        heads = require("lightly.models.modules", "ssl")
        loss = require("lightly.loss", "ssl")
        hidden = hidden_dim or self.feature_dim
        self.projection_head = heads.SimCLRProjectionHead(self.feature_dim, hidden, output_dim)
        self.criterion = loss.NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)
        size = self.image_size
        # Two identical views (lightly's SimCLRTransform); the PIL and the batched path are built from these specs.
        view = jitter_view(size, resolve(min_scale, 0.2, 0.08, size), resolve(cj_strength, 0.5, 1.0, size),
                           SIMCLR_JITTER, blur_prob=resolve(gaussian_blur, 0.0, 0.5, size))
        self.view_specs = [view, view]
        self.transform = pil_views(self.view_specs, self.normalize)

    def training_loss(self, views: Sequence[Tensor]) -> Tensor:
        """NT-Xent between the projections of the first two views."""
        z0, z1 = concat_forward(lambda x: self.projection_head(self.backbone(x)), views[:2])
        return self.criterion(z0, z1)
