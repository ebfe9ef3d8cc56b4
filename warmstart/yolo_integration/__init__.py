"""Ultralytics YOLO front end: ``wrap(YOLO(...), ...)`` gives ``.train()`` pretrained backbones, freezing schedules,
layer-wise LR and LoRA: one :class:`~warmstart.core.plan.FinetunePlan`, applied by ``warmstart.core``'s
``FinetuneController`` at Ultralytics' hooks.

Importing this package needs Ultralytics (``pip install 'warmstart[yolo]'``).

Example:
    >>> from ultralytics import YOLO
    >>> from warmstart.yolo_integration import wrap
    >>> model = wrap(YOLO("yolov8n.yaml", verbose=False), plan={"at": {"neck": 1, "backbone": 2}, "layer_decay": 0.8})
    >>> model.warmstart.plan
    {'at': {'neck': 1, 'backbone': 2}, 'layer_decay': 0.8}
"""

from typing import Any

from .._deprecated import warn_moved
from .._optional import require

require("ultralytics")

from .config import YoloWarmstartConfig, make_config, plan_from_kwargs  # noqa: E402
from .lora_merge import clean_copy  # noqa: E402
from .offline import offline_guard  # noqa: E402
from .trainer import (  # noqa: E402
    TRAINERS,
    WarmstartClassificationTrainer,
    WarmstartDetectionTrainer,
    WarmstartOBBTrainer,
    WarmstartPoseTrainer,
    WarmstartSegmentationTrainer,
    WarmstartTrainerMixin,
    config_of,
)
from .wrap import is_wrapped, wrap  # noqa: E402

__all__ = [
    "TRAINERS", "WarmstartClassificationTrainer", "WarmstartDetectionTrainer", "WarmstartOBBTrainer",
    "WarmstartPoseTrainer", "WarmstartSegmentationTrainer", "WarmstartTrainerMixin", "YoloWarmstartConfig",
    "clean_copy", "config_of", "is_wrapped", "make_config", "offline_guard", "plan_from_kwargs", "wrap",
]


def __getattr__(name: str) -> Any:
    # The synthetic shapes dataset is a test/demo fixture: it moved to warmstart.testing (deprecated here).
    if name == "make_shapes_dataset":
        warn_moved(f"{__name__}.{name}", f"warmstart.testing.{name}")
        from ..testing import make_shapes_dataset

        return make_shapes_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
