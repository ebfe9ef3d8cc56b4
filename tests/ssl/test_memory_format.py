"""The SSL engine trains convolutional backbones (and a distillation teacher) channels_last on the CPU, gives the
caller's module back in torch's default layout (after an error too), learns the same thing as in the default
layout, and resumes a checkpoint of the other layout with optimizer state in its parameters' layout."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from ssl_helpers import StopAfterFirstEpoch, digit_folder, one_thread, tiny_cnn  # noqa: F401 (one_thread: autouse fixture)
from torch import nn

from warmstart.pretraining import pretrain

RUN = dict(batch_size=16, image_size=32, progress=False, accelerator="cpu", devices=1, epochs=1)


class RecordLayout(L.Callback):
    """At every training batch: which layout the student's and the teacher's conv weights are in, and the loss."""

    def __init__(self) -> None:
        self.student: list[bool] = []
        self.teacher: list[bool] = []
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        def channels_last(module: nn.Module) -> bool:
            # spatial kernels only: a 1x1 kernel's two layouts have the same strides
            convs = [m.weight for m in module.modules() if isinstance(m, nn.Conv2d) and m.weight[0, 0].numel() > 1]
            assert convs
            return all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)

        self.student.append(channels_last(pl_module.method.backbone))
        teacher = getattr(pl_module.method, "teacher", None)
        if teacher is not None:
            self.teacher.append(channels_last(teacher))
        self.losses.append(float(outputs["loss"]))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return digit_folder(tmp_path_factory.mktemp("layout_data"), 48)


def seeded(width: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return tiny_cnn(width)


def test_auto_trains_channels_last_on_cpu_and_hands_the_module_back_contiguous(data, tmp_path: Path) -> None:
    net, seen = seeded(), RecordLayout()
    summary = pretrain(tmp_path / "run", data, net, method="simclr", callbacks=[seen], **RUN)
    assert summary["memory_format"] == "channels_last"
    assert len(seen.student) == 3 and all(seen.student)
    # the caller's module trained (its weights moved) and is back in torch's default layout
    assert all(p.is_contiguous() for p in net.parameters())
    assert not torch.equal(net[0].weight, seeded()[0].weight)
    exported = load_file(tmp_path / "run" / "exported" / "backbone.safetensors")
    plain = tiny_cnn()
    plain.load_state_dict(exported)
    torch.testing.assert_close(plain[0].weight, net[0].weight.detach(), rtol=0, atol=0)


def test_contiguous_keeps_the_default_layout_and_learns_the_same(data, tmp_path: Path) -> None:
    runs = {}
    for layout in ("contiguous", "channels_last"):
        seen = RecordLayout()
        summary = pretrain(tmp_path / layout, data, seeded(), method="simclr", memory_format=layout,
                           callbacks=[seen], **RUN)
        assert summary["memory_format"] == layout
        assert all(seen.student) == (layout == "channels_last") and any(seen.student) == (layout == "channels_last")
        runs[layout] = seen.losses
    # Only the summation order of the convolutions differs: the same losses up to float rounding, at every step
    # (steps 2 and 3 run on updated weights). Weights are not compared one by one: a conv bias under BatchNorm
    # gets a near-zero gradient whose AdamW update (about lr, either sign) is rounding noise in both layouts.
    assert len(runs["contiguous"]) == 3
    torch.testing.assert_close(torch.tensor(runs["channels_last"]), torch.tensor(runs["contiguous"]),
                               rtol=1e-4, atol=1e-5)


def test_distillation_teacher_runs_channels_last_too(data, tmp_path: Path) -> None:
    seen = RecordLayout()
    summary = pretrain(tmp_path / "distill", data, seeded(), method="distillation", teacher=seeded(24, seed=1),
                       callbacks=[seen], **RUN)
    assert summary["memory_format"] == "channels_last"
    assert seen.teacher and all(seen.teacher) and all(seen.student)


def test_models_that_stay_contiguous_and_a_bad_value(data, tmp_path: Path) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16))
    summary = pretrain(tmp_path / "mlp", data, mlp, method="simclr", views="pil", **RUN)
    assert summary["memory_format"] == "contiguous"  # auto: nothing to gain without a 2-D convolution
    # A ViT-like stem (one patch convolution): DINO's momentum copy makes a second one in the method, but the
    # layout is decided by the student backbone
    patches = nn.Sequential(nn.Conv2d(3, 16, 8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    summary = pretrain(tmp_path / "dino", data, patches, method="dino", **RUN)
    assert summary["memory_format"] == "contiguous"
    with pytest.raises(ValueError, match="memory_format must be one of auto, channels_last, contiguous"):
        pretrain(tmp_path / "bad", data, seeded(), method="simclr", memory_format="nhwc", **RUN)
    assert not (tmp_path / "bad").exists()  # refused before anything was written


class RecordStateLayout(L.Callback):
    """After the checkpoint is restored: is every AdamW state tensor in its parameter's layout?"""

    def __init__(self) -> None:
        self.matched: list[bool] = []

    def on_train_start(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        for group in optimizer.param_groups:
            for param in group["params"]:
                for value in optimizer.state[param].values():
                    if isinstance(value, torch.Tensor) and value.dim() == 4:
                        self.matched.append(value.stride() == param.stride())


@pytest.mark.parametrize(("first", "then"), [("contiguous", "channels_last"), ("channels_last", "contiguous")])
def test_a_resume_in_the_other_layout_puts_the_optimizer_state_in_the_parameters_layout(
        data, tmp_path: Path, first: str, then: str) -> None:
    # Fused CPU AdamW walks a parameter and its moments by one flat index: state left in the checkpoint's layout
    # would update each weight with another weight's moments (a checkpoint from before this option is contiguous).
    out = tmp_path / "run"
    kw = dict(RUN, epochs=2, method="simclr")
    cut = pretrain(out, data, seeded(), memory_format=first, callbacks=[StopAfterFirstEpoch()], **kw)
    assert cut["epochs_completed"] == 1
    seen = RecordStateLayout()
    resumed = pretrain(out, data, seeded(), memory_format=then, resume=True, callbacks=[seen], **kw)
    assert resumed["epochs_completed"] == 2 and resumed["memory_format"] == then
    assert seen.matched and all(seen.matched)  # exp_avg and exp_avg_sq of every conv weight


class FailAtFirstBatch(L.Callback):
    def on_train_batch_end(self, *args) -> None:
        raise RuntimeError("boom")


def test_the_callers_module_comes_back_contiguous_after_an_error(data, tmp_path: Path) -> None:
    # Lightning runs no teardown hook after an exception: pretrain restores the layout itself
    net = seeded()
    with pytest.raises(RuntimeError, match="boom"):
        pretrain(tmp_path / "run", data, net, method="simclr", callbacks=[FailAtFirstBatch()], **RUN)
    assert all(p.is_contiguous() for p in net.parameters())
    assert not torch.equal(net[0].weight, seeded()[0].weight)  # one step was taken in channels_last
