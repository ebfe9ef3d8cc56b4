"""Bad numbers and empty models are refused with a ValueError that names the argument (ARCHITECTURE.md rule 8).

Each case used to be accepted silently (a NaN lr gives NaN weights after one step, ``alpha=0`` gives adapters
that never move) or to crash deep inside torch/peft (``IndexError``, ``TypeError``). The checks live in the core
(ARCHITECTURE rule 1); the Lightning callbacks and the HF functions call the same checks when constructed, so
the error points at the line the user wrote. Cases the code already refused before (``lr <= 0``,
``layer_decay=nan`` or ``r=0`` at the core, ...) are covered by tests/core and are not repeated here.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from warmstart.core import (
    UnfreezeSchedule,
    apply_lora,
    apply_schedule,
    find_lora_targets,
    freeze,
    frozen_groups,
    lora_config,
    lora_state_dict,
    param_groups,
    unfreeze,
)

NAN, INF = math.nan, math.inf


@pytest.fixture(autouse=True)
def _one_thread():
    # Two shared CPU cores: tiny models gain nothing from more threads, and contention slows the suite.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mlp() -> nn.Sequential:
    """Layer groups '0', '2', '4' (the head)."""
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def tiny_bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, num_labels=2)
    return transformers.BertForSequenceClassification(cfg)


@contextlib.contextmanager
def raises_naming(arg: str, *more: str) -> Iterator[pytest.ExceptionInfo]:
    """``pytest.raises(ValueError)`` whose message must contain ``arg`` (and ``more``: the bad value, the range)."""
    with pytest.raises(ValueError) as info:
        yield info
    message = str(info.value)
    missing = [n for n in (arg, *more) if n not in message]
    assert not missing, f"{missing} not in the error message: {message!r}"


# ------------------------------------------------------------------------------------------ core: param_groups

PARAM_GROUP_CASES = [
    # (lr, kwargs, argument named, text the message must also hold: the bad value / the valid range)
    (NAN, {}, "lr", ("nan", "> 0")),
    (INF, {}, "lr", ("inf", "> 0")),
    ("1e-3", {}, "lr", ("'1e-3'",)),
    (True, {}, "lr", ("True",)),
    (0.1, dict(weight_decay=-1), "weight_decay", ("-1", ">= 0")),
    (0.1, dict(weight_decay=NAN), "weight_decay", ("nan", ">= 0")),
    (0.1, dict(weight_decay=INF), "weight_decay", ("inf",)),
    (0.1, dict(layer_decay="0.8"), "layer_decay", ("'0.8'", "(0, 1]")),
    (0.1, dict(backbone_lr_ratio=INF), "backbone_lr_ratio", ("inf", ">= 0")),
    (0.1, dict(group_lrs={"0": NAN}), "group_lrs['0']", ("nan", ">= 0")),
    (0.1, dict(group_lrs={"2": INF}), "group_lrs['2']", ("inf",)),
    (0.1, dict(group_lrs=[0.1]), "group_lrs", ("[0.1]",)),
]


@pytest.mark.parametrize("lr, kwargs, arg, more", PARAM_GROUP_CASES)
def test_param_groups_rejects(lr, kwargs, arg, more):
    with raises_naming(arg, *more):
        param_groups(mlp(), lr, **kwargs)


@pytest.mark.parametrize("call", [
    lambda m: param_groups(m, 0.1),
    lambda m: freeze(m),
    lambda m: unfreeze(m),
    lambda m: frozen_groups(m),
    lambda m: apply_schedule(m, UnfreezeSchedule(num_groups=1), 0),
    lambda m: apply_lora(m),
    lambda m: apply_lora(m, head=[]),
    lambda m: find_lora_targets(m),
    lambda m: lora_config(m),
    lambda m: lora_state_dict(m),
], ids=["param_groups", "freeze", "unfreeze", "frozen_groups", "apply_schedule", "apply_lora",
        "apply_lora_head", "find_lora_targets", "lora_config", "lora_state_dict"])
def test_model_without_parameters(call):
    # An nn.Sequential() used to give [] (nothing frozen, an empty optimizer) or an IndexError in the layer map.
    with raises_naming("model", "has no parameters"):
        call(nn.Sequential())


# ------------------------------------------------------------------------------------------ core: LoRA

LORA_CASES = [
    (dict(alpha=0), "alpha", ("0", "> 0")),
    (dict(alpha=-16), "alpha", ("-16",)),
    (dict(alpha=NAN), "alpha", ("nan",)),
    (dict(alpha=INF), "alpha", ("inf",)),
    (dict(r=2.5), "r", ("2.5", ">= 1")),
    (dict(r=NAN), "r", ("nan",)),
    (dict(r="8"), "r", ("'8'",)),
    (dict(dropout=1.0), "dropout", ("1.0", "[0, 1)")),
    (dict(dropout=NAN), "dropout", ("nan", "[0, 1)")),
]


@pytest.mark.parametrize("kwargs, arg, more", LORA_CASES)
def test_apply_lora_rejects(kwargs, arg, more):
    model = mlp()
    with raises_naming(arg, *more):
        apply_lora(model, **kwargs)
    assert not any("lora_" in n for n, _ in model.named_parameters()), "a refused apply_lora must not inject"


# ------------------------------------------------------------------------------------------ core: schedule

@pytest.mark.parametrize("kwargs, arg", [
    (dict(head_epochs=NAN), "head_epochs"),
    (dict(every=NAN), "every"),
    (dict(every=INF), "every"),
    (dict(at=[NAN, 0, 0]), "at[0]"),
    (dict(max_groups=1.5), "max_groups"),
])
def test_unfreeze_schedule_rejects(kwargs, arg):
    # NaN compares False with everything: the schedule would never unfreeze anything, silently.
    with raises_naming(arg):
        UnfreezeSchedule(num_groups=3, **kwargs)


# ------------------------------------------------------------------------------------------ Lightning

DLR_CASES = [
    (dict(layer_decay=NAN), "layer_decay"),
    (dict(layer_decay=0.0), "layer_decay"),
    (dict(layer_decay=1.5), "layer_decay"),
    (dict(backbone_lr_ratio=NAN), "backbone_lr_ratio"),
    (dict(backbone_lr_ratio=-0.5), "backbone_lr_ratio"),
    (dict(backbone_lr_ratio=INF), "backbone_lr_ratio"),
    (dict(group_lrs={"head": NAN}), "group_lrs['head']"),
    (dict(group_lrs={"head": -1e-3}), "group_lrs['head']"),
    (dict(layer_decay=0.5, weight_decay=-1), "weight_decay"),
    (dict(layer_decay=0.5, weight_decay=NAN), "weight_decay"),
]


@pytest.mark.parametrize("kwargs, arg", DLR_CASES)
def test_discriminative_lr_constructor_rejects(kwargs, arg):
    lc = pytest.importorskip("warmstart.lightning_callbacks")
    with raises_naming(arg):
        lc.DiscriminativeLR(**kwargs)


@pytest.mark.parametrize("kwargs, arg", [(k, a) for k, a, _ in LORA_CASES])
def test_lightning_lora_constructor_rejects(kwargs, arg):
    lc = pytest.importorskip("warmstart.lightning_callbacks")
    with raises_naming(arg):
        lc.LoRA(**kwargs)


@pytest.mark.parametrize("kwargs, arg", [
    (dict(pattern="("), "pattern"),
    (dict(groups=1.5), "group selector"),
    (dict(groups=["stem", NAN]), "group selector"),
])
def test_freeze_constructor_rejects(kwargs, arg):
    lc = pytest.importorskip("warmstart.lightning_callbacks")
    with raises_naming(arg):
        lc.Freeze(**kwargs)


@pytest.mark.parametrize("make", ["Freeze", "LoRA", "DiscriminativeLR"])
def test_lightning_setup_on_module_without_parameters(make):
    lc = pytest.importorskip("warmstart.lightning_callbacks")
    cb = lc.DiscriminativeLR(layer_decay=0.5) if make == "DiscriminativeLR" else getattr(lc, make)()
    with raises_naming("model", "has no parameters"):
        cb.setup(types.SimpleNamespace(callbacks=[cb]), nn.Sequential(nn.ReLU()), "fit")


# ------------------------------------------------------------------------------------------ Hugging Face

@pytest.fixture(scope="module")
def bert_factory():
    pytest.importorskip("peft")
    hf = pytest.importorskip("warmstart.hf_integration")
    return hf


@pytest.mark.parametrize("kwargs, arg", [
    (dict(lr=NAN), "lr"),
    (dict(lr=INF), "lr"),
    (dict(lr="2e-5"), "lr"),
    (dict(lr=2e-5, layer_decay="0.9"), "layer_decay"),
    (dict(lr=2e-5, weight_decay=INF), "weight_decay"),
])
def test_hf_llrd_optimizer_rejects(bert_factory, kwargs, arg):
    with raises_naming(arg):
        bert_factory.llrd_optimizer(tiny_bert(), **kwargs)


def test_hf_llrd_optimizer_model_without_parameters(bert_factory):
    with raises_naming("model", "has no parameters"):
        bert_factory.llrd_optimizer(nn.Sequential(nn.ReLU()), lr=2e-5)


@pytest.mark.parametrize("kwargs, arg, more", LORA_CASES)
def test_hf_apply_lora_rejects(bert_factory, kwargs, arg, more):
    with raises_naming(arg, *more):
        bert_factory.apply_lora(tiny_bert(), **kwargs)


def test_hf_apply_lora_model_without_parameters(bert_factory):
    with raises_naming("model", "has no parameters"):
        bert_factory.apply_lora(nn.Sequential(nn.ReLU()))


# ------------------------------------------------------------------------------------------ valid input

def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_boundary_values_still_train():
    """The smallest valid settings (r=1, dropout=0, weight_decay=0, a tiny lr and layer decay, a 0-d tensor lr)
    pass validation and a real training step moves exactly the parameters that should move."""
    torch.manual_seed(0)
    model = apply_lora(mlp(), r=1, alpha=1, dropout=0.0)
    opt = torch.optim.AdamW(param_groups(model, 1e-5, layer_decay=0.1, weight_decay=0.0), lr=1e-5)
    assert min(g["lr"] for g in opt.param_groups) == pytest.approx(1e-7)
    before = _snapshot(model)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # lora_A gets no gradient on the first step (lora_B starts at zero); everything else trainable moves.
    expected = {n for n in trainable if "lora_A" not in n}
    assert moved == expected and any("lora_B" in n for n in moved) and "4.weight" in moved

    # Zero is valid where it means "do not train this group by lr": backbone_lr_ratio=0, group_lrs 0.
    plain = mlp()
    for kwargs in (dict(backbone_lr_ratio=0.0), dict(group_lrs={"0": 0.0, "2": 0.0})):
        before = _snapshot(plain)
        opt = torch.optim.SGD(param_groups(plain, torch.tensor(0.1), **kwargs), lr=0.1)
        nn.functional.cross_entropy(plain(x), y).backward()
        opt.step()
        opt.zero_grad()
        moved = {n for n, p in plain.named_parameters() if not torch.equal(p, before[n])}
        assert moved == {"4.weight", "4.bias"}, kwargs
