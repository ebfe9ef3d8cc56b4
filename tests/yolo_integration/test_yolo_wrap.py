"""Fast checks of ``wrap()`` and the trainer class without a training run: validation errors, the optional-import
message, and that the configuration survives the way Ultralytics rebuilds a trainer for multi-GPU (DDP) runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from yolo_helpers import make_shapes_dataset

pytest.importorskip("ultralytics")

from ultralytics import YOLO  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402

from warmstart.yolo_integration import (  # noqa: E402
    WarmstartDetectionTrainer,
    YoloWarmstartConfig,
    config_of,
    is_wrapped,
    make_config,
    wrap,
)
from warmstart.yolo_integration.config import validate  # noqa: E402


@pytest.fixture(scope="module")
def yolo_model():
    return YOLO("yolov8n.yaml", verbose=False)


def test_yolo_import_without_ultralytics_names_the_extra(tmp_path):
    script = textwrap.dedent("""
        import sys
        sys.modules["ultralytics"] = None  # makes `import ultralytics` raise ImportError
        try:
            import warmstart.yolo_integration
        except ImportError as err:
            print("MESSAGE:", err)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "pip install 'warmstart[yolo]'" in proc.stdout, proc.stdout + proc.stderr


def test_yolo_wrap_returns_same_object_and_validates(yolo_model):
    assert not is_wrapped(yolo_model)
    same = wrap(yolo_model, freeze="backbone", layer_decay=0.8)
    assert same is yolo_model and is_wrapped(same)
    assert same.warmstart == make_config(freeze="backbone", layer_decay=0.8)
    with pytest.raises(ValueError, match="head"):
        wrap(yolo_model, freeze=["backbone", "head"])
    with pytest.raises(ValueError, match="bakbone.*valid groups are"):
        wrap(yolo_model, plan={"lr_scales": {"bakbone": 0.1}})
    with pytest.raises(ValueError, match="unknown lora option"):
        wrap(yolo_model, lora={"rank": 4})
    with pytest.raises(ValueError, match="does not exist"):
        wrap(yolo_model, backbone_weights="missing/backbone.safetensors")
    with pytest.raises(ValueError, match="YOLO object"):
        wrap(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="warmstart trainer"):
        yolo_model.train(trainer=DetectionTrainer, data="unused.yaml")


def test_yolo_schedule_resolution_by_role(yolo_model):
    """``at`` keyed by role resolves through the controller; ``freeze`` removes a group for the whole run."""
    ctl = validate(yolo_model.model, make_config(plan={"at": {"neck": 1, "backbone": 3}, "freeze": "model.0"}))
    roles = {g.name: g.role for g in ctl.groups}
    assert [roles[n] for n in ctl.trainable_at(0)] == ["head"]
    assert {roles[n] for n in ctl.trainable_at(1)} == {"head", "neck"}
    at3 = ctl.trainable_at(3)
    assert "model.0" not in at3 and len(at3) == len(ctl.groups) - 1  # model.0 stays frozen by `freeze`


def test_yolo_backbone_from_other_architecture_is_refused(tmp_path):
    from warmstart.core.backbones import build_backbone
    from warmstart.core.checkpoints import export_backbone

    files = export_backbone(build_backbone("ultralytics/yolov8n.yaml"), tmp_path / "export")
    with pytest.raises(ValueError, match="different architecture"):
        wrap(YOLO("yolov8s.yaml", verbose=False), backbone_weights=files["safetensors"])


def test_yolo_config_survives_ddp_style_rebuild(tmp_path):
    """Ultralytics' DDP script cloudpickles type(trainer), vars(trainer.args) and trainer.callbacks, then each worker
    runs ``Trainer(cfg=DEFAULT_CFG_DICT + save_dir='', overrides=args, _callbacks=callbacks)``. Do exactly that."""
    import cloudpickle
    from ultralytics.utils import DEFAULT_CFG_DICT

    data = make_shapes_dataset(tmp_path / "data", n_train=2, n_val=1)
    cfg = make_config(plan={"at": {"neck": 1, "backbone": 2}, "lr_scales": {"backbone": 0.1}})
    parent = WarmstartDetectionTrainer(overrides={"model": "yolov8n.yaml", "data": str(data), "imgsz": 64,
                                                  "device": "cpu", "project": str(tmp_path / "runs"),
                                                  "plots": False, "warmstart": cfg.to_json()})
    assert parent.warmstart == cfg
    state = cloudpickle.loads(cloudpickle.dumps({"trainer": type(parent), "args": vars(parent.args),
                                                 "callbacks": parent.callbacks}))
    worker_cfg = {**DEFAULT_CFG_DICT, "save_dir": ""}
    worker = state["trainer"](cfg=worker_cfg, overrides=state["args"], _callbacks=state["callbacks"])
    assert isinstance(worker, WarmstartDetectionTrainer)
    assert worker.warmstart == cfg == config_of(worker)
    starts = worker.callbacks["on_train_epoch_start"]
    assert sum(getattr(cb, "__name__", "") == "_on_epoch_start" for cb in starts) == 1
    assert YoloWarmstartConfig.from_json(worker.args.warmstart) == cfg


def test_yolo_lora_adapters_round_trip_through_merged_checkpoint(tmp_path):
    """Resume of a LoRA run: merged weights + saved adapters -> base + adapters with the same outputs."""
    pytest.importorskip("peft")
    from warmstart.core import apply_lora, has_lora
    from warmstart.yolo_integration.lora_merge import clean_copy, restore_adapters, save_adapters

    def net():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1)).eval()

    torch.manual_seed(0)
    live = apply_lora(net(), r=2)
    with torch.no_grad():
        for name, p in live.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter (lora_B starts at zero)
    save_adapters(live, tmp_path / "adapters.safetensors")
    merged = clean_copy(live)
    assert not has_lora(merged)
    resumed = net()
    resumed.load_state_dict(merged.state_dict())  # the trainer's get_model: plain model from the checkpoint
    apply_lora(resumed, r=2)  # ... then fresh adapters, replaced by the saved ones
    restore_adapters(resumed, tmp_path / "adapters.safetensors")
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(resumed(x), live(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged(x), live(x), rtol=1e-5, atol=1e-5)
