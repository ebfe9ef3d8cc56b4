"""`import warmstart` / `warmstart.core` work with no optional dependency importable; front ends fail clearly.

One subprocess (importing torch costs seconds) installs a meta-path finder that makes the optional packages
unimportable, runs the core on a plain nn.Module, then tries each front end with only its own dependency blocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

OPTIONAL = ["lightning", "pytorch_lightning", "transformers", "ultralytics", "timm", "lightly", "peft", "torchvision"]
FRONT_ENDS = {  # package -> (blocked dependencies, extra named in the error)
    "warmstart.lightning_callbacks": (["lightning", "pytorch_lightning"], "lightning"),
    "warmstart.hf_integration": (["transformers", "peft"], "hf"),
    "warmstart.yolo_integration": (["ultralytics"], "yolo"),
}

SCRIPT = textwrap.dedent("""
    import importlib, importlib.abc, json, sys

    BLOCKED = set()

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    OPTIONAL, FRONT_ENDS = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    BLOCKED.update(OPTIONAL)
    out = {}

    import torch
    from torch import nn
    import warmstart, warmstart.core
    from warmstart.core import UnfreezeSchedule, apply_lora, apply_schedule, freeze, layer_groups, param_groups

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    out["groups"] = [g.name for g in layer_groups(model)]
    out["frozen"] = freeze(model)
    opt = torch.optim.AdamW(param_groups(model, 1e-2, layer_decay=0.5, weight_decay=0.01))
    out["lrs"] = [g["lr"] for g in opt.param_groups]
    before = model[0].weight.clone()
    model.train()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    out["frozen_unchanged"] = torch.equal(before, model[0].weight) and not model[1].training
    out["schedule"] = apply_schedule(model, UnfreezeSchedule(num_groups=3, head_epochs=1), 1)
    try:
        apply_lora(model)
        out["lora_error"] = None
    except ImportError as err:
        out["lora_error"] = str(err)
    out["leaked"] = sorted(m for m in sys.modules if m.split(".")[0] in OPTIONAL)

    for package, blocked in FRONT_ENDS.items():
        BLOCKED.clear()
        BLOCKED.update(blocked)
        try:
            importlib.import_module(package)
            out[package] = None
        except ImportError as err:
            out[package] = str(err)
        except Exception as err:  # a crash instead of a clear ImportError is a failure we want to see
            out[package] = f"{type(err).__name__}: {err}"
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def isolated() -> dict:
    blocked = {pkg: deps for pkg, (deps, _) in FRONT_ENDS.items()}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(OPTIONAL), json.dumps(blocked)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_core_works_with_no_optional_dependency(isolated):
    assert isolated["leaked"] == []
    assert isolated["groups"] == ["0", "1", "4"]
    assert isolated["frozen"] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert isolated["lrs"] == pytest.approx([0.0025, 0.0025, 0.005, 0.01, 0.01])
    assert isolated["frozen_unchanged"] is True
    assert isolated["schedule"] == [1, 2]


def test_lora_without_peft_names_the_extra(isolated):
    assert "pip install 'warmstart[hf]'" in isolated["lora_error"]


@pytest.mark.parametrize("package", sorted(FRONT_ENDS))
def test_front_end_without_its_dependency_raises_install_hint(isolated, package):
    extra = FRONT_ENDS[package][1]
    message = isolated[package]
    assert message is not None, f"`import {package}` succeeded with {FRONT_ENDS[package][0]} blocked"
    assert f"pip install 'warmstart[{extra}]'" in message, message
