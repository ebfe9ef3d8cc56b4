"""GradualUnfreezing in real transformers.Trainer runs: what is frozen when, what moved, resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from hf_helpers import ImageDataset, Recorder, TokenDataset, tiny_bert, training_args

transformers = pytest.importorskip("transformers")

from warmstart.core import group_names, layer_groups  # noqa: E402
from warmstart.hf_integration import GradualUnfreezing, llrd_optimizer  # noqa: E402

GROUPS = ["embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "head"]


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _moved(before, model, names) -> bool:
    params = dict(model.named_parameters())
    return any(not torch.equal(before[n], params[n]) for n in names)


class EpochSnapshots(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.at_epoch_end: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.at_epoch_end.append(_snapshot(model))


def test_epoch_schedule_unfreezes_one_group_per_epoch_from_the_top(tmp_path):
    model = tiny_bert()
    assert group_names(layer_groups(model)) == GROUPS
    start = _snapshot(model)
    rec, snaps = Recorder(), EpochSnapshots()
    cb = GradualUnfreezing(head_epochs=1, every=1, max_groups=3)  # embeddings never train
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path, num_train_epochs=3),
                                   train_dataset=TokenDataset(32), callbacks=[cb, rec, snaps])
    trainer.train()

    # 4 steps per epoch; frozen set during each step
    assert all(rec.frozen[s] == GROUPS[:3] for s in range(1, 5))
    assert all(rec.frozen[s] == GROUPS[:2] for s in range(5, 9))
    assert all(rec.frozen[s] == GROUPS[:1] for s in range(9, 13))
    assert cb.trainable_groups == GROUPS[1:]
    # behaviour, not flags: what actually moved in each epoch
    params = {g.name: g.param_names for g in layer_groups(model)}
    e0, e1, _ = snaps.at_epoch_end
    assert _moved(start, model, params["head"])
    assert not _moved(start, model, params["embeddings"])
    assert all(torch.equal(start[n], e0[n]) for n in params["bert.encoder.layer.1"])       # frozen in epoch 0
    assert any(not torch.equal(e0[n], e1[n]) for n in params["bert.encoder.layer.1"])      # trained in epoch 1
    assert all(torch.equal(start[n], e1[n]) for n in params["bert.encoder.layer.0"])       # frozen until epoch 2
    assert _moved(e1, model, params["bert.encoder.layer.0"])


def test_step_unit_and_explicit_at_by_name(tmp_path):
    rec = Recorder()
    # every group is named in `at` or in `freeze` (the plan's one meaning; left-out groups used to stay frozen)
    cb = GradualUnfreezing(unit="step", at={"head": 0, "bert.encoder.layer.1": 2, "bert.encoder.layer.0": 4},
                           freeze="embeddings")
    trainer = transformers.Trainer(model=tiny_bert(), args=training_args(tmp_path, max_steps=6),
                                   train_dataset=TokenDataset(64), callbacks=[cb, rec])
    trainer.train()
    # rec.frozen[k] = frozen set during step k-1 (global_step k after it); embeddings are in `freeze`
    assert [rec.frozen[k] for k in range(1, 7)] == [GROUPS[:3]] * 2 + [GROUPS[:2]] * 2 + [GROUPS[:1]] * 2


def _resume_run(tmp_path, resume: str | None, restore: bool = False):
    model = tiny_bert()
    rec = Recorder()
    args = training_args(tmp_path, num_train_epochs=3, save_strategy="steps", save_steps=6,
                         lr_scheduler_type="linear", warmup_steps=2,
                         restore_callback_states_from_checkpoint=restore)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=TokenDataset(32),
        callbacks=[GradualUnfreezing(head_epochs=1, max_groups=3), rec],
        optimizer_cls_and_kwargs=llrd_optimizer(model, lr=1e-3, layer_decay=0.5, weight_decay=0.01))
    trainer.train(resume_from_checkpoint=resume)
    return model, rec


def test_resume_mid_schedule_matches_an_uninterrupted_run(tmp_path):
    full_model, full = _resume_run(tmp_path / "full", None)
    checkpoint = tmp_path / "full" / "checkpoint-6"  # mid-epoch 1 (4 steps per epoch)
    saved = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["GradualUnfreezing"]
    assert saved["args"]["head_epochs"] == 1 and saved["attributes"]["_checkpoint_group_names"] == GROUPS

    for restore in (False, True):  # the schedule is a pure function of the restored step either way
        model, resumed = _resume_run(tmp_path / f"resumed{restore}", str(checkpoint), restore)
        assert sorted(resumed.frozen) == list(range(7, 13))
        for step in range(7, 13):
            assert resumed.frozen[step] == full.frozen[step]
            assert resumed.lrs[step] == pytest.approx(full.lrs[step], rel=1e-9)
        for (name, p), q in zip(model.named_parameters(), full_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_bad_input_fails_early_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="unit must be one of"):
        GradualUnfreezing(unit="minute")
    with pytest.raises(ValueError, match="every must be > 0"):
        GradualUnfreezing(every=0)

    def train(cb, model=None, **kw):
        model = model or tiny_bert()
        transformers.Trainer(model=model, args=training_args(tmp_path, max_steps=1, **kw),
                             train_dataset=TokenDataset(8), callbacks=[cb]).train()

    with pytest.raises(ValueError, match=r"unknown layer group 'encoder.layer.9'.*valid groups are"):
        train(GradualUnfreezing(at={"encoder.layer.9": 1}))
    with pytest.raises(ValueError, match="lists 6 starts but the model has 4 layer groups"):
        train(GradualUnfreezing(at=[5, 4, 3, 2, 1, 0]))  # a schedule longer than the model

    class OneLayer(transformers.PreTrainedModel):  # a model whose layers cannot be detected
        config_class = transformers.PretrainedConfig

        def __init__(self):
            super().__init__(transformers.PretrainedConfig())
            self.proj = torch.nn.Linear(8, 2)

        def forward(self, input_ids=None, labels=None, **kwargs):
            logits = self.proj(input_ids.float())
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    with pytest.raises(ValueError, match="no layer structure.*layer_patterns"):
        train(GradualUnfreezing(), model=OneLayer())

    frozen_first = tiny_bert()
    for p in frozen_first.bert.parameters():
        p.requires_grad_(False)  # the default optimizer then leaves these out for good
    with pytest.raises(ValueError, match="llrd_optimizer"):
        train(GradualUnfreezing(), model=frozen_first)

    cb = GradualUnfreezing()
    cb._checkpoint_group_names = ["stem", "head"]  # as restored from a checkpoint of another architecture
    with pytest.raises(ValueError, match=r"checkpoint was trained with layer groups \['stem', 'head'\].*same model"):
        train(cb)

    with pytest.warns(UserWarning, match="never train"):  # open-ended head_epochs/every: a warning
        train(GradualUnfreezing(head_epochs=5), num_train_epochs=1)
    with pytest.raises(ValueError, match="never train"):  # a start the plan names explicitly: an error
        train(GradualUnfreezing(at={"embeddings": 3, "bert.encoder.layer.0": 2, "bert.encoder.layer.1": 1}),
              num_train_epochs=1)
    with pytest.raises(ValueError, match=r"never trains group\(s\) \['embeddings'\]"):  # left out of `at`
        train(GradualUnfreezing(at={"bert.encoder.layer.0": 0, "bert.encoder.layer.1": 0}))


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_batchnorm_policy_in_frozen_groups_of_an_hf_resnet(tmp_path, bn):
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3))
    stem_bn = model.resnet.embedder.embedder.normalization
    stats, weight = stem_bn.running_mean.clone(), stem_bn.weight.detach().clone()
    cb = GradualUnfreezing(max_groups=1, bn=bn)  # only the head ever trains
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path, max_steps=2),
                                   train_dataset=ImageDataset(16), callbacks=[cb])
    trainer.train()
    assert torch.equal(stem_bn.weight, weight)  # affine frozen under both policies
    assert torch.equal(stem_bn.running_mean, stats) == (bn == "eval")  # statistics: frozen only for "eval"


def test_ddp_check_follows_the_trainers_find_unused_rule(tmp_path):
    from warmstart.hf_integration.unfreezing import _ddp_finds_unused

    model = tiny_bert()
    assert _ddp_finds_unused(training_args(tmp_path), model)  # unset, no checkpointing: the Trainer finds unused
    assert not _ddp_finds_unused(training_args(tmp_path, ddp_find_unused_parameters=False), model)
    model.gradient_checkpointing_enable()  # unset + checkpointing: the Trainer turns find_unused off -> refuse
    assert not _ddp_finds_unused(training_args(tmp_path), model)
    assert _ddp_finds_unused(training_args(tmp_path, ddp_find_unused_parameters=True), model)
