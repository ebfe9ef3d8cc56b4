"""The same hooks on another Ultralytics task: a classification YOLO trains with a frozen backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from yolo_helpers import Recorder

pytest.importorskip("ultralytics")


def _class_folder(root):
    """Two colour classes, 8 images each per split, in Ultralytics' classification layout (split/class/*.png)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, color in enumerate([(220, 40, 40), (40, 40, 220)]):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(8):
                img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
                img[8:24, 8:24] = color
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def test_yolo_classify_trains_only_the_head_with_frozen_backbone(tmp_path):
    from ultralytics import YOLO

    from warmstart.yolo_integration import wrap

    model = wrap(YOLO("yolov8n-cls.yaml", verbose=False), freeze="backbone")
    rec = Recorder().attach(model)
    model.train(data=str(_class_folder(tmp_path / "data")), epochs=1, imgsz=32, batch=4, workers=0, device="cpu",
                plots=False, amp=False, val=False, project=str(tmp_path / "runs"), name="cls", exist_ok=True,
                verbose=False, seed=0, nbs=4)  # nbs=batch: one optimizer step per batch in every 8.4.x
    last = rec.after_epoch[0]
    moved = {k.split(".")[1] for k, v in last.items()
             if v.is_floating_point() and "running" not in k and not torch.equal(v, rec.initial[k])}
    assert moved == {"9"}  # model.9 is the Classify head; model.0-8 are the frozen backbone
    assert all(b["trainable"] == ["model.9"] for b in rec.batches)
    assert not any(any(flags) for name, flags in rec.batches[-1]["bn_training"].items() if name != "model.9")
