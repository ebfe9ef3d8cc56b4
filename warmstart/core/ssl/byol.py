"""BYOL: online network + predictor regress a momentum (EMA) teacher's projection of the other view."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..._optional import require
from .common import Method, concat_forward, cosine_momentum, momentum_copy, resolve
from .views import BYOL_JITTER, jitter_view, pil_views


class BYOL(Method):
    """BYOL (Grill et al., 2020) with lightly's heads, loss and momentum helpers.

    The teacher is an EMA of the online backbone + projection head; its momentum follows a cosine schedule from
    ``momentum_start`` to ``momentum_end`` over the run (0.99 rather than the paper's 0.996 start, because CPU runs
    are a few hundred steps and a slower teacher would barely move). Small images get milder augmentations.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> m = BYOL(net, image_size=16, hidden_dim=32, output_dim=16)
        >>> loss = m.training_loss([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])
        >>> m.on_step_end(1, 10)
        >>> -1.0 <= loss.item() <= 1.0
        True
    """

    name = "byol"
    default_lr = 1e-3
    default_weight_decay = 1e-4

    def __init__(self, backbone: nn.Module, image_size: int = 64, *, hidden_dim: int = 1024, output_dim: int = 256,
                 momentum_start: float = 0.99, momentum_end: float = 1.0, min_scale: float | None = None,
                 cj_strength: float | None = None, gaussian_blur: float | None = None,
                 solarization_prob: float | None = None) -> None:
        super().__init__(backbone, image_size)
        heads = require("lightly.models.modules", "ssl")
        loss = require("lightly.loss", "ssl")
        self.momentum_start, self.momentum_end = momentum_start, momentum_end
        self.projection_head = heads.BYOLProjectionHead(self.feature_dim, hidden_dim, output_dim)
        self.prediction_head = heads.BYOLPredictionHead(output_dim, hidden_dim, output_dim)
        self.backbone_momentum = momentum_copy(self.backbone)
        self.projection_head_momentum = momentum_copy(self.projection_head)
        self.criterion = loss.NegativeCosineSimilarity()
        size = self.image_size
        view = jitter_view(size, resolve(min_scale, 0.2, 0.08, size), resolve(cj_strength, 0.5, 1.0, size),
                           BYOL_JITTER)
        # BYOL's two views are asymmetric (always blurred vs rarely blurred + solarized); small images get no blur.
        self.view_specs = [
            view.with_(blur_prob=resolve(gaussian_blur, 0.0, 1.0, size)),
            view.with_(blur_prob=resolve(gaussian_blur, 0.0, 0.1, size),
                       solarize_prob=resolve(solarization_prob, 0.0, 0.2, size)),
        ]
        self.transform = pil_views(self.view_specs, self.normalize)

    def training_loss(self, views: Sequence[Tensor]) -> Tensor:
        """Symmetrized negative cosine similarity between online predictions and teacher projections."""
        z = concat_forward(lambda x: self.projection_head(self.backbone(x)), views[:2])
        p0, p1 = (self.prediction_head(zi) for zi in z)
        with torch.no_grad():
            t0, t1 = concat_forward(lambda x: self.projection_head_momentum(self.backbone_momentum(x)), views[:2])
        return 0.5 * (self.criterion(p0, t1.detach()) + self.criterion(p1, t0.detach()))

    def momentum(self, step: int, max_steps: int) -> float:
        """The teacher EMA momentum at ``step`` of ``max_steps`` (cosine from momentum_start to momentum_end)."""
        return cosine_momentum(step, max_steps, self.momentum_start, self.momentum_end)

    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA update of the teacher after the optimizer step."""
        utils = require("lightly.models.utils", "ssl")
        m = self.momentum(step, max_steps)
        utils.update_momentum(self.backbone, self.backbone_momentum, m)
        utils.update_momentum(self.projection_head, self.projection_head_momentum, m)
