"""FinetuneCallback + plan_optimizer in real transformers.Trainer runs: one controller decides, LoRA composes with
gradual unfreezing, resume restores the controller state, bad input fails at train begin."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hf_helpers import (
    Recorder,
    TokenDataset,
    controller_trainable_and_lr_ratios,
    hf_trainable_and_lr_ratios,
    tiny_bert,
    training_args,
)

transformers = pytest.importorskip("transformers")

from warmstart.hf_integration import (  # noqa: E402
    FinetuneCallback,
    FinetunePlan,
    GradualUnfreezing,
    apply_lora,
    llrd_optimizer,
    plan_optimizer,
)

GROUPS = ["embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "head"]


@pytest.mark.parametrize("plan", [
    {"head_epochs": 1, "every": 1, "layer_decay": 0.5},
    {"at": {"bert.encoder.layer.1": 1, "bert.encoder.layer.0": 2}, "freeze": "embeddings",
     "lr_scales": {"bert.encoder.layer.*": 0.1}},
    {"head_epochs": 1, "max_groups": 3, "backbone_lr_ratio": 0.25, "lora": {"r": 2}},
], ids=["layer_decay", "at+freeze+lr_scales", "lora+max_groups"])
def test_trainer_matches_the_bare_controller_every_epoch(plan):
    model = tiny_bert()
    twin = copy.deepcopy(model)
    via_trainer = hf_trainable_and_lr_ratios(model, plan, epochs=4)
    reference = controller_trainable_and_lr_ratios(twin, plan, epochs=4)
    assert [t for t, _ in via_trainer] == [t for t, _ in reference]
    for (_, got), (_, want) in zip(via_trainer, reference):
        assert got.keys() == want.keys()
        assert got == pytest.approx(want, rel=1e-9)
    assert via_trainer[0][1]["head"] == 1.0 and via_trainer[0][0][-1] == "head"


def test_callback_and_optimizer_share_one_controller(tmp_path):
    model = tiny_bert()
    plan = {"head_epochs": 1, "max_groups": 2, "layer_decay": 0.5}
    cb = FinetuneCallback(plan)
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path, num_train_epochs=2),
                                   train_dataset=TokenDataset(16), callbacks=[cb],
                                   optimizer_cls_and_kwargs=plan_optimizer(model, plan))
    trainer.train()
    assert cb.controller is model.__dict__["_warmstart_plan"].controller
    assert cb.controller.plan.to_dict() == plan and cb.trainable_groups == GROUPS[2:]
    assert trainer.optimizer.param_groups[0]["name"] == "head/no_decay"  # the lr the Trainer logs is the head's


class Snapshots(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.at_epoch_end: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.at_epoch_end.append({n: p.detach().clone() for n, p in model.named_parameters()})


def _layer(name: str) -> str:
    for g in ("encoder.layer.0.", "encoder.layer.1.", "embeddings."):
        if g in name:
            return g.rstrip(".")
    return "head"


@pytest.mark.parametrize("peft_model", [True, False], ids=["apply_lora+GradualUnfreezing", "plan-lora"])
def test_lora_with_gradual_unfreezing_moves_adapters_of_unfrozen_groups_only(tmp_path, peft_model):
    if peft_model:  # the existing API: a PeftModel, the schedule shell and LLRD
        model = apply_lora(tiny_bert(), r=2)
        cb = GradualUnfreezing(head_epochs=1, every=1, max_groups=3)
        opt = llrd_optimizer(model, lr=1e-2, layer_decay=0.5)
    else:  # LoRA inside the plan: the controller injects it in place
        model = tiny_bert()
        plan = {"head_epochs": 1, "every": 1, "max_groups": 3, "layer_decay": 0.5, "lora": {"r": 2}}
        cb, opt = FinetuneCallback(plan), plan_optimizer(model, plan, lr=1e-2)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    snaps = Snapshots()
    transformers.Trainer(model=model, args=training_args(tmp_path, num_train_epochs=3), train_dataset=TokenDataset(16),
                         callbacks=[cb, snaps], optimizer_cls_and_kwargs=opt).train()
    before = [start, *snaps.at_epoch_end]
    moved = [{n for n in start if not torch.equal(before[e][n], before[e + 1][n])} for e in range(3)]
    adapters = [{_layer(n) for n in m if "lora_" in n} for m in moved]
    assert adapters == [set(), {"encoder.layer.1"}, {"encoder.layer.0", "encoder.layer.1"}]
    for m in moved:
        assert {_layer(n) for n in m if "lora_" not in n} == {"head"}  # base weights never move, the head does
        assert not any("base_layer" in n or "original_module" in n for n in m)
    assert not any(_layer(n) == "embeddings" for m in moved for n in m)


def _resume_run(out, plan, resume=None, restore=False, model=None):
    model = model or tiny_bert()
    cb = FinetuneCallback(plan)
    args = training_args(out, num_train_epochs=3, save_strategy="steps", save_steps=6,
                         restore_callback_states_from_checkpoint=restore)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TokenDataset(32), callbacks=[cb],
                                   optimizer_cls_and_kwargs=plan_optimizer(model, plan))
    trainer.train(resume_from_checkpoint=resume)
    live = next(c for c in trainer.callback_handler.callbacks if isinstance(c, FinetuneCallback))
    return model, live


def test_resume_restores_the_controller_state_and_refuses_another_layout(tmp_path):
    plan = {"head_epochs": 1, "every": 1, "max_groups": 3, "layer_decay": 0.5}
    full_model, full = _resume_run(tmp_path / "full", plan)
    checkpoint = tmp_path / "full" / "checkpoint-6"  # mid-epoch 1 (4 steps per epoch)
    saved = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["FinetuneCallback"]
    assert saved["args"] == {"plan": FinetunePlan.from_dict(plan).to_dict()}  # defaults (every=1) left out
    assert saved["attributes"]["_checkpoint_state"]["position"] == 1.0
    assert saved["attributes"]["_checkpoint_state"]["group_names"] == GROUPS

    for restore in (False, True):
        model, resumed = _resume_run(tmp_path / f"resumed{restore}", plan, str(checkpoint), restore)
        assert resumed.controller.state_dict() == full.controller.state_dict()
        for (name, p), q in zip(model.named_parameters(), full_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)

    three_layers = tiny_bert(layers=3)
    ours = (r"layer groups \['embeddings', 'bert.encoder.layer.0', 'bert.encoder.layer.1', 'head'\]"
            r".*'bert.encoder.layer.2'")
    if int(transformers.__version__.split(".")[0]) < 5:
        # transformers 4.x loads the optimizer state before the trainer state, so the optimizer cannot know it is
        # resuming: torch's own error comes first (still a refusal, but without the group names)
        ours += "|loaded state dict has a different number of parameter groups"
    with pytest.raises(ValueError, match=ours):
        _resume_run(tmp_path / "other", plan, str(checkpoint), model=three_layers)


def _train(tmp_path, cb, model=None, **kw):
    model = model or tiny_bert()
    transformers.Trainer(model=model, args=training_args(tmp_path, **{"max_steps": 1, **kw}),
                         train_dataset=TokenDataset(8), callbacks=[cb],
                         optimizer_cls_and_kwargs=plan_optimizer(model, cb.plan, lr=1e-3)).train()


VALID = r"bert.encoder.layer.0', 'bert.encoder.layer.1', 'head'\]"


@pytest.mark.parametrize("plan, message", [
    ({"at": {"encoder.layer.9": 1}}, r"at\['encoder.layer.9'\].*" + VALID),
    ({"freeze": "decoder"}, r"freeze.*'decoder'.*" + VALID),
    ({"at": {"bert.encoder.layer.1": 1}}, r"never trains group\(s\) \['embeddings', 'bert.encoder.layer.0'\].*"
                                          + VALID),
    ({"at": {"backbone": 5}}, r"starts group\(s\).*at epoch 5.*ends after 2 epochs.*" + VALID),
    ({"head_epochs": 1, "every": 2, "max_groups": 4}, r"starts group\(s\).*ends after 2 epochs.*" + VALID),
])
def test_bad_plans_fail_at_train_begin_listing_the_groups(tmp_path, plan, message):
    with pytest.raises(ValueError, match=message):
        _train(tmp_path, FinetuneCallback(plan), num_train_epochs=2, max_steps=-1)


def test_open_ended_schedule_that_outlasts_the_run_is_a_warning(tmp_path):
    with pytest.warns(UserWarning, match=r"\['embeddings', 'bert.encoder.layer.0'\].*never train"):
        _train(tmp_path, FinetuneCallback({"head_epochs": 1, "every": 2}), num_train_epochs=2, max_steps=-1)


def test_bad_input_before_training(tmp_path):
    with pytest.raises(ValueError, match="LoRA rank r must be >= 1"):
        FinetuneCallback({"lora": {"r": 0}})
    with pytest.raises(ValueError, match="unknown plan key"):
        FinetuneCallback({"layer_decy": 0.5})
    with pytest.raises(ValueError, match=r"unit must be one of"):
        GradualUnfreezing(unit="minute")
    # an lr rule needs the plan's optimizer: the Trainer's default one would ignore it
    model = tiny_bert()
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path, max_steps=1),
                                   train_dataset=TokenDataset(8), callbacks=[FinetuneCallback({"layer_decay": 0.5})])
    with pytest.raises(ValueError, match="plan_optimizer"):
        trainer.train()
    # two parts of the plan that disagree
    model = tiny_bert()
    opt = plan_optimizer(model, {"layer_decay": 0.5}, lr=1e-3)
    with pytest.raises(ValueError, match=r"both set \['layer_decay'\]"):
        transformers.Trainer(model=model, args=training_args(tmp_path, max_steps=1), train_dataset=TokenDataset(8),
                             callbacks=[FinetuneCallback({"layer_decay": 0.9})], optimizer_cls_and_kwargs=opt)
    # lr comes from TrainingArguments only inside a Trainer
    model = tiny_bert()
    factory, kwargs = plan_optimizer(model, {"layer_decay": 0.5})
    with pytest.raises(ValueError, match="pass lr="):
        factory()(model, **kwargs)
    # the tuple carries its model: a Trainer training another model is refused, not silently mis-grouped
    other = tiny_bert()
    with pytest.raises(ValueError, match="trains a different model than the one passed"):
        transformers.Trainer(model=other, args=training_args(tmp_path, max_steps=1), train_dataset=TokenDataset(8),
                             optimizer_cls_and_kwargs=plan_optimizer(model, {"layer_decay": 0.5}, lr=1e-3)).train()


def test_fraction_unit_follows_the_run_length(tmp_path):
    plan = {"at": {"bert.encoder.layer.1": 0.5}, "freeze": ["embeddings", "bert.encoder.layer.0"], "unit": "fraction"}
    model, rec = tiny_bert(), Recorder()
    transformers.Trainer(model=model, args=training_args(tmp_path, max_steps=4), train_dataset=TokenDataset(32),
                         callbacks=[FinetuneCallback(plan), rec],
                         optimizer_cls_and_kwargs=plan_optimizer(model, plan)).train()
    assert [rec.frozen[k] for k in range(1, 5)] == [GROUPS[:3]] * 2 + [GROUPS[:2]] * 2  # steps 0-1 | 2-3 of 4


def test_doctests_of_the_hf_front_end():
    import doctest

    from warmstart.hf_integration import lora, optimizer, plan, unfreezing

    for module in (plan, unfreezing, optimizer, lora):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted and not result.failed, module.__name__


@pytest.mark.parametrize("sharded", [dict(fsdp="full_shard", deepspeed=None), dict(fsdp="", deepspeed="ds.json")])
def test_fsdp_and_deepspeed_are_refused_with_the_reason(sharded):
    import types

    from warmstart.hf_integration import FinetuneCallback, GradualUnfreezing

    for cb in (FinetuneCallback({"head_epochs": 1}), GradualUnfreezing(head_epochs=1)):
        with pytest.raises(ValueError, match=r"(FSDP|DeepSpeed) .* is not supported: it flattens and shards"):
            cb.on_train_begin(types.SimpleNamespace(**sharded), None, None, model=tiny_bert())
