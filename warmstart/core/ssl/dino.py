"""DINO: a student matches a momentum teacher's centered, sharpened distribution across global and local crops."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..._optional import require
from .common import Method, concat_forward, cosine_momentum, momentum_copy, resolve
from .views import DINO_JITTER, jitter_view, pil_views


class DINO(Method):
    """DINO (Caron et al., 2021) with lightly's head, loss and multi-crop transform.

    Defaults are scaled for CPU runs: a 2048-way output (not 65536), 2 local crops below 96 px (6 above), local
    crops at ~3/7 of the image side (96/224 as in the paper, at least 16 px), no blur or solarization for small
    images, and teacher momentum 0.99 -> 1 so the teacher moves within a few hundred steps.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> m = DINO(net, image_size=32, hidden_dim=32, bottleneck_dim=16, output_dim=64)
        >>> views = [torch.randn(4, 3, 32, 32)] * 2 + [torch.randn(4, 3, 16, 16)] * 2
        >>> m.training_loss(views).item() > 0
        True
    """

    name = "dino"
    default_lr = 5e-4
    default_weight_decay = 0.04

    def __init__(self, backbone: nn.Module, image_size: int = 64, *, hidden_dim: int = 1024,
                 bottleneck_dim: int = 256, output_dim: int = 2048, teacher_temp: float = 0.04,
                 student_temp: float = 0.1, center_momentum: float = 0.9, momentum_start: float = 0.99,
                 momentum_end: float = 1.0, n_local_views: int | None = None, local_crop_size: int | None = None,
                 global_crop_scale: tuple[float, float] = (0.4, 1.0),
                 local_crop_scale: tuple[float, float] | None = None, gaussian_blur: float | None = None,
                 solarization_prob: float | None = None, batch_norm: bool = False) -> None:
        super().__init__(backbone, image_size)
        heads = require("lightly.models.modules", "ssl")
        loss = require("lightly.loss", "ssl")
        size = self.image_size
        self.momentum_start, self.momentum_end, self.teacher_temp = momentum_start, momentum_end, teacher_temp
        self.student_head = heads.DINOProjectionHead(self.feature_dim, hidden_dim, bottleneck_dim, output_dim,
                                                       batch_norm=batch_norm)
        self.teacher_backbone = momentum_copy(self.backbone)
        # The head's weight-normalized last layer cannot be deep-copied: build a twin and copy the weights.
        self.teacher_head = heads.DINOProjectionHead(self.feature_dim, hidden_dim, bottleneck_dim, output_dim,
                                                       batch_norm=batch_norm)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        for param in self.teacher_head.parameters():
            param.requires_grad = False
        # The center is a buffer of the loss module, so it is saved in checkpoints and restored on resume.
        self.criterion = loss.DINOLoss(output_dim=output_dim, warmup_teacher_temp=teacher_temp,
                                       teacher_temp=teacher_temp, student_temp=student_temp,
                                       center_momentum=center_momentum)
        blur = resolve(gaussian_blur, 0.0, None, size)
        blurs = (1.0, 0.1, 0.5) if blur is None else (blur, blur, blur)
        # lightly's DINOTransform: 2 global views (blurred; rarely blurred + solarized) and n local crops (bicubic).
        glob = jitter_view(size, 0.0, 0.5, DINO_JITTER, interpolation="bicubic").with_(scale=tuple(global_crop_scale))
        local = glob.with_(size=local_crop_size or max(16, round(size * 96 / 224)),
                           scale=tuple(resolve(local_crop_scale, (0.1, 0.4), (0.05, 0.4), size)), blur_prob=blurs[2])
        self.view_specs = [glob.with_(blur_prob=blurs[0]),
                           glob.with_(blur_prob=blurs[1], solarize_prob=resolve(solarization_prob, 0.0, 0.2, size)),
                           *[local] * resolve(n_local_views, 2, 6, size)]
        self.transform = pil_views(self.view_specs, self.normalize)

    def training_loss(self, views: Sequence[Tensor]) -> Tensor:
        """Cross-entropy between teacher outputs on the 2 global views and student outputs on all views."""
        with torch.no_grad():
            teacher_out = concat_forward(lambda x: self.teacher_head(self.teacher_backbone(x)), views[:2])
        student_out = concat_forward(lambda x: self.student_head(self.backbone(x)), views)
        return self.criterion(teacher_out, student_out, teacher_temp=self.teacher_temp)

    def momentum(self, step: int, max_steps: int) -> float:
        """The teacher EMA momentum at ``step`` of ``max_steps`` (cosine from momentum_start to momentum_end)."""
        return cosine_momentum(step, max_steps, self.momentum_start, self.momentum_end)

    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA update of the teacher backbone and head after the optimizer step."""
        utils = require("lightly.models.utils", "ssl")
        m = self.momentum(step, max_steps)
        utils.update_momentum(self.backbone, self.teacher_backbone, m)
        utils.update_momentum(self.student_head, self.teacher_head, m)
