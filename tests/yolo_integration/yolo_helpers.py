"""Test helpers for the YOLO front end: the shapes dataset (from the package) and a run recorder."""

from __future__ import annotations

from warmstart.testing import make_shapes_dataset

__all__ = ["TRAIN_ARGS", "Recorder", "make_shapes_dataset"]

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
