"""Distillation: a frozen teacher backbone (trained weights) taught to a student via projection heads.

Pooled features (an MLP to the teacher's feature size) and/or spatial feature maps (a 1x1 conv to the teacher's
channels, resized to the teacher's map size, compared per location). lightly has no feature-map distillation
loss, so that part is written here.

Non-RGB students (``channels=N``: X-ray, depth, multi-band) with an RGB teacher: the teacher sees one gray image
per view, the mean over the bands of the student's view, in each of its three inputs (:func:`gray_for_teacher`).
That is exactly what the teacher's first conv would compute with its filters averaged over R, G, B and spread over
N inputs (``warmstart.core.channels.adapt_first_conv``), up to the small offsets between the teacher's per-channel
normalisation constants, without touching the teacher. The student's views are standardised per band with the
data's own statistics, so the gray image is placed at ImageNet's average pixel mean and spread (``GRAY_PIXELS``):
an X-ray's narrow 16-bit range reaches the teacher with the contrast of a photo, not as a near-constant gray. A
teacher built for N inputs itself gets the student's views, re-normalised only when it carries N-channel
statistics of its own. The channel counts are the ones a :class:`~warmstart.core.backbones.Backbone` declares
(``in_channels``); any other module counts as RGB (some stems start with a space-to-depth step, so the first
conv's input count is not the image's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import IMAGENET_NORMALIZE, declared_channels
from .common import Method, feature_dim_of, resolve
from .views import SIMCLR_JITTER, jitter_view, pil_views

LOSSES = ("cosine", "mse")
FEATURES = ("pooled", "spatial", "both")
# ImageNet's RGB mean and std averaged over the channels: where a standardised band lands as a gray pixel
GRAY_PIXELS = {"mean": [0.449] * 3, "std": [0.226] * 3}


def gray_for_teacher(views: Tensor, normalize: dict | None) -> tuple[Tensor, dict | None]:
    """N-band student views -> ``(3-channel gray views, the statistics they are normalised with)`` for an RGB
    teacher: the mean over the bands, repeated in R, G and B.

    Views standardised with per-band statistics (``normalize`` set) come back standardised with ``GRAY_PIXELS``;
    un-normalised views (``normalize`` None: pixel values) come back as pixel values.

    Example:
        >>> x = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 2.0)])[None]  # one 2-band view
        >>> gray, stats = gray_for_teacher(x, {"mean": [0.1, 0.2], "std": [1.0, 1.0]})
        >>> tuple(gray.shape), gray.unique().tolist(), stats == GRAY_PIXELS
        ((1, 3, 2, 2), [1.0], True)
    """
    gray = views.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return gray, (GRAY_PIXELS if normalize is not None else None)


def _stats_for(channels: int, normalize: dict | None) -> bool:
    """Whether ``normalize`` holds one mean/std per channel of a ``channels``-channel input."""
    return normalize is not None and len(normalize.get("mean", ())) == channels


def _is_global_pool(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) or (
        "Pool" in name and ("Adaptive" in name or "Global" in name))


def features_and_map(net: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """One forward: the pooled ``(B, D)`` features and the last ``(B, C, H, W)`` feature map before pooling.

    The map is the last of: the input of a global pooling module (torchvision, timm, HF ResNet) and the 4-D output
    of any other submodule (models that pool with ``.mean`` in code), where 1x1 outputs after a global pool
    (squeeze-excitation gates, a norm on pooled features) do not count. If token sequences (3-D outputs, a ViT)
    come after it, there is no spatial map and the second value is ``None``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> pooled, fmap = features_and_map(net, torch.randn(2, 3, 16, 16))
        >>> tuple(pooled.shape), tuple(fmap.shape)
        ((2, 8), (2, 8, 14, 14))
        >>> features_and_map(nn.Sequential(nn.Flatten(), nn.Linear(48, 4)), torch.randn(2, 3, 4, 4))[1] is None
        True
    """
    seen: dict[str, Any] = {"map": None, "pooled_once": False, "tokens_after": False}

    def pre_hook(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor) and args[0].ndim == 4:
            seen.update(map=args[0], pooled_once=True, tokens_after=False)

    def hook(module: nn.Module, args: tuple, out: Any) -> None:
        if not isinstance(out, Tensor):
            return
        if out.ndim == 4 and not (seen["pooled_once"] and out.shape[-2:] == (1, 1)):
            seen.update(map=out, tokens_after=False)
        elif out.ndim == 3 and seen["map"] is not None:
            seen["tokens_after"] = True

    pools = [m for m in net.modules() if _is_global_pool(m)]
    inside_pools = {id(sub) for pool in pools for sub in pool.modules()}
    handles = [pool.register_forward_pre_hook(pre_hook) for pool in pools]
    handles += [m.register_forward_hook(hook) for m in net.modules() if m is not net and id(m) not in inside_pools]
    try:
        pooled = net(x)
    finally:
        for handle in handles:
            handle.remove()
    return pooled, None if seen["tokens_after"] else seen["map"]


def _renormalize(x: Tensor, source: dict | None, target: dict | None) -> Tensor:
    """Views normalised with ``source`` statistics -> the same pixels normalised with ``target``'s."""
    if source == target:
        return x
    if source is not None:
        x = x * x.new_tensor(source["std"])[:, None, None] + x.new_tensor(source["mean"])[:, None, None]
    if target is not None:
        x = (x - x.new_tensor(target["mean"])[:, None, None]) / x.new_tensor(target["std"])[:, None, None]
    return x


class Distillation(Method):
    """Feature distillation from a frozen teacher into any student backbone.

    Both networks see the same augmented view (re-normalised for the teacher when its ``normalize`` statistics
    differ from the student's). ``features="pooled"`` (default): the student's pooled features go through a small
    MLP to the teacher's feature size and are pulled towards the teacher's features (``loss="cosine"``: 1 - cosine
    similarity; ``"mse"``: squared error of the L2-normalized features). ``"spatial"``: the student's last feature
    map goes through a 1x1 conv to the teacher's channels, is resized (bilinear) to the teacher's map size and
    matched per location with the same loss, averaged over locations. ``"both"``: the sum of the two. Spatial
    distillation needs CNN-like maps on both sides (a ViT's tokens are refused). The teacher stays frozen and in
    eval mode (its BatchNorm statistics are never updated). Unlike SimCLR/BYOL/DINO this transfers *real*
    knowledge, so it gives a gain even on short CPU budgets when the teacher is good.

    Args:
        backbone: the student.
        teacher: a module returning (B, D_teacher) features, weights already loaded (``pretrain`` loads
            ``teacher_weights`` with ``load_backbone_weights``).
        teacher_image_size: resize views to this size for the teacher (e.g. a 224 px ViT teaching a 64 px CNN).
        features: ``"pooled"``, ``"spatial"`` or ``"both"``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> teacher = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> m = Distillation(net, image_size=16, teacher=teacher)
        >>> loss = m.training_loss([torch.randn(4, 3, 16, 16)])
        >>> 0.0 <= loss.item() <= 2.0, any(p.requires_grad for p in m.teacher.parameters())
        (True, False)
        >>> spatial = Distillation(net, image_size=16, teacher=teacher, features="spatial")
        >>> spatial.spatial_head, 0.0 <= spatial.training_loss([torch.randn(4, 3, 16, 16)]).item() <= 2.0
        (Conv2d(8, 6, kernel_size=(1, 1), stride=(1, 1)), True)
    """

    name = "distillation"
    default_lr = 1e-3
    default_weight_decay = 1e-4
    external_modules = ("teacher",)

    def __init__(self, backbone: nn.Module, image_size: int = 64, *, teacher: nn.Module | None = None,
                 teacher_image_size: int | None = None, hidden_dim: int | None = None, loss: str = "cosine",
                 min_scale: float | None = None, cj_strength: float | None = None,
                 gaussian_blur: float | None = None, features: str = "pooled") -> None:
        super().__init__(backbone, image_size)
        if not isinstance(teacher, nn.Module):
            raise ValueError(
                "method 'distillation' needs a teacher: pass teacher=<model spec or nn.Module> and "
                "teacher_weights=<path to its trained weights> (e.g. --teacher torchvision/resnet50 "
                "--teacher-weights resnet50.safetensors)"
            )
        if loss not in LOSSES:
            raise ValueError(f"unknown distillation loss {loss!r}; valid: {', '.join(LOSSES)}")
        if features not in FEATURES:
            raise ValueError(f"unknown distillation features {features!r}; valid: {', '.join(FEATURES)}")
        self.loss = loss
        self.features = features
        self.teacher_image_size = teacher_image_size
        self.teacher = teacher
        self.teacher_normalize = getattr(teacher, "normalize", IMAGENET_NORMALIZE)
        self.student_channels = declared_channels(backbone)
        self.teacher_channels = declared_channels(teacher)
        if self.teacher_channels not in (3, self.student_channels):
            raise ValueError(
                f"the teacher takes {self.teacher_channels} input channels and the student "
                f"{self.student_channels}: pass an RGB teacher (it then sees the bands' mean as a gray image) or "
                f"one built for {self.student_channels} channels")
        for param in self.teacher.parameters():
            param.requires_grad = False
        self.teacher.eval()
        name = getattr(teacher, "spec", None) or type(teacher).__name__
        try:
            self.teacher_dim = feature_dim_of(teacher, teacher_image_size or self.image_size)
        except Exception as err:
            raise ValueError(f"the teacher {name!r} gives no pooled features to project onto: {err}") from err
        if self.teacher_dim <= 0:
            raise ValueError(f"the teacher {name!r} has feature size {self.teacher_dim}: nothing to project onto")
        self.spatial_head: nn.Module | None = None
        if features != "pooled":
            self.spatial_head = self._build_spatial_head(name)
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

    @torch.no_grad()
    def _build_spatial_head(self, name: str) -> nn.Conv2d:
        """The 1x1 conv from the student's map channels to the teacher's (one dummy forward of each, eval mode)."""
        maps = {}
        for role, net, size in (("student", self.backbone, self.image_size),
                                ("teacher", self.teacher, self.teacher_image_size or self.image_size)):
            was_training = net.training
            net.eval()
            try:
                param = next(net.parameters(), None)
                device = param.device if param is not None else torch.device("cpu")
                channels = self.student_channels if role == "student" else self.teacher_channels
                maps[role] = features_and_map(net, torch.zeros(2, channels, size, size, device=device))[1]
            finally:
                net.train(was_training)
            if maps[role] is None:
                who = name if role == "teacher" else (getattr(net, "spec", None) or type(net).__name__)
                raise ValueError(
                    f"features={self.features!r} needs a spatial feature map, but the {role} {who!r} has none "
                    "(no (B, C, H, W) map before its pooling, e.g. a ViT or an MLP); use features='pooled'"
                )
        return nn.Conv2d(maps["student"].shape[1], maps["teacher"].shape[1], kernel_size=1)

    def train(self, mode: bool = True) -> Distillation:
        """Train the student; the teacher always stays in eval mode (frozen BatchNorm / dropout off)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def _teacher_input(self, x: Tensor) -> Tensor:
        source, target = self.normalize, self.teacher_normalize
        if x.shape[1] != self.teacher_channels:  # N-band views, RGB teacher: see the module docstring
            x, source = gray_for_teacher(x, self.normalize)
        elif self.teacher_channels != 3 and not (_stats_for(x.shape[1], source) and _stats_for(x.shape[1], target)):
            source = target = None  # an N-channel teacher without N-channel statistics: the views as they are
        x = _renormalize(x, source, target)
        if self.teacher_image_size and x.shape[-1] != self.teacher_image_size:
            x = F.interpolate(x, size=self.teacher_image_size, mode="bilinear", align_corners=False)
        return x

    def teacher_features(self, x: Tensor) -> Tensor:
        """The frozen teacher's pooled features of a batch of student views (re-normalised, resized if set)."""
        with torch.no_grad():
            return self.teacher(self._teacher_input(x)).float()

    def _distance(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-row loss between (N, D) predictions and targets, both L2-normalised here."""
        pred, target = F.normalize(pred.float(), dim=1), F.normalize(target.float(), dim=1)
        if self.loss == "mse":
            return (pred - target).pow(2).sum(dim=1).mean()
        return (1.0 - (pred * target).sum(dim=1)).mean()

    def training_loss(self, views: Sequence[Tensor]) -> Tensor:
        """Distance between projected student features and teacher features on the first view."""
        x = views[0]
        if self.spatial_head is None:
            return self._distance(self.projection_head(self.backbone(x)), self.teacher_features(x))
        with torch.no_grad():
            t_pooled, t_map = features_and_map(self.teacher, self._teacher_input(x))
        s_pooled, s_map = features_and_map(self.backbone, x)
        if s_map is None or t_map is None:
            raise ValueError("spatial distillation: a network stopped producing a spatial feature map")
        s_map = self.spatial_head(s_map)
        if s_map.shape[-2:] != t_map.shape[-2:]:
            s_map = F.interpolate(s_map, size=t_map.shape[-2:], mode="bilinear", align_corners=False)
        channels = t_map.shape[1]
        loss = self._distance(s_map.permute(0, 2, 3, 1).reshape(-1, channels),
                              t_map.permute(0, 2, 3, 1).reshape(-1, channels))
        if self.features == "both":
            loss = loss + self._distance(self.projection_head(s_pooled), t_pooled)
        return loss
