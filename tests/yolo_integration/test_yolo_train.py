"""Real ``YOLO.train`` runs (yolov8n from yaml, imgsz 64, CPU, generated shapes dataset) through ``wrap()``.

One run per feature set, shared by the asserts through module-scoped fixtures (YOLO training is slow on CPU):
- ``schedule_run``: pretrained backbone + gradual unfreezing (neck at epoch 1, backbone at 2) + layer lrs, 3 epochs,
  with the network blocked.
- ``resumed_run``: the same configuration interrupted after epoch 0, then ``train(resume=True)``.
- ``lora_run``: LoRA r=4, 1 epoch; ``best.pt`` must load and predict in a process that cannot import warmstart.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from yolo_helpers import TRAIN_ARGS, Recorder, make_shapes_dataset

pytest.importorskip("ultralytics")
pytest.importorskip("peft")

from ultralytics import YOLO  # noqa: E402

from warmstart.core import has_lora, layer_groups  # noqa: E402
from warmstart.yolo_integration import clean_copy, config_of, wrap  # noqa: E402

SCHEDULE = {"at": {"head": 0, "neck": 1, "backbone": 2}}
DECAY = {"backbone": 0.1, "neck": 0.5}


@contextlib.contextmanager
def no_network(attempts: list):
    """Any DNS lookup or connection raises (and is recorded): training must not need the network."""

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network disabled by test")

    saved = socket.getaddrinfo, socket.create_connection, socket.socket.connect
    socket.getaddrinfo, socket.create_connection, socket.socket.connect = refuse, refuse, refuse
    try:
        yield
    finally:
        socket.getaddrinfo, socket.create_connection, socket.socket.connect = saved


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A real ``warmstart pretrain``-style export of the yolov8n backbone (random weights: no pretraining needed)."""
    from warmstart.core.backbones import build_backbone
    from warmstart.core.checkpoints import export_backbone, read_weights

    torch.manual_seed(123)
    files = export_backbone(build_backbone("ultralytics/yolov8n.yaml"), tmp_path_factory.mktemp("export"))
    return files["safetensors"], read_weights(files["safetensors"])


@pytest.fixture(scope="module")
def schedule_run(data_yaml, export, tmp_path_factory):
    path, _ = export
    yolo = wrap(YOLO("yolov8n.yaml", verbose=False), backbone_weights=path, plan={**SCHEDULE, "lr_scales": DECAY})
    rec = Recorder().attach(yolo)
    attempts: list = []
    with no_network(attempts):
        yolo.train(data=str(data_yaml), epochs=3, project=str(tmp_path_factory.mktemp("runs")), name="sched",
                   **TRAIN_ARGS)
    return yolo, rec, attempts


def _group_tensors(state: dict, group) -> list[str]:
    """Floating-point tensors (weights and BatchNorm statistics; not the step counters) of one layer group."""
    return [k for k in state if k.startswith(group.name + ".") and state[k].is_floating_point()]


def _changed(a: dict, b: dict, keys: list[str]) -> list[str]:
    return [k for k in keys if not torch.equal(a[k], b[k])]


def test_yolo_backbone_weights_transferred(schedule_run, export):
    yolo, rec, _ = schedule_run
    _, exported = export
    report = rec.trainer.backbone_report
    assert report.summary().startswith(f"transferred {len(exported)}/{len(exported)} backbone tensors")
    assert len(report.matched) == len(exported) == 162  # yolov8n layers 0-9 (through SPPF): params + BN buffers
    # The model Ultralytics rebuilt inside the trainer started from the export, tensor for tensor.
    assert all(torch.equal(rec.initial[k], v) for k, v in exported.items())


def test_yolo_frozen_unchanged_then_unfrozen_changes(schedule_run):
    _, rec, _ = schedule_run
    groups = layer_groups(rec.trainer.model)
    init, e0, e1, e2 = rec.initial, rec.after_epoch[0], rec.after_epoch[1], rec.after_epoch[2]
    by_role = {role: [k for g in groups if g.role == role for k in _group_tensors(init, g)]
               for role in ("backbone", "neck", "head")}
    # backbone: frozen (weights AND BatchNorm statistics) in epochs 0-1, trains from epoch 2
    assert not _changed(init, e1, by_role["backbone"])
    assert len(_changed(e1, e2, by_role["backbone"])) > 0.9 * len(by_role["backbone"])
    # neck: frozen in epoch 0, trains from epoch 1
    assert not _changed(init, e0, by_role["neck"])
    assert len(_changed(e0, e1, by_role["neck"])) > 0.9 * len(by_role["neck"])
    # head: always trains (the fixed DFL conv aside, which Ultralytics never trains). Its convolutions are the
    # check: some BatchNorm scales of pyramid levels that got no box assigned in 2 steps have zero gradient.
    head = [k for k in by_role["head"] if ".dfl." not in k and init[k].ndim == 4]
    assert head and _changed(init, e0, head) == head


def test_yolo_trainable_groups_and_frozen_batchnorm_per_epoch(schedule_run):
    _, rec, _ = schedule_run
    groups = layer_groups(rec.trainer.model)
    roles = {g.name: g.role for g in groups}
    expected = {0: {"head"}, 1: {"head", "neck"}, 2: {"head", "neck", "backbone"}}
    assert sorted({b["epoch"] for b in rec.batches}) == [0, 1, 2]
    for b in rec.batches:
        assert {roles[n] for n in b["trainable"]} == expected[b["epoch"]]
        for name, flags in b["bn_training"].items():
            if flags:  # frozen groups keep BatchNorm in eval; trainable ones train it
                assert set(flags) == {roles[name] in expected[b["epoch"]]}, (b["epoch"], name)


def test_yolo_group_lrs_follow_ratios_through_warmup_and_schedule(schedule_run):
    _, rec, _ = schedule_run
    roles = {g.name: g.role for g in layer_groups(rec.trainer.model)}
    heads = []
    for b in rec.batches:
        head = next(lr for name, lr in b["lrs"].items() if roles[name] == "head")
        heads.append(head)
        for name, lr in b["lrs"].items():
            assert lr == pytest.approx(head * DECAY.get(roles[name], 1.0), rel=1e-9, abs=1e-15), (b["epoch"], name)
    # Ultralytics' own warmup (lr ramps from 0) and LambdaLR schedule still drive every group.
    assert heads[0] == 0.0 and len(set(heads)) >= 4
    trainer = rec.trainer
    final = {pg["name"]: pg for pg in trainer.optimizer.param_groups}
    for pg in final.values():
        assert pg["lr"] == pytest.approx(pg["initial_lr"] * trainer.lf(2))
    # The head keeps the optimizer and lr Ultralytics chose itself (optimizer='auto' resolves lr0 per dataset).
    head_group = next(pg for name, pg in final.items() if roles[name.rsplit("/", 1)[0]] == "head")
    assert type(trainer.optimizer).__name__ == trainer.args.optimizer
    assert head_group["initial_lr"] == pytest.approx(trainer.args.lr0) and trainer.args.lr0 != 0.001


def test_yolo_training_is_offline_and_config_recorded(schedule_run):
    yolo, rec, attempts = schedule_run
    assert attempts == []
    assert config_of(rec.trainer).unfreeze_schedule == SCHEDULE
    # Finished runs: Ultralytics strips non-standard train args from the final checkpoints, ours included.
    saved = torch.load(rec.trainer.best, map_location="cpu", weights_only=False)
    assert "warmstart" not in saved["train_args"]
    assert not has_lora(yolo.model)


class Interrupt(Exception):
    """Stands in for a crash (or Ctrl-C) right after the first epoch's checkpoint was written."""


def crash_after_first_save(trainer):
    if trainer.epoch == 0:
        raise Interrupt


def train_interrupted_then_resume(yolo, data_yaml, project, name, epochs) -> tuple:
    yolo.add_callback("on_model_save", crash_after_first_save)
    with pytest.raises(Interrupt):
        yolo.train(data=str(data_yaml), epochs=epochs, project=project, name=name, **TRAIN_ARGS)
    # Resume without repeating the options: they come back from last.pt's train args.
    resumed = wrap(YOLO(str(yolo.trainer.last), verbose=False))
    rec = Recorder().attach(resumed)
    resumed.train(resume=True, data=str(data_yaml), **{k: v for k, v in TRAIN_ARGS.items() if k != "seed"})
    return resumed, rec


@pytest.fixture(scope="module")
def resumed_run(data_yaml, tmp_path_factory):
    # The old keyword spelling (layer_decay as a dict is the deprecated form of plan lr_scales): same run.
    first = wrap(YOLO("yolov8n.yaml", verbose=False), unfreeze_schedule=SCHEDULE, layer_decay=DECAY)
    return train_interrupted_then_resume(first, data_yaml, str(tmp_path_factory.mktemp("runs")), "resume", 3)[1]


def test_yolo_resume_keeps_schedule_position_and_lrs(resumed_run, schedule_run):
    rec = resumed_run
    _, full, _ = schedule_run
    assert rec.trainer.start_epoch == 1
    assert config_of(rec.trainer).unfreeze_schedule == SCHEDULE
    resumed = [b for b in rec.batches]
    uninterrupted = [b for b in full.batches if b["epoch"] >= 1]
    assert [b["epoch"] for b in resumed] == [b["epoch"] for b in uninterrupted]
    for r, u in zip(resumed, uninterrupted):
        assert r["trainable"] == u["trainable"]
        assert r["lrs"] == pytest.approx(u["lrs"], rel=1e-9)


@pytest.fixture(scope="module")
def lora_run(data_yaml, tmp_path_factory):
    """LoRA for 2 epochs, interrupted after the first and resumed (adapters come back from last_lora.safetensors)."""
    first = wrap(YOLO("yolov8n.yaml", verbose=False), lora={"r": 4, "alpha": 8})
    return train_interrupted_then_resume(first, data_yaml, str(tmp_path_factory.mktemp("runs")), "lora", 2)


def test_yolo_lora_trains_adapters_only_and_merge_is_exact(lora_run):
    _, rec = lora_run
    live = rec.trainer.model
    assert has_lora(live) and rec.trainer.start_epoch == 1
    init, after = rec.initial, rec.after_epoch[1]
    base = [k for k in init if k.endswith("base_layer.weight")]
    lora_b = [k for k in init if ".lora_B." in k]
    assert base and lora_b
    assert not _changed(init, after, base)  # the pretrained convolutions stay as they were
    assert _changed(init, after, lora_b)  # ... the adapters learn
    x = torch.rand(2, 3, 64, 64)
    live.eval()
    merged = clean_copy(live).eval()
    assert not has_lora(merged)
    with torch.no_grad():
        torch.testing.assert_close(merged(x)[0], live(x)[0], rtol=1e-4, atol=1e-4)


def test_yolo_lora_best_pt_loads_in_plain_ultralytics(lora_run, data_yaml, tmp_path):
    yolo, rec = lora_run
    best = rec.trainer.best
    assert best.exists() and (best.parent / "last_lora.safetensors").exists()
    assert not has_lora(yolo.model)  # the YOLO object now holds best.pt: merged, plain convolutions
    image = next((data_yaml.parent / "images" / "val").glob("*.png"))
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("warmstart", "peft"):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Block())
        from ultralytics import YOLO

        model = YOLO({str(best)!r})
        assert not any("lora" in k for k in model.model.state_dict())
        results = model.predict({str(image)!r}, imgsz=64, device="cpu", verbose=False)
        print("PREDICTED", len(results), type(results[0].boxes).__name__)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "YOLO_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PREDICTED 1 Boxes" in proc.stdout
