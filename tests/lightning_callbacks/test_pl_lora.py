"""LoRA callback: adapters injected before the optimizer, resume from a checkpoint, merged plain export."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from pl_helpers import (
    DigitsCNN,
    digits,
    loader,
    snapshot,
    trainer,
)

from warmstart.lightning_callbacks import DiscriminativeLR, LoRA

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_lora_trains_adapters_head_and_bn_only(tmp_path):
    model = DigitsCNN()
    before = snapshot(model)
    cbs = [LoRA(r=2, alpha=4), DiscriminativeLR(layer_decay=0.5)]
    trainer(tmp_path, cbs, max_epochs=1, limit_train_batches=3).fit(model, loader(96))
    after = model.state_dict()
    # the base conv weights are frozen (peft moved them under base_layer); adapters, head and BatchNorm learn
    for conv in ("stem.0", "block1.0", "block2.0"):
        assert torch.equal(before[f"{conv}.weight"], after[f"{conv}.base_layer.weight"])
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert not torch.equal(before["stem.1.weight"], after["stem.1.weight"])
    lora_b = [n for n, _ in model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 3 and all(model.get_parameter(n).abs().sum() > 0 for n in lora_b)
    opt = model.trainer.optimizers[0]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(model.get_parameter(n)) in in_opt for n in lora_b)  # injected before configure_optimizers


def _lora_run(tmp_path, epochs, ckpt_path=None, save_to=None):
    torch.manual_seed(0)
    model = DigitsCNN()
    tr = trainer(tmp_path, [LoRA(r=2)], max_epochs=epochs, limit_train_batches=3)
    tr.fit(model, loader(96), ckpt_path=ckpt_path)
    if save_to:
        tr.save_checkpoint(save_to)
    return model


def test_resume_from_checkpoint_restores_adapters(tmp_path):
    full = snapshot(_lora_run(tmp_path, 2))
    ckpt = tmp_path / "lora.ckpt"
    _lora_run(tmp_path, 1, save_to=ckpt)
    assert any("lora_A" in k for k in torch.load(ckpt, weights_only=False)["state_dict"])
    resumed = snapshot(_lora_run(tmp_path, 2, ckpt_path=ckpt))
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)


PLAIN_LOAD = textwrap.dedent("""
    import sys
    sys.modules["warmstart"] = None  # importing them now raises ImportError: the load must not need them
    sys.modules["peft"] = None
    import torch
    from torch import nn
    from safetensors.torch import load_file

    class DigitsCNN(nn.Module):  # the user's architecture, written in plain torch
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.block1 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.block2 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.block2(self.block1(self.stem(x))))

    model = DigitsCNN()
    model.load_state_dict(load_file(sys.argv[1]))  # strict: every key matches, none extra
    ref = torch.load(sys.argv[2])
    out = model.eval()(ref["x"])
    assert torch.allclose(out, ref["y"], atol=1e-5), (out - ref["y"]).abs().max()
    print("OK")
""")


def test_merge_on_end_saves_plain_weights_loadable_without_peft_or_warmstart(tmp_path):
    model = DigitsCNN()
    merged = tmp_path / "merged.safetensors"
    cb = LoRA(r=2, merge_on_end=True, merged_path=str(merged))
    trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=2).fit(model, loader(64))
    assert merged.exists() and cb.saved_path == merged
    assert not any("lora" in n for n, _ in model.named_parameters())  # the module is plain again
    x = digits(16).tensors[0]
    with torch.no_grad():
        torch.save({"x": x, "y": model.eval()(x)}, tmp_path / "ref.pt")
    script = tmp_path / "plain_load.py"
    script.write_text(PLAIN_LOAD)
    proc = subprocess.run([sys.executable, str(script), str(merged), str(tmp_path / "ref.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


def test_bad_targets_fail_at_setup(tmp_path):
    with pytest.raises(ValueError, match="match no"):
        trainer(tmp_path, [LoRA(targets=r"^nothing_here$")], max_epochs=1).fit(DigitsCNN(), loader(32))
