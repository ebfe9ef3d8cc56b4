"""``wrap(YOLO(...), plan=...)`` is a thin adapter over ``FinetuneController``: real Ultralytics runs (yolov8n from
yaml, imgsz 32, 2 batches per epoch, no validation, CPU) compared with the bare controller on the same plan.

- (a) trainable groups and per-group lr ratios (real optimizer groups, relative to the head) at every epoch equal
  the controller's ``trainable_at`` / ``lr_scales``;
- (b) the same plan as ``plan=`` and as the old keyword arguments: same config, same run;
- (c) LoRA + schedule: adapters of frozen groups do not move;
- a plan counted in optimizer steps moves inside an epoch;
- (d) bad input fails at ``wrap()`` (or, for a schedule past the last epoch, at trainer setup), naming the groups.
"""

from __future__ import annotations

import copy

import pytest
import torch
from yolo_helpers import PLAN_TRAIN_ARGS, make_shapes_dataset, yolo_plan_run

pytest.importorskip("ultralytics")

from ultralytics import YOLO  # noqa: E402

from warmstart.core.controller import FinetuneController  # noqa: E402
from warmstart.core.plan import FinetunePlan  # noqa: E402
from warmstart.yolo_integration import make_config, wrap  # noqa: E402

PLAN = {"at": {"neck": 1, "backbone": 2}, "freeze": "model.0", "lr_scales": {"backbone": 0.1, "neck": 0.5}}
OLD_KWARGS = dict(freeze="model.0", unfreeze_schedule={"at": {"neck": 1, "backbone": 2}},
                  layer_decay={"backbone": 0.1, "neck": 0.5})


@pytest.fixture(scope="module")
def plan_run(tmp_path_factory):
    return yolo_plan_run(PLAN, 3, tmp_path_factory.mktemp("plan"))


def _expected(plan, epochs: int):
    """The bare controller on a copy of the same model: (trainable groups, lr / head lr) per epoch."""
    ctl = FinetuneController(copy.deepcopy(YOLO("yolov8n.yaml", verbose=False).model), plan)
    scales = ctl.lr_scales()
    ratios = {n: s / scales[-1] for n, s in zip(ctl.group_names, scales)}
    return [(ctl.trainable_at(ctl.position(epoch=e, step=e)), ratios) for e in range(epochs)]


def test_yolo_trainer_matches_bare_controller_every_epoch(plan_run):
    got, want = plan_run["epochs"], _expected(PLAN, 3)
    assert len(got) == 3
    for epoch, ((trainable, ratios), (want_trainable, want_ratios)) in enumerate(zip(got, want)):
        assert trainable == want_trainable, epoch
        assert ratios == pytest.approx(want_ratios, rel=1e-9), epoch
    assert "model.0" not in got[-1][0] and len(got[-1][0]) == len(want[0][1]) - 1  # frozen by freeze= throughout
    trainer = plan_run["trainer"]
    assert trainer.controller.plan == FinetunePlan.from_dict(PLAN)
    # Ultralytics' own optimizer choice and lr0 drive the head group.
    head_name = trainer.controller.group_names[-1]
    head = next(pg for pg in trainer.optimizer.param_groups if pg["name"].startswith(head_name + "/"))
    assert head["initial_lr"] == pytest.approx(trainer.args.lr0)


def test_yolo_old_keywords_are_the_same_plan(plan_run, tmp_path):
    with pytest.warns(DeprecationWarning, match="lr_scales"):
        old = make_config(**OLD_KWARGS)
    assert old == make_config(plan=PLAN)
    assert make_config(plan={"layer_decay": 0.7, "lora": {"r": 4}, "bn": "train"}) == make_config(
        layer_decay=0.7, lora=4, bn="train")
    assert make_config(plan={"head_epochs": 1, "every": 2}) == make_config(
        unfreeze_schedule={"head_epochs": 1, "every": 2})
    with pytest.warns(DeprecationWarning):
        run = yolo_plan_run(None, 3, tmp_path, **OLD_KWARGS)
    assert run["epochs"] == plan_run["epochs"]
    final, other = run["after"][2], plan_run["after"][2]
    assert all(torch.equal(final[k], other[k]) for k in final), "same plan, same seed: same weights"


def test_yolo_lora_with_schedule_keeps_frozen_adapters_still(tmp_path):
    pytest.importorskip("peft")
    run = yolo_plan_run({"freeze": "backbone", "at": {"neck": 1}, "lora": {"r": 2}}, 2, tmp_path)
    groups = run["trainer"].controller.groups
    init, e0, e1 = run["initial"], run["after"][0], run["after"][1]

    def adapters(role: str) -> list[str]:
        return [k for g in groups if g.role == role for k in g.param_names if ".lora_B." in k]

    def moved(a, b, keys):
        return [k for k in keys if not torch.equal(a[k], b[k])]

    backbone, neck = adapters("backbone"), adapters("neck")
    assert backbone and neck
    assert not moved(init, e1, backbone)  # frozen by freeze= for the whole run
    assert not moved(init, e0, neck)  # not yet scheduled in epoch 0
    assert moved(e0, e1, neck)  # trains from epoch 1
    base = [k for k in init if k.endswith("base_layer.weight")]
    assert base and not moved(init, e1, base)  # LoRA's base weights never train
    assert [t for t, _ in run["epochs"]][0] == [groups[-1].name]


def test_yolo_plan_in_optimizer_steps_moves_inside_an_epoch(tmp_path):
    """unit="step": applied at each batch (nbs=batch, so one optimizer step per batch; 2 batches per epoch)."""
    plan = {"at": {"neck": 1, "backbone": 3}, "unit": "step"}
    run = yolo_plan_run(plan, 2, tmp_path)
    want = _expected(plan, 4)  # position = step; the recorder reads the last batch of each epoch: steps 1 and 3
    assert [t for t, _ in run["epochs"]] == [want[1][0], want[3][0]]
    assert want[1][0] != want[0][0] and want[3][0] != want[1][0]


@pytest.fixture(scope="module")
def yolo_model():
    return YOLO("yolov8n.yaml", verbose=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(freeze="model.99"), r"freeze: unknown layer group 'model.99'.*valid groups are \['model.0'.*roles"),
    (dict(plan={"at": {"nek": 1, "backbone": 2}}), r"at\['nek'\].*valid groups are .*roles: .*'neck'"),
    (dict(plan={"lr_scales": {"bakbone": 0.1}}), r"lr_scales\['bakbone'\].*valid groups are"),
    (dict(unfreeze_schedule={"at": {"neck": 1}}), r"never trains group\(s\) \['model.0'.*Groups: \['model.0'"),
    (dict(plan={"lora": {"r": 0}}), r"\br\b.*0"),
    (dict(lora=0), r"\br\b.*0"),
    (dict(layer_decay="0.5"), r"layer_decay must be a float"),
    (dict(plan={"layer_decay": 0.5}, layer_decay=0.7), r"both set \['layer_decay'\]"),
    (dict(unfreeze_schedule={"at": {"neck": 1}, "epochs": 3}), r"unknown key\(s\) \['epochs'\]"),
    (dict(freeze="head"), r"selects the head"),
    (dict(plan={"anchor": -0.1}), r"anchor must be"),
])
def test_yolo_bad_plan_fails_at_wrap(yolo_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        wrap(yolo_model, **kwargs)


def test_yolo_schedule_past_last_epoch_fails_at_setup(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", n_train=4, n_val=1, size=32)
    yolo = wrap(YOLO("yolov8n.yaml", verbose=False), plan={"at": {"neck": 1, "backbone": 3}})
    with pytest.raises(ValueError, match=r"starts group\(s\) \['model.0'.*at epoch 3.*ends after 2 epochs.*Groups"):
        yolo.train(data=str(data), epochs=2, project=str(tmp_path / "runs"), name="late", **PLAN_TRAIN_ARGS)


def test_yolo_anchor_pulls_the_pretrained_weights_towards_their_start(tmp_path):
    """Plan ``anchor`` (L2-SP) in a real Ultralytics run: the body moves less than without it, the head is not
    pulled, and the starting values (saved next to last.pt for resume) are the run's first weights."""
    from safetensors.torch import load_file

    plain = yolo_plan_run({"layer_decay": 0.9}, 2, tmp_path / "plain")  # the anchor is the one difference
    anchored = yolo_plan_run({"layer_decay": 0.9, "anchor": 20.0}, 2, tmp_path / "anchored")
    init = anchored["initial"]
    assert all(torch.equal(init[k], plain["initial"][k]) for k in init)  # same seed: the same start
    anchor = anchored["trainer"].controller.anchor
    head = anchored["trainer"].controller.groups[-1].name
    assert anchor.params and not any(n.startswith(head + ".") for n in anchor.params)
    assert all(torch.equal(anchor.values[n].cpu(), init[n]) for n in anchor.params)
    saved = load_file(str(anchored["trainer"].wdir / "warmstart_anchor.safetensors"))
    assert saved.keys() == anchor.params.keys() and all(torch.equal(saved[n], init[n]) for n in saved)

    def moved(run) -> float:
        after = run["after"][1]
        return sum(float((after[n] - init[n]).pow(2).sum()) for n in anchor.params) ** 0.5

    assert 0 < moved(anchored) < 0.7 * moved(plain)
