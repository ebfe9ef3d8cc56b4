"""The package is lazy, exports the agreed names, and fails with the install hint without Lightning."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("lightning")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_missing_lightning_names_the_extra():
    proc = _run("""
        import sys
        sys.modules["lightning"] = None  # as if not installed
        try:
            import warmstart.lightning_callbacks
        except ImportError as err:
            print("MSG", err)
    """)
    assert "pip install 'warmstart[lightning]'" in proc.stdout, proc.stderr[-2000:]


def test_lazy_exports():
    # In-process (a fresh interpreter would spend most of this test importing Lightning again): re-import the
    # package alone and check that its submodules load only on first use; then put the originals back.
    import importlib

    import warmstart

    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.startswith("warmstart.lightning_callbacks")}
    saved_attr = warmstart.__dict__.get("lightning_callbacks")
    try:
        wl = importlib.import_module("warmstart.lightning_callbacks")
        assert "warmstart.lightning_callbacks.unfreezing" not in sys.modules
        assert wl.GradualUnfreezing.__name__ == "GradualUnfreezing"
        assert "warmstart.lightning_callbacks.unfreezing" in sys.modules
        assert "warmstart.lightning_callbacks.lora" not in sys.modules
        assert sorted(wl.__all__) == sorted(["DiscriminativeLR", "Finetune", "Freeze", "GradualUnfreezing", "LoRA",
                                             "LoadBackboneWeights"])  # the SSL engine is warmstart.pretraining
    finally:
        for k in [k for k in sys.modules if k.startswith("warmstart.lightning_callbacks")]:
            del sys.modules[k]
        sys.modules.update(saved)
        if saved_attr is not None:
            warmstart.lightning_callbacks = saved_attr
        else:
            warmstart.__dict__.pop("lightning_callbacks", None)


def test_every_export_resolves():
    import warmstart.lightning_callbacks as wl

    for name in wl.__all__:
        assert getattr(wl, name).__name__ == name
    with pytest.raises(AttributeError):
        wl.NoSuchThing  # noqa: B018
