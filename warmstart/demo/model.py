"""The demo's small CNN: stem -> stage1 -> stage2 -> pooled features -> head (a few tens of thousands of params)."""

from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DigitNet(nn.Module):
    """A VGG-style CNN for 16-32 px digits; ``num_classes=0`` makes it a backbone returning (B, 4*width) features.

    The top-level children (``stem``, ``stage1``, ``stage2``, ``head``) are its layer groups for freezing,
    gradual unfreezing and discriminative LR, and the backbone's keys equal the classifier's, so pretrained
    weights load into the classifier without renaming.

    Example:
        >>> net = DigitNet(width=8, num_classes=10)
        >>> tuple(net(torch.zeros(2, 3, 16, 16)).shape)
        (2, 10)
        >>> tuple(DigitNet(width=8, num_classes=0)(torch.zeros(2, 3, 16, 16)).shape)
        (2, 32)
    """

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.stem = _conv(3, width, 1)
        self.stage1 = nn.Sequential(_conv(width, 2 * width, 2), _conv(2 * width, 2 * width, 1))
        self.stage2 = nn.Sequential(_conv(2 * width, 4 * width, 2), _conv(4 * width, 4 * width, 1))
        self.feature_dim = 4 * width
        # BatchNorm before the linear layer puts the pooled features on a unit scale, so a new head learns at the
        # same pace on frozen pretrained features (probe, LoRA) as on features that train with it (scratch).
        self.head = (nn.Sequential(nn.BatchNorm1d(self.feature_dim), nn.Linear(self.feature_dim, num_classes))
                     if num_classes > 0 else nn.Identity())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled (B, feature_dim) features."""
        return self.stage2(self.stage1(self.stem(x))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
