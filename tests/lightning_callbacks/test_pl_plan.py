"""One plan, one controller: ``Finetune`` and the separate callbacks against the bare ``FinetuneController``.

Real ``lightning.Trainer`` runs on a tiny CNN (CPU, a few steps): trainable sets and per-group lr ratios read from
the real optimizer at every epoch, which parameters actually moved under LoRA + gradual unfreezing, resume, and
bad input refused before the first step.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
from pl_helpers import (
    GROUPS,
    DigitsCNN,
    L,
    LrRecorder,
    loader,
    snapshot,
    trainer,
)

from warmstart.core.checkpoints import save_weights
from warmstart.core.controller import FinetuneController
from warmstart.core.plan import FinetunePlan
from warmstart.lightning_callbacks import (
    DiscriminativeLR,
    Finetune,
    Freeze,
    GradualUnfreezing,
    LoadBackboneWeights,
    LoRA,
)

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS, STEPS, LR = 4, 2, 0.01
PLAN = {"head_epochs": 1, "every": 1, "layer_decay": 0.5}


class Observer(L.Callback):
    """Per epoch (after the warmstart callbacks): trainable parameter names, lr ratio of each param group to the
    head's (from the real optimizer) and the parameters that moved during the epoch."""

    def __init__(self) -> None:
        self.trainable: list[set[str]] = []
        self.ratios: list[dict[str, float]] = []
        self.moved: list[set[str]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.trainable.append({n for n, p in pl_module.named_parameters() if p.requires_grad})
        self.ratios.append(_ratios(trainer.optimizers[0].param_groups))
        self._before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.moved.append({n for n, p in pl_module.named_parameters() if not torch.equal(self._before[n], p)})


def _ratios(param_groups: list[dict]) -> dict[str, float]:
    heads = [g["lr"] for g in param_groups if g.get("name") == "head/decay"]
    if not heads:  # the user's own optimizer (no lr rule in the plan)
        return {}
    head = heads[0]
    return {g["name"]: round(g["lr"] / head, 12) for g in param_groups}


def _fit(tmp_path, callbacks, model=None, epochs=EPOCHS, **kw):
    torch.manual_seed(0)
    model = model if model is not None else DigitsCNN(lr=LR)
    obs = Observer()
    tr = trainer(tmp_path, [*callbacks, obs], max_epochs=epochs, limit_train_batches=STEPS, **kw)
    tr.fit(model, loader(64))
    return model, obs, tr


def test_finetune_matches_the_bare_controller_at_every_epoch(tmp_path):
    model = DigitsCNN(lr=LR)
    twin = copy.deepcopy(model)
    cb = Finetune(PLAN)
    _, obs, _ = _fit(tmp_path, [cb], model=model)
    bare = FinetuneController(twin, FinetunePlan.from_dict(PLAN))
    expected_trainable, expected_ratios = [], []
    for epoch in range(EPOCHS):
        bare.apply(epoch)
        expected_trainable.append({n for n, p in twin.named_parameters() if p.requires_grad})
        expected_ratios.append(_ratios(bare.param_groups(LR)))
    assert obs.trainable == expected_trainable
    assert obs.ratios == expected_ratios
    assert [sorted({n.split(".")[0] for n in t}, key=GROUPS.index) for t in obs.trainable] == [
        GROUPS[3:], GROUPS[2:], GROUPS[1:], GROUPS]
    assert obs.ratios[0]["stem/decay"] == pytest.approx(0.125)
    assert cb.controller.state_dict()["group_names"] == GROUPS


def test_separate_callbacks_equal_finetune_with_the_merged_plan(tmp_path):
    export = save_weights({k: v for k, v in DigitsCNN().state_dict().items() if not k.startswith("head.")},
                          tmp_path / "backbone.safetensors")
    lora = {"r": 2, "alpha": 4}
    separate = [LoadBackboneWeights(export), GradualUnfreezing(head_epochs=1, every=1),
                DiscriminativeLR(layer_decay=0.5), LoRA(**lora)]
    merged = FinetunePlan(head_epochs=1, every=1, layer_decay=0.5, lora=lora)
    a, obs_a, tr_a = _fit(tmp_path, separate)
    b, obs_b, tr_b = _fit(tmp_path, [LoadBackboneWeights(export), Finetune(merged)])
    assert separate[1].controller is separate[2].controller is separate[3].controller  # one shared controller
    assert separate[1].controller.plan == merged
    assert obs_a.trainable == obs_b.trainable and obs_a.ratios == obs_b.ratios and obs_a.moved == obs_b.moved
    sa, sb = snapshot(a), snapshot(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed: same weights
    report = separate[0].report
    assert len(report.matched) == report.total_backbone and report.missing == ["head.weight", "head.bias"]


def test_lora_with_gradual_unfreezing_moves_only_adapters_of_unfrozen_groups(tmp_path):
    cbs = [GradualUnfreezing(head_epochs=1, every=1), LoRA(r=2, alpha=4)]
    model, obs, _ = _fit(tmp_path, cbs, epochs=4)
    assert len(obs.moved) == 4
    c = cbs[0].controller
    lora_groups = ["stem", "block1", "block2"]
    for epoch, moved in enumerate(obs.moved):
        active = c.trainable_at(epoch)
        assert moved == c.trainable_parameters(active), f"epoch {epoch}"
        assert not any("base_layer" in n for n in moved), f"epoch {epoch}: a base weight moved"
        for g in lora_groups:
            adapters = {n for n in moved if n.startswith(g + ".") and "lora_" in n}
            assert bool(adapters) == (g in active), f"epoch {epoch} group {g}"
    assert obs.moved[0] == {"head.weight", "head.bias"}
    assert {n for n in obs.moved[1] if "lora_" in n} == {"block2.0.lora_A.default.weight",
                                                         "block2.0.lora_B.default.weight"}


def _resume_run(tmp_path, epochs, plan=PLAN, ckpt_path=None, save_to=None):
    torch.manual_seed(0)
    model, obs = DigitsCNN(lr=LR, scheduler="lambda"), Observer()
    tr = trainer(tmp_path, [Finetune(plan), obs], max_epochs=epochs, limit_train_batches=STEPS)
    tr.fit(model, loader(64), ckpt_path=ckpt_path)
    if save_to is not None:
        tr.save_checkpoint(save_to)
    return model, obs


def test_resume_restores_the_controller_state_and_checks_the_layout(tmp_path):
    full, full_obs = _resume_run(tmp_path, EPOCHS)
    ckpt = tmp_path / "half.ckpt"
    _resume_run(tmp_path, 2, save_to=ckpt)
    state = next(v for k, v in torch.load(ckpt, weights_only=False)["callbacks"].items() if k.startswith("Finetune"))
    assert state["controller"]["group_names"] == GROUPS and state["controller"]["position"] == 1
    assert state["controller"]["trainable_groups"] == ["block2", "head"]
    resumed, obs = _resume_run(tmp_path, EPOCHS, ckpt_path=ckpt)
    assert obs.trainable == full_obs.trainable[2:] and obs.ratios == full_obs.ratios[2:]
    a, b = snapshot(full), snapshot(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same model grouped differently: the error names both layouts
    regrouped = {**PLAN, "layer_patterns": [r"^(stem|block1)\.", r"^block2\.", r"^head\."]}
    with pytest.raises(ValueError, match=r"trained with layer groups \['stem', 'block1', 'block2', 'head'\], but "
                                         r"this model has \["):
        _resume_run(tmp_path, EPOCHS, plan=regrouped, ckpt_path=ckpt)


class _ResNet(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        import torchvision

        self.net = torchvision.models.resnet18(num_classes=3)


@pytest.mark.parametrize("lora_first", [True, False])
def test_load_backbone_weights_in_any_order_with_lora_on_every_conv(tmp_path, lora_first):
    pytest.importorskip("torchvision")
    torch.manual_seed(1)
    plain = _ResNet().net
    export = save_weights({k: v for k, v in plain.state_dict().items() if not k.startswith("fc.")},
                          tmp_path / "resnet.safetensors")
    load, lora = LoadBackboneWeights(export, module="net"), LoRA(r=2, module="net")
    cbs = [lora, load] if lora_first else [load, lora]
    model = _ResNet()
    tr = L.Trainer(callbacks=cbs, logger=False, enable_progress_bar=False, enable_checkpointing=False, max_epochs=1)
    for cb in tr.callbacks:  # setup in the Trainer's order is all that matters here
        cb.setup(tr, model, "fit")
    assert len(lora.target_names) == 20  # every conv of resnet18, downsample convs included
    report = load.report
    assert len(report.matched) == report.total_backbone and report.missing == ["fc.weight", "fc.bias"]
    state = model.net.state_dict()
    for k, v in plain.state_dict().items():
        if k.startswith("fc."):
            continue
        key = k if k in state else k.replace(".weight", ".base_layer.weight")
        assert torch.equal(state[key], v), k


@pytest.mark.parametrize("make, match", [
    (lambda: [Finetune({"freeze": ["stem", "nope"]})], r"'nope'.*\['stem', 'block1', 'block2', 'head'\]"),
    (lambda: [Finetune({"at": {"block2": 1}})], r"never trains group\(s\) \['stem', 'block1'\].*Groups: \['stem'"),
    (lambda: [Finetune({"at": {"stem": 5, "block1": 1, "block2": 0}})],
     r"starts group\(s\) \['stem'\] at epoch 5.*Groups: \['stem'"),
    (lambda: [GradualUnfreezing(at=[9, 1, 0, 0])], r"starts group\(s\) \['stem'\] at epoch 9"),
    (lambda: [GradualUnfreezing(head_epochs=2), Finetune({"head_epochs": 1})], r"both set \['head_epochs'\]"),
    (lambda: [Freeze(bn="train"), Finetune({"bn": "eval", "freeze": "stem"})], r"both set \['freeze'\]"),
    (lambda: [DiscriminativeLR(layer_decay=0.5), Finetune({"group_lrs": {"head": 0.1}})],
     "both rebuild the optimizer"),
    (lambda: [GradualUnfreezing(), LoRA(r=2, module="block1")], "both set which parameters train"),
    (lambda: [Finetune({"lr_scales": {"neck": 0.1}})], r"'neck' matches no layer group. Valid groups: \['stem'"),
])
def test_bad_plans_fail_at_setup_naming_the_groups(tmp_path, make, match):
    rec = LrRecorder()
    with pytest.raises(ValueError, match=match):
        trainer(tmp_path, [*make(), rec], max_epochs=2).fit(DigitsCNN(), loader(32))
    assert rec.steps == 0


def test_lora_rank_zero_and_bad_plans_fail_where_written():
    with pytest.raises(ValueError, match="r"):
        LoRA(r=0)
    with pytest.raises(ValueError, match="r"):
        Finetune({"lora": {"r": 0}})
    with pytest.raises(ValueError, match=r"unknown plan key\(s\) \['head_epoch'\]"):
        Finetune({"head_epoch": 1})


def test_sharded_strategies_are_refused_at_setup():
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    for strategy, name in ((FSDPStrategy(), "FSDPStrategy"), (object.__new__(DeepSpeedStrategy), "DeepSpeedStrategy")):
        cb = Finetune(PLAN)
        fake = types.SimpleNamespace(callbacks=[cb], strategy=strategy, max_epochs=4)
        with pytest.raises(ValueError, match=f"{name}.*not supported.*Use strategy='ddp'"):
            cb.setup(fake, DigitsCNN(), "fit")


class BatchTrainable(L.Callback):
    """Trainable groups at each batch start (after the warmstart callbacks), with the global step."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, list[str]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        params = dict(pl_module.named_parameters())
        self.seen.append((trainer.global_step, [g for g in GROUPS if any(
            p.requires_grad for n, p in params.items() if n.startswith(g + "."))]))


@pytest.mark.parametrize("unit, at", [("step", {"block2": 2, "block1": 4, "stem": 6}),
                                      ("fraction", {"block2": 0.25, "block1": 0.5, "stem": 0.75})])
def test_step_and_fraction_units_apply_per_batch(tmp_path, unit, at):
    cb, rec = Finetune({"at": at, "unit": unit}), BatchTrainable()
    trainer(tmp_path, [cb, rec], max_epochs=2, limit_train_batches=4).fit(DigitsCNN(), loader(128))
    assert [s for s, _ in rec.seen] == list(range(8))
    assert [t for _, t in rec.seen] == [GROUPS[3:]] * 2 + [GROUPS[2:]] * 2 + [GROUPS[1:]] * 2 + [GROUPS] * 2


def test_step_plan_beyond_the_run_is_refused_before_the_first_step(tmp_path):
    rec = LrRecorder()
    with pytest.raises(ValueError, match=r"starts group\(s\) \['stem'\] at step 100.*after 8 steps"):
        trainer(tmp_path, [Finetune({"at": {"stem": 100, "block1": 0, "block2": 0}, "unit": "step"}), rec],
                max_epochs=2, limit_train_batches=4).fit(DigitsCNN(), loader(128))
    assert rec.steps == 0


def test_finetune_plan_from_lightning_cli_yaml(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    cfg = tmp_path / "config.yaml"
    cfg.write_text("trainer:\n  callbacks:\n    - class_path: warmstart.lightning_callbacks.Finetune\n"
                   "      init_args:\n        plan: {head_epochs: 1, layer_decay: 0.7, lora: {r: 2}}\n")
    cli = LightningCLI(DigitsCNN, run=False, args=["--config", str(cfg)], save_config_callback=None)
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, Finetune))
    assert cb.plan == FinetunePlan(head_epochs=1, layer_decay=0.7, lora={"r": 2})
