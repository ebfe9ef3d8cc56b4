"""Plan ``anchor`` (L2-SP) in a real ``transformers.Trainer``: the update of the loss term, only pretrained weights
pulled, the starting values kept in ``output_dir`` for resume (a SIGKILL resume: tests/faults)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from hf_helpers import TokenDataset, tiny_bert, training_args, transformers

from warmstart.core.controller import FinetuneController
from warmstart.core.plan import FinetunePlan
from warmstart.hf_integration import FinetuneCallback, plan_optimizer
from warmstart.hf_integration.plan import ANCHOR_FILE, check_anchor_arguments

ALPHA = 0.5


class ExplicitL2SP(transformers.Trainer):
    """The paper's form: ``alpha / 2 * ||w - w0||^2`` over the anchored parameters, added to the loss by hand."""

    def __init__(self, *args, anchored: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.start = {n: p.detach().clone() for n, p in self.model.named_parameters() if n in anchored}

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        loss = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        params = dict(model.named_parameters())
        pull = 0.5 * ALPHA * sum(((params[n] - w0) ** 2).sum() for n, w0 in self.start.items())
        return (loss[0] + pull, loss[1]) if return_outputs else loss + pull


def _args(tmp_path, **overrides):
    # no clipping: the Trainer clips before the anchor's gradient is added, the loss term would be clipped too
    return training_args(tmp_path, max_steps=6, max_grad_norm=0.0, **overrides)


def test_anchor_gives_the_update_of_the_l2sp_loss_term_and_keeps_the_body_closer(tmp_path):
    init = tiny_bert().state_dict()

    def fresh():
        model = tiny_bert()
        model.load_state_dict(init)
        return model

    plan = {"anchor": ALPHA}
    anchored_model = fresh()
    cb = FinetuneCallback(plan)
    # saves checkpoints (at step 100: never in this run), so the start is written for a resume to read
    transformers.Trainer(model=anchored_model, args=_args(tmp_path / "a", save_strategy="steps", save_steps=100),
                         train_dataset=TokenDataset(48), callbacks=[cb],
                         optimizer_cls_and_kwargs=plan_optimizer(anchored_model, plan)).train()
    names = list(FinetuneController(fresh(), FinetunePlan()).anchored_parameters())  # every non-head parameter
    explicit_model, plain_model = fresh(), fresh()
    ExplicitL2SP(model=explicit_model, args=_args(tmp_path / "b"), train_dataset=TokenDataset(48),
                 anchored=names).train()
    transformers.Trainer(model=plain_model, args=_args(tmp_path / "c"), train_dataset=TokenDataset(48)).train()

    a, e, p = (dict(m.named_parameters()) for m in (anchored_model, explicit_model, plain_model))
    for name in a:  # every parameter, head included, follows the loss-term run (6 AdamW steps)
        torch.testing.assert_close(a[name], e[name], rtol=1e-4, atol=1e-5, msg=name)
    assert set(cb.controller.anchor.params) == set(names) and not any(n.startswith("classifier") for n in names)

    def moved(params):
        return sum(float((params[n] - init[n]).pow(2).sum()) for n in names) ** 0.5

    assert moved(a) < 0.9 * moved(p)
    assert cb.controller.anchor.distance() == pytest.approx(moved(a), rel=1e-5)
    # the starting values are in output_dir for a resumed run
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "a" / ANCHOR_FILE))
    assert saved.keys() == set(names) and all(torch.equal(saved[n], init[n]) for n in names)


def test_anchor_writes_no_file_when_the_run_saves_no_checkpoints(tmp_path):
    model = tiny_bert()
    plan = {"anchor": ALPHA}
    cb = FinetuneCallback(plan)
    transformers.Trainer(model=model, args=_args(tmp_path), train_dataset=TokenDataset(16),
                         callbacks=[cb], optimizer_cls_and_kwargs=plan_optimizer(model, plan)).train()
    assert cb.controller.anchor.values  # the pull ran from the captured start
    assert not (tmp_path / ANCHOR_FILE).exists()


def test_anchor_needs_the_callback_and_refuses_fp16_without_clipping(tmp_path):
    """plan_optimizer alone would build the groups and never pull: the Trainer's optimizer build refuses it."""
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"anchor=0.1 \(L2-SP\) is applied by FinetuneCallback"):
        transformers.Trainer(model=model, args=_args(tmp_path), train_dataset=TokenDataset(8),
                             optimizer_cls_and_kwargs=plan_optimizer(model, {"anchor": 0.1})).train()
    with pytest.raises(ValueError, match=r"anchor \(L2-SP\) with fp16 needs gradient clipping"):
        check_anchor_arguments(SimpleNamespace(fp16=True, max_grad_norm=0.0))  # fp16 needs a GPU to build
    check_anchor_arguments(SimpleNamespace(fp16=True, max_grad_norm=1.0))  # unscaled inside the clipping


def test_resume_refuses_a_checkpoint_that_names_no_starting_weights(tmp_path, monkeypatch):
    plan = {"anchor": ALPHA}
    out = tmp_path / "run"
    model = tiny_bert()
    transformers.Trainer(model=model, args=_args(out, save_strategy="steps", save_steps=3),
                         train_dataset=TokenDataset(48), callbacks=[FinetuneCallback(plan)],
                         optimizer_cls_and_kwargs=plan_optimizer(model, plan)).train()
    checkpoint = out / "checkpoint-3"
    state_file = checkpoint / "trainer_state.json"
    state = json.loads(state_file.read_text())
    for callback in state["stateful_callbacks"].values():
        for entry in callback if isinstance(callback, list) else [callback]:
            entry.get("attributes", {}).pop("_anchor_file", None)
    state_file.write_text(json.dumps(state))
    # a file of the same name where the process runs: another run's start, which must not be taken instead
    monkeypatch.chdir(tmp_path)
    (out / ANCHOR_FILE).rename(tmp_path / ANCHOR_FILE)
    model = tiny_bert()
    trainer = transformers.Trainer(model=model, args=_args(out, save_strategy="steps", save_steps=3),
                                   train_dataset=TokenDataset(48), callbacks=[FinetuneCallback(plan)],
                                   optimizer_cls_and_kwargs=plan_optimizer(model, plan))
    with pytest.raises(ValueError, match="names no starting weights"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
