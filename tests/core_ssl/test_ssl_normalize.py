"""SSL views and embeddings use the input statistics of the backbone's own framework."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from warmstart.core.backbones import IMAGENET_NORMALIZE, Backbone, build_backbone
from warmstart.core.ssl import get_method
from warmstart.pretraining.embedding import eval_transform


def test_yolo_views_are_unnormalized_pixels_like_ultralytics_training():
    pytest.importorskip("ultralytics")
    pytest.importorskip("lightly")
    backbone = build_backbone("ultralytics/yolov8n.yaml", image_size=32)
    assert backbone.normalize is None
    image = Image.new("RGB", (40, 40), (255, 255, 255))
    for name in ("simclr", "byol", "dino"):
        views = get_method(name, backbone, 32).transform(image)
        assert all(v.min() >= 0 and v.max() <= 1 for v in views), name  # pixels / 255, as Ultralytics feeds
    assert eval_transform(32, backbone.normalize)(image).max() == 1.0


def test_other_families_get_imagenet_statistics():
    pytest.importorskip("lightly")
    backbone = Backbone(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(1)), image_size=8)
    assert backbone.normalize == IMAGENET_NORMALIZE
    white = get_method("simclr", backbone, 8).transform(Image.new("RGB", (8, 8), (255, 255, 255)))[0]
    assert white.max() > 2  # (1 - 0.485) / 0.229: normalized
