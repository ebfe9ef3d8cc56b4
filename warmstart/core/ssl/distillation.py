"""Distillation: a frozen teacher backbone (the user's own weights) taught to a student via a projection head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import Method, feature_dim_of, resolve
from .views import SIMCLR_JITTER, jitter_view, pil_views

LOSSES = ("cosine", "mse")


class Distillation(Method):
    """Feature distillation from a frozen teacher into any student backbone.

    Both networks see the same augmented view; the student's pooled features go through a small MLP to the
    teacher's feature size and are pulled towards the teacher's features (``loss="cosine"``: 1 - cosine similarity;
    ``"mse"``: squared error of the L2-normalized features). The teacher stays frozen and in eval mode (its
    BatchNorm statistics are never updated). Unlike SimCLR/BYOL/DINO this transfers *real* knowledge, so it gives a
    gain even on short CPU budgets when the teacher is good.

    Args:
        backbone: the student.
        teacher: a module returning (B, D_teacher) features, weights already loaded (``pretrain`` loads
            ``teacher_weights`` with ``load_backbone_weights``).
        teacher_image_size: resize views to this size for the teacher (e.g. a 224 px ViT teaching a 64 px CNN).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> teacher = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> m = Distillation(net, image_size=16, teacher=teacher)
        >>> loss = m.training_loss([torch.randn(4, 3, 16, 16)])
        >>> 0.0 <= loss.item() <= 2.0, any(p.requires_grad for p in m.teacher.parameters())
        (True, False)
    """

    name = "distillation"
    default_lr = 1e-3
    default_weight_decay = 1e-4

    def __init__(self, backbone: nn.Module, image_size: int = 64, *, teacher: nn.Module | None = None,
                 teacher_image_size: int | None = None, hidden_dim: int | None = None, loss: str = "cosine",
                 min_scale: float | None = None, cj_strength: float | None = None,
                 gaussian_blur: float | None = None) -> None:
        super().__init__(backbone, image_size)
        if not isinstance(teacher, nn.Module):
            raise ValueError(
                "method 'distillation' needs a teacher: pass teacher=<model spec or nn.Module> and "
                "teacher_weights=<path to its trained weights> (e.g. --teacher torchvision/resnet50 "
                "--teacher-weights resnet50.safetensors)"
            )
        if loss not in LOSSES:
            raise ValueError(f"unknown distillation loss {loss!r}; valid: {', '.join(LOSSES)}")
        self.loss = loss
        self.teacher_image_size = teacher_image_size
        self.teacher = teacher
        for param in self.teacher.parameters():
            param.requires_grad = False
        self.teacher.eval()
        self.teacher_dim = feature_dim_of(teacher, teacher_image_size or self.image_size)
        hidden = hidden_dim or max(self.feature_dim, self.teacher_dim)
        self.projection_head = nn.Sequential(
            nn.Linear(self.feature_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, self.teacher_dim),
        )
        size = self.image_size
        # One view (lightly's SimCLRViewTransform) that student and teacher both see.
        self.view_specs = [jitter_view(size, resolve(min_scale, 0.3, 0.14, size), resolve(cj_strength, 0.5, 0.5, size),
                                       SIMCLR_JITTER, blur_prob=resolve(gaussian_blur, 0.0, 0.5, size))]
        self.transform = pil_views(self.view_specs, self.normalize)

    def train(self, mode: bool = True) -> Distillation:
        """Train the student; the teacher always stays in eval mode (frozen BatchNorm / dropout off)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_features(self, x: Tensor) -> Tensor:
        """The frozen teacher's features of a batch (resized to ``teacher_image_size`` if set)."""
        if self.teacher_image_size and x.shape[-1] != self.teacher_image_size:
            x = F.interpolate(x, size=self.teacher_image_size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            return self.teacher(x).float()

    def training_loss(self, views: Sequence[Tensor]) -> Tensor:
        """Distance between projected student features and teacher features on the first view."""
        x = views[0]
        target = F.normalize(self.teacher_features(x), dim=1)
        pred = F.normalize(self.projection_head(self.backbone(x)).float(), dim=1)
        if self.loss == "mse":
            return (pred - target).pow(2).sum(dim=1).mean()
        return (1.0 - (pred * target).sum(dim=1)).mean()
