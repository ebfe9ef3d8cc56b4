"""``warmstart pretrain --model ultralytics/<yaml>`` also writes ``exported/yolo.pt`` that plain Ultralytics uses.

The check runs in a process that cannot import warmstart: ``YOLO("exported/yolo.pt")`` loads, its backbone holds
exactly the exported tensors (and not a fresh init), its detect head is the yaml's initialisation, and a 1-epoch
``.train()`` on a small generated detection set starts from the pretrained backbone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ssl_helpers import digit_folder, one_thread  # noqa: F401 (one_thread: autouse fixture)

pytest.importorskip("ultralytics")

from warmstart.cli import main  # noqa: E402
from warmstart.testing import make_shapes_dataset  # noqa: E402

# Runs with warmstart (and peft) blocked: what a user without warmstart has.
CHECK = textwrap.dedent("""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("warmstart", "peft"):
                raise ImportError("blocked: " + name)

    sys.meta_path.insert(0, Block())
    import torch
    from safetensors.torch import load_file
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    export_dir, data = sys.argv[1], sys.argv[2]
    exported = load_file(export_dir + "/backbone.safetensors")
    yolo = YOLO(export_dir + "/yolo.pt")
    assert yolo.task == "detect", yolo.task
    state = yolo.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in exported.items()), "backbone differs from the export"
    torch.manual_seed(0)
    fresh = DetectionModel("yolov8n.yaml", verbose=False).state_dict()
    moved = [k for k, v in exported.items() if v.is_floating_point() and not torch.equal(fresh[k], v)]
    assert len(moved) > len(exported) // 2, f"only {len(moved)} backbone tensors differ from a fresh init"
    head = [k for k in state if k not in exported]
    assert head and all(torch.equal(state[k], fresh[k]) for k in head), "neck/head are not at their init"
    print("HEAD_AT_INIT", len(head))

    seen = {}

    def at_start(trainer):  # after Ultralytics rebuilt the model for the data's classes and loaded the file
        sd = trainer.model.state_dict()
        seen["same"] = all(torch.equal(sd[k].float(), v.float()) for k, v in exported.items())

    yolo.add_callback("on_train_start", at_start)
    yolo.train(data=data, epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False, amp=False,
               val=False, verbose=False, project=sys.argv[3], name="ft", exist_ok=True, seed=0)
    assert seen["same"], "training did not start from the pretrained backbone"
    print("TRAINED", yolo.trainer.epoch + 1, yolo.trainer.last.is_file())
""")


def test_pretrain_writes_yolo_pt_that_plain_ultralytics_loads_and_trains(tmp_path: Path, capsys) -> None:
    images = digit_folder(tmp_path / "unlabeled", 8)
    out = tmp_path / "run"
    code = main(["pretrain", "--data", str(images), "--model", "ultralytics/yolov8n.yaml", "--out", str(out),
                 "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--accelerator", "cpu",
                 "--devices", "1", "--num-workers", "0", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["exported"]["yolo"] == str(out / "exported" / "yolo.pt")
    manifest = json.loads((out / ".warmstart-manifest.json").read_text())["files"]
    assert "exported/yolo.pt" in manifest  # --overwrite removes it with the rest of the run

    data = make_shapes_dataset(tmp_path / "shapes", n_train=8, n_val=4, size=64)
    proc = subprocess.run([sys.executable, "-c", CHECK, str(out / "exported"), str(data), str(tmp_path / "runs")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAD_AT_INIT" in proc.stdout and "TRAINED 1 True" in proc.stdout, proc.stdout[-2000:]


def test_export_yolo_refuses_a_backbone_that_is_not_ultralytics(tmp_path: Path) -> None:
    from warmstart.core.backbones import build_backbone
    from warmstart.pretraining.yolo_export import export_yolo

    with pytest.raises(ValueError, match="needs an Ultralytics backbone"):
        export_yolo(build_backbone("torchvision/resnet18", image_size=32), tmp_path)
