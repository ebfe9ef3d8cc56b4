"""The HF front end is lazy and fails with the install command when its extra is missing."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


def test_importing_the_package_does_not_import_transformers():
    code = ("import sys, warmstart, warmstart.hf_integration as h; assert 'GradualUnfreezing' in h.__all__; "
            "assert 'transformers' not in sys.modules and 'peft' not in sys.modules, 'eager import'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("module", ["unfreezing", "optimizer", "lora", "vision"])
def test_missing_extra_names_the_install_command(monkeypatch, module):
    monkeypatch.setitem(sys.modules, "transformers", None)  # None in sys.modules makes `import` raise
    monkeypatch.setitem(sys.modules, "peft", None)
    monkeypatch.delitem(sys.modules, f"warmstart.hf_integration.{module}", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'warmstart\[hf\]'"):
        importlib.import_module(f"warmstart.hf_integration.{module}")
