"""``exported/yolo.pt``: the whole Ultralytics model with the pretrained backbone in place, for plain Ultralytics.

``backbone.safetensors`` holds only the backbone layers (``model.0`` .. ``model.N``); to use them, a user has to
build the model and load them. ``yolo.pt`` removes that step: ``YOLO("exported/yolo.pt")`` and
``yolo train model=exported/yolo.pt data=...`` work with no warmstart installed (ARCHITECTURE.md rule 6).

The file is Ultralytics' own checkpoint format (what ``strip_optimizer`` leaves of a ``best.pt``: a dict with the
pickled model under ``"model"``, ``"train_args"``, version and date), so Ultralytics' loader and trainer treat it
like any other weights file: training from it transfers every tensor whose shape fits the dataset (the backbone
and neck always; the head's class convolutions are rebuilt for the dataset's ``nc``). The model is built from the
same yaml the backbone was pretrained from; its backbone gets exactly the tensors of ``backbone.safetensors``,
the neck and head keep their initialisation (pretraining never trained them). Weights stay float32: Ultralytics
halves its own checkpoints, which would round the pretrained tensors (the file is twice the size, once).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from .._optional import require
from ..core.backbones import Backbone
from ..core.checkpoints import atomic_write, load_backbone_weights, read_weights

YOLO_FILE = "yolo.pt"
_INIT_SEED = 0  # the neck/head initialisation: the same for every export of the same yaml


def export_yolo(backbone: Backbone, out_dir: str | Path, weights: str | Path | None = None) -> Path:
    """Write ``out_dir/yolo.pt``: the Ultralytics model of ``backbone``'s yaml with its backbone weights loaded.

    ``weights`` is the backbone export to put in place (default ``out_dir/backbone.safetensors``, written by
    ``export_backbone``, so the file holds exactly the exported tensors). The backbone must come from an
    Ultralytics yaml (``"ultralytics/yolov8n.yaml"``); its input channels are kept.

    Example:
        >>> import tempfile
        >>> from warmstart.core.backbones import build_backbone
        >>> from warmstart.core.checkpoints import export_backbone
        >>> bb, out = build_backbone("ultralytics/yolov8n.yaml", image_size=32), tempfile.mkdtemp()
        >>> _ = export_backbone(bb, out)
        >>> export_yolo(bb, out).name
        'yolo.pt'
    """
    require("ultralytics", "yolo")
    if not isinstance(backbone, Backbone) or backbone.family != "ultralytics":
        raise ValueError("export_yolo needs an Ultralytics backbone (built from 'ultralytics/<name>.yaml'), got "
                         f"{getattr(backbone, 'family', type(backbone).__name__)!r}")
    yaml = backbone.info.get("yaml")
    if not yaml:
        raise ValueError("this Ultralytics backbone records no model yaml, so the whole model cannot be rebuilt; "
                         "pretrain from a spec like 'ultralytics/yolov8n.yaml' to get exported/yolo.pt")
    out = Path(out_dir)
    source = Path(weights) if weights is not None else out / "backbone.safetensors"
    model, task = _build(str(yaml), _in_channels(backbone))
    load_backbone_weights(model, read_weights(source))  # complete or raises; only neck/head keep their init
    ckpt = _checkpoint(model, task, str(yaml), source)
    return atomic_write(out / YOLO_FILE, lambda tmp: torch.save(ckpt, tmp))


def _build(yaml: str, channels: int) -> tuple[nn.Module, str]:
    """The Ultralytics model class the yaml's task uses, as ``YOLO(yaml)`` would build it."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn import tasks

    cfg = tasks.yaml_model_load(yaml)
    cfg["channels"] = channels
    task = tasks.guess_model_task(cfg)
    classes = {"detect": tasks.DetectionModel, "segment": tasks.SegmentationModel, "pose": tasks.PoseModel,
               "classify": tasks.ClassificationModel, "obb": tasks.OBBModel}
    if task not in classes:
        raise ValueError(f"{yaml} is a {task!r} model; exported/yolo.pt supports {', '.join(classes)} models")
    with torch.random.fork_rng():  # a fixed head init that leaves the caller's RNG alone
        torch.manual_seed(_INIT_SEED)
        model = classes[task](cfg, ch=channels, verbose=False)
    # What YOLO(yaml) attaches, so predict/val/export from the file find their defaults.
    model.args = {**DEFAULT_CFG_DICT, "model": yaml, "task": task}
    model.task = task
    return model, task


def _checkpoint(model: nn.Module, task: str, yaml: str, source: Path) -> dict:
    from ultralytics import __version__

    return {
        "date": datetime.now(timezone.utc).isoformat(),
        "version": __version__,
        "epoch": -1,  # like a finished, stripped checkpoint: training from it starts a new run, never resumes
        "best_fitness": None,
        "model": model.float().eval(),
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": {"model": yaml, "task": task},
        "train_metrics": None,
        "warmstart": {"pretrained_backbone": source.name, "yaml": yaml},
    }


def _in_channels(backbone: Backbone) -> int:
    first = next((m for m in backbone.model.modules() if isinstance(m, nn.Conv2d)), None)
    return int(first.in_channels) if first is not None else 3


__all__ = ["YOLO_FILE", "export_yolo"]
