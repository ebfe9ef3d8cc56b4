"""llrd_optimizer with the real Trainer: all params held, per-layer lrs, the Trainer's scheduler keeps ratios."""

from __future__ import annotations

import pytest
import torch
from hf_helpers import Recorder, TokenDataset, tiny_bert, training_args

transformers = pytest.importorskip("transformers")

from warmstart.hf_integration import GradualUnfreezing, llrd_optimizer  # noqa: E402

LR, DECAY = 1e-3, 0.5
# distance from the head -> lr scale
SCALES = {"head": 1.0, "bert.encoder.layer.1": DECAY, "bert.encoder.layer.0": DECAY**2, "embeddings": DECAY**3}


def test_factory_holds_every_parameter_with_explicit_lrs():
    model = tiny_bert()
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)  # frozen parameters are held too (ARCHITECTURE.md rule 2)
    factory, kwargs = llrd_optimizer(model, lr=LR, layer_decay=DECAY, weight_decay=0.01)
    opt = factory()(model, **kwargs)
    held = [p for g in opt.param_groups for p in g["params"]]
    assert len(held) == len(list(model.parameters())) == len({id(p) for p in held})
    assert opt.param_groups[0]["name"] == "head/no_decay"  # the lr the Trainer logs is the head's
    for g in opt.param_groups:
        layer, kind = g["name"].rsplit("/", 1)
        assert g["lr"] == pytest.approx(LR * SCALES[layer])
        assert g["weight_decay"] == (0.01 if kind == "decay" else 0.0)
        no_decay = [n.endswith("bias") or "LayerNorm" in n or "position_embeddings" in n for n in g["param_names"]]
        assert all(no_decay) if kind == "no_decay" else not any(no_decay)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_trainer_scheduler_scales_every_group_and_keeps_ratios(tmp_path, schedule):
    model = tiny_bert()
    rec = Recorder()
    steps, warmup = 8, 3
    args = training_args(tmp_path, max_steps=steps, lr_scheduler_type=schedule, warmup_steps=warmup)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TokenDataset(64), callbacks=[rec],
                                   optimizer_cls_and_kwargs=llrd_optimizer(model, lr=LR, layer_decay=DECAY))
    trainer.train()

    # the reference: the same transformers schedule on a one-group optimizer at lr=LR
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    ref = transformers.get_scheduler(schedule, ref_opt, num_warmup_steps=warmup, num_training_steps=steps)
    for k in range(1, steps + 1):
        expected_head = ref_opt.param_groups[0]["lr"]
        lrs = rec.lrs[k]
        assert len(lrs) == 8  # 4 layer groups x decay/no_decay
        for name, lr in lrs.items():
            assert lr == pytest.approx(expected_head * SCALES[name.rsplit("/", 1)[0]], rel=1e-9, abs=1e-15)
        ref_opt.step()
        ref.step()
    assert rec.lrs[1]["head/decay"] == pytest.approx(0.0)           # warmup starts at 0 ...
    assert rec.lrs[warmup + 1]["head/decay"] == pytest.approx(LR)   # ... peaks at lr ...
    assert rec.lrs[warmup + 1]["embeddings/decay"] == pytest.approx(LR * DECAY**3)  # ... with ratios intact


def test_with_gradual_unfreezing_frozen_groups_do_not_move_then_train(tmp_path):
    model = tiny_bert()
    emb0 = model.bert.embeddings.word_embeddings.weight.detach().clone()
    layer0 = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    factory_kwargs = llrd_optimizer(model, lr=LR, layer_decay=0.8, weight_decay=0.1)  # decay must not move frozen
    schedule = GradualUnfreezing(at={"bert.encoder.layer.1": 0, "bert.encoder.layer.0": 1}, freeze="embeddings")
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path, num_train_epochs=2),
                                   train_dataset=TokenDataset(32), optimizer_cls_and_kwargs=factory_kwargs,
                                   callbacks=[schedule])
    trainer.train()
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, emb0)  # never unfrozen
    assert not torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, layer0)  # unfrozen in epoch 1
    # the same tuple builds a second Trainer's optimizer identically (kwargs are not consumed)
    again = factory_kwargs[0]()(model, **factory_kwargs[1])
    assert len(again.param_groups) == len(trainer.optimizer.param_groups)


def test_bad_input_is_refused_at_construction():
    with pytest.raises(ValueError, match="no layer structure.*layer_patterns"):
        llrd_optimizer(torch.nn.Linear(4, 2), lr=1e-3)
    with pytest.raises(ValueError, match="layer_decay must be in"):
        llrd_optimizer(tiny_bert(), lr=1e-3, layer_decay=1.5)
    with pytest.raises(ValueError, match="torch.optim.Optimizer subclass"):
        llrd_optimizer(tiny_bert(), lr=1e-3, optimizer_cls="adamw")
    with pytest.raises(ValueError, match="rejected the optimizer arguments"):
        llrd_optimizer(tiny_bert(), lr=1e-3, momentun=0.9)
    with pytest.raises(ValueError, match="match no parameter"):
        llrd_optimizer(tiny_bert(), lr=1e-3, layer_patterns=[r"embeddings", r"nonexistent\.", ".*"])
    # explicit layer_patterns rescue a model without detectable layers
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    factory, kwargs = llrd_optimizer(m, lr=1.0, layer_decay=0.5, layer_patterns=[r"^0\.", r"^1\."])
    assert sorted(g["lr"] for g in factory()(m, **kwargs).param_groups) == [0.5, 0.5, 1.0, 1.0]


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer under accelerate's AcceleratedOptimizer wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def test_lr_weight_decay_and_optimizer_kind_come_from_training_arguments(tmp_path):
    model, rec = tiny_bert(), Recorder()
    args = training_args(tmp_path, max_steps=3, learning_rate=3e-3, weight_decay=0.05, lr_scheduler_type="constant",
                         optim="adamw_torch", adam_beta1=0.8, adam_epsilon=1e-6)
    emb0 = model.bert.embeddings.word_embeddings.weight.detach().clone()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TokenDataset(32), callbacks=[rec],
                                   optimizer_cls_and_kwargs=llrd_optimizer(model, layer_decay=DECAY))
    trainer.train()
    opt = _inner(trainer.optimizer)
    assert type(opt) is torch.optim.AdamW  # optim="adamw_torch", through the Trainer's own mapping
    for k in (1, 2, 3):  # the lr every group had during each real step: args.learning_rate x its layer scale
        for name, lr in rec.lrs[k].items():
            assert lr == pytest.approx(3e-3 * SCALES[name.rsplit("/", 1)[0]])
    for g in opt.param_groups:
        assert g["weight_decay"] == (0.05 if g["name"].endswith("/decay") else 0.0)
        assert g["betas"] == (0.8, args.adam_beta2) and g["eps"] == 1e-6
    assert not torch.equal(model.bert.embeddings.word_embeddings.weight, emb0)


def test_weight_decay_from_arguments_shrinks_weights_that_get_no_gradient(tmp_path):
    # token id 0 never occurs in TokenDataset, so its embedding row gets a zero gradient: AdamW moves it only
    # through decoupled weight decay, by the factor (1 - lr * scale * weight_decay) per step.
    model = tiny_bert()
    row0 = model.bert.embeddings.word_embeddings.weight[0].detach().clone()
    args = training_args(tmp_path, max_steps=2, learning_rate=1e-2, weight_decay=0.5, lr_scheduler_type="constant",
                         optim="adamw_torch")
    transformers.Trainer(model=model, args=args, train_dataset=TokenDataset(16),
                         optimizer_cls_and_kwargs=llrd_optimizer(model, layer_decay=DECAY)).train()
    factor = (1 - 1e-2 * DECAY**3 * 0.5) ** 2
    assert torch.allclose(model.bert.embeddings.word_embeddings.weight[0], row0 * factor, rtol=1e-5, atol=1e-7)


def test_explicit_arguments_win_over_training_arguments(tmp_path):
    model, rec = tiny_bert(), Recorder()
    args = training_args(tmp_path, max_steps=2, learning_rate=3e-3, weight_decay=0.05, lr_scheduler_type="constant",
                         optim="adamw_torch")
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=TokenDataset(16), callbacks=[rec],
        optimizer_cls_and_kwargs=llrd_optimizer(model, lr=1e-2, layer_decay=DECAY, weight_decay=0.0,
                                                optimizer_cls=torch.optim.SGD, momentum=0.9))
    trainer.train()
    opt = _inner(trainer.optimizer)
    assert type(opt) is torch.optim.SGD
    assert all(g["weight_decay"] == 0.0 and g["momentum"] == 0.9 for g in opt.param_groups)
    assert rec.lrs[1]["embeddings/decay"] == pytest.approx(1e-2 * DECAY**3)
    # optim="sgd" in the arguments alone picks SGD too
    model = tiny_bert()
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path, max_steps=1, optim="sgd"),
                                   train_dataset=TokenDataset(8),
                                   optimizer_cls_and_kwargs=llrd_optimizer(model, layer_decay=DECAY))
    trainer.train()
    assert type(_inner(trainer.optimizer)) is torch.optim.SGD
