"""Test helpers for the YOLO front end: the shapes dataset (from the package) and a run recorder."""

from __future__ import annotations

from warmstart.testing import make_shapes_dataset

__all__ = ["PLAN_TRAIN_ARGS", "TRAIN_ARGS", "Recorder", "make_shapes_dataset", "yolo_plan_run",
           "yolo_trainable_and_lr_ratios"]

# ---------------------------------------------------------------------------------------------- recording a run

TRAIN_ARGS = dict(imgsz=64, batch=4, workers=0, device="cpu", plots=False, amp=False, verbose=False, exist_ok=True,
                  val=True, seed=0, nbs=4)  # nbs=batch: one optimizer step per batch (no accumulation)


class Recorder:
    """Ultralytics callbacks that snapshot what a run did: weights per epoch, group lrs and trainable groups per
    iteration, and whether frozen layers' BatchNorm stayed in eval."""

    def __init__(self) -> None:
        self.initial: dict | None = None
        self.after_epoch: dict[int, dict] = {}
        self.batches: list[dict] = []
        self.trainer = None

    def attach(self, yolo) -> Recorder:
        yolo.add_callback("on_pretrain_routine_end", self._start)
        yolo.add_callback("on_train_batch_end", self._batch)
        yolo.add_callback("on_train_epoch_end", self._epoch)
        return self

    @staticmethod
    def _state(trainer) -> dict:
        from ultralytics.utils.torch_utils import unwrap_model

        return {k: v.detach().clone() for k, v in unwrap_model(trainer.model).state_dict().items()}

    def _start(self, trainer) -> None:
        self.trainer = trainer
        self.initial = self._state(trainer)

    def _epoch(self, trainer) -> None:
        self.after_epoch[trainer.epoch] = self._state(trainer)

    def _batch(self, trainer) -> None:
        from ultralytics.utils.torch_utils import unwrap_model

        from warmstart.core import layer_groups

        model = unwrap_model(trainer.model)
        params = dict(model.named_parameters())
        groups = layer_groups(model)
        trainable = [g.name for g in groups if any(params[n].requires_grad for n in g.param_names)]
        bn_training = {g.name: [m.training for name, m in model.named_modules()
                                if name.startswith(g.name + ".") and "BatchNorm" in type(m).__name__]
                       for g in groups}
        lrs = {}
        for pg in trainer.optimizer.param_groups:
            lrs.setdefault(pg["name"].rsplit("/", 1)[0], set()).add(pg["lr"])
        self.batches.append({"epoch": trainer.epoch, "trainable": trainable, "bn_training": bn_training,
                             "lrs": {k: v.pop() if len(v) == 1 else sorted(v) for k, v in lrs.items()},
                             "initial_lrs": {pg["name"]: pg["initial_lr"] for pg in trainer.optimizer.param_groups}})


# ---------------------------------------------------------------------------------------------- plan runs

PLAN_TRAIN_ARGS = dict(imgsz=32, batch=4, workers=0, device="cpu", plots=False, amp=False, verbose=False,
                       exist_ok=True, val=False, seed=0, nbs=4, deterministic=True)  # 8 images: 2 batches/epoch


def _head_and_ratios(trainer) -> dict[str, float]:
    """lr of each layer group divided by the head's, from the real optimizer param groups.

    Ultralytics' warmup and LambdaLR scale every group by the same factor, so ratios (not lrs) are the plan's
    scales. Its warmup starts groups tagged ``param_group="bias"`` at ``warmup_bias_lr`` instead, which breaks
    the ratio during warmup: warmstart never tags a group "bias" (asserted here), so every group counts.
    """
    pgs = trainer.optimizer.param_groups
    assert not [pg.get("name") for pg in pgs if pg.get("param_group") == "bias"], "a bias-warmup group appeared"
    by_group: dict[str, set[float]] = {}
    for pg in pgs:
        group = pg["name"].rsplit("/", 1)[0]
        by_group.setdefault(group, set()).add(pg["lr"] if pg["lr"] > 0 else pg["initial_lr"])
    head_name = list(by_group)[-1]  # groups are in model order; the head is last
    (head_lr,) = by_group[head_name]
    out = {}
    for group, lrs in by_group.items():
        assert len(lrs) == 1, (group, lrs)  # decay and no_decay halves of a group share its lr
        out[group] = next(iter(lrs)) / head_lr
    return out


def yolo_plan_run(plan, epochs: int, root, *, model_yaml: str = "yolov8n.yaml", **wrap_kwargs) -> dict:
    """Train ``wrap(YOLO(model_yaml), plan=plan, **wrap_kwargs)`` for ``epochs`` on a tiny shapes dataset under
    ``root``; return ``{"epochs": [(trainable groups, lr ratios), ...], "initial": state, "after": {epoch: state},
    "trainer": trainer}``. Trainable groups: any parameter requires grad (the fixed DFL conv never does)."""
    from pathlib import Path

    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import unwrap_model

    from warmstart.yolo_integration import wrap

    root = Path(root)
    data = make_shapes_dataset(root / "data", n_train=8, n_val=2, size=32)
    yolo = wrap(YOLO(model_yaml, verbose=False), plan=plan, **wrap_kwargs)
    rec = Recorder().attach(yolo)
    per_epoch: list[tuple[list[str], dict[str, float]]] = []

    def epoch_end(trainer) -> None:
        model = unwrap_model(trainer.model)
        params = dict(model.named_parameters())
        trainable = [g.name for g in trainer.controller.groups if any(params[n].requires_grad for n in g.param_names)]
        per_epoch.append((trainable, _head_and_ratios(trainer)))

    yolo.add_callback("on_train_epoch_end", epoch_end)
    yolo.train(data=str(data), epochs=epochs, project=str(root / "runs"), name="run", **PLAN_TRAIN_ARGS)
    return {"epochs": per_epoch, "initial": rec.initial, "after": rec.after_epoch, "trainer": rec.trainer}


def yolo_trainable_and_lr_ratios(plan, epochs: int) -> list[tuple[list[str], dict[str, float]]]:
    """Per epoch of a real ``wrap(YOLO("yolov8n.yaml"), plan=plan)`` run: the trainable layer group names and each
    group's lr divided by the head's lr (from the optimizer's param groups), for cross-framework comparisons.

    Runs offline on a generated 8-image dataset (imgsz 32, 2 batches per epoch, no validation) in a temporary
    folder that is removed afterwards.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return yolo_plan_run(plan, epochs, tmp)["epochs"]
