"""Package layout (ARCHITECTURE.md "Where each concept lives"): callbacks only in ``lightning_callbacks``, the SSL
engine in ``warmstart.pretraining``, fixtures in ``warmstart.testing``, no product module importing the tests, and
every old import path still working for one release with a ``DeprecationWarning``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import warmstart

PACKAGE = Path(warmstart.__file__).parent
TESTS = Path(__file__).parent
CALLBACKS = ["DiscriminativeLR", "Finetune", "Freeze", "GradualUnfreezing", "LoRA", "LoadBackboneWeights"]
ENGINE = ["KNNMonitor", "RunCheckpoint", "SSLDataModule", "SSLModule", "TrainingInterrupted", "embed", "pretrain"]

# old module -> (new module, names that must be the very same objects)
MOVED_MODULES = {
    "warmstart.lightning_callbacks.pretraining": ("warmstart.pretraining.run", ["pretrain"]),
    "warmstart.lightning_callbacks.ssl_module": ("warmstart.pretraining.ssl_module", ["SSLModule", "warmup_cosine"]),
    "warmstart.lightning_callbacks.ssl_data": ("warmstart.pretraining.ssl_data",
                                               ["SSLDataModule", "EpochShuffleSampler", "collate_views"]),
    "warmstart.lightning_callbacks.knn": ("warmstart.pretraining.knn", ["KNNMonitor", "embed_loader"]),
    "warmstart.lightning_callbacks.run_checkpoint": ("warmstart.pretraining.run_checkpoint",
                                                     ["RunCheckpoint", "TrainingInterrupted", "parse_every"]),
    "warmstart.embed": ("warmstart.pretraining.embedding", ["embed", "eval_transform"]),
    "warmstart.yolo_integration.synthetic": ("warmstart.testing", ["make_shapes_dataset", "NAMES"]),
}
NEEDS = {"warmstart.yolo_integration.synthetic": "ultralytics", "warmstart.embed": None}  # default: lightning


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_lightning_callbacks_exports_callbacks_only():
    pytest.importorskip("lightning")
    import warmstart.lightning_callbacks as wl

    assert sorted(wl.__all__) == sorted(CALLBACKS)
    assert not set(ENGINE) & set(dir(wl))


def test_pretraining_exports_the_engine():
    import warmstart.pretraining as wp

    assert sorted(wp.__all__) == sorted(ENGINE)


def test_no_submodule_shadows_a_lazy_export():
    # `warmstart.pretrain` (and `warmstart.pretraining.pretrain` / `.embed`) are functions; a submodule of the same
    # name would replace the function as the package attribute as soon as anything imported it.
    assert not (PACKAGE / "pretrain").exists() and not (PACKAGE / "pretrain.py").exists()
    pretraining = PACKAGE / "pretraining"
    for name in importlib.import_module("warmstart.pretraining").__all__:
        assert not (pretraining / f"{name}.py").exists() and not (pretraining / name).is_dir(), name
    # warmstart/embed.py is the deprecated alias module; it is callable, so the clash stays harmless until removed.
    clashing = {n for n in warmstart._ATTRIBUTES if (PACKAGE / f"{n}.py").exists() or (PACKAGE / n).is_dir()}
    assert clashing <= {"embed"}, clashing


def test_lazy_exports_stay_functions_after_their_modules_are_imported():
    pytest.importorskip("lightning")
    import warmstart.pretraining as wp

    importlib.import_module("warmstart.pretraining.run")
    importlib.import_module("warmstart.pretraining.embedding")
    assert inspect.isfunction(wp.pretrain) and inspect.isfunction(wp.embed)
    assert warmstart.pretrain is wp.pretrain


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_product_module_imports_the_tests():
    # `tests` itself, pytest's conftest, and every helper module the tests put on sys.path (ssl_helpers, ...).
    forbidden = {"tests", "conftest"} | {p.stem for p in TESTS.rglob("*.py")}
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        bad = {m for m in _imported_modules(path) if m.split(".")[0] in forbidden}
        if bad:
            offenders[str(path.relative_to(PACKAGE.parent))] = sorted(bad)
    assert not offenders, offenders


def test_importing_the_engine_package_and_fixtures_imports_no_framework():
    proc = _run("""
        import sys
        import warmstart, warmstart.pretraining, warmstart.testing
        fn = warmstart.embed
        assert fn is warmstart.pretraining.embed and fn.__module__ == "warmstart.pretraining.embedding", fn
        frameworks = ("lightning", "pytorch_lightning", "ultralytics", "transformers", "lightly")
        bad = [m for m in frameworks if m in sys.modules]
        assert not bad, bad
        print("OK")
    """)
    assert proc.stdout.strip() == "OK", proc.stderr[-3000:]


def _ours(record) -> warnings.WarningMessage:
    return next(w for w in record if issubclass(w.category, DeprecationWarning) and " moved to " in str(w.message))


def _fresh_import(name: str):
    """Import ``name`` again (dropping the cached module), so its import-time warning fires; restore afterwards."""
    parent, _, leaf = name.rpartition(".")
    saved = sys.modules.pop(name, None)
    parent_module = sys.modules.get(parent)
    saved_attr = vars(parent_module).get(leaf) if parent_module is not None else None
    try:
        __import__(name)  # a plain import statement's path (importlib's frames are skipped by `warnings`)
        return sys.modules[name]
    finally:
        if saved is not None:
            sys.modules[name] = saved
        if parent_module is not None:
            if saved_attr is not None:
                setattr(parent_module, leaf, saved_attr)
            else:
                vars(parent_module).pop(leaf, None)


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_module_path_warns_and_returns_the_same_objects(old):
    pytest.importorskip(NEEDS.get(old, "lightning") or "torch")
    new, names = MOVED_MODULES[old]
    target = importlib.import_module(new)  # first imports (and any third-party warnings) outside the check
    importlib.import_module(old.rpartition(".")[0])
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to {new}") as record:
        module = _fresh_import(old)
    assert _ours(record).filename == __file__  # points at the importing line, not at warmstart's internals
    for name in names:
        assert getattr(module, name) is getattr(target, name), name


@pytest.mark.parametrize("name", ["KNNMonitor", "RunCheckpoint", "SSLDataModule", "SSLModule", "TrainingInterrupted",
                                  "pretrain"])
def test_old_package_attribute_warns_and_forwards(name):
    pytest.importorskip("lightning")
    import warmstart.lightning_callbacks as wl
    import warmstart.pretraining as wp

    getattr(wp, name)  # first import (and any third-party warnings) outside the check
    with pytest.warns(DeprecationWarning, match=rf"warmstart.lightning_callbacks.{name} moved to "
                                                rf"warmstart.pretraining.{name}") as record:
        value = getattr(wl, name)
    assert _ours(record).filename == __file__
    assert value is getattr(wp, name)
    with pytest.warns(DeprecationWarning):  # not cached: the old path keeps warning
        exec(f"from warmstart.lightning_callbacks import {name}", {})


def test_old_yolo_fixture_attribute_warns_and_forwards():
    pytest.importorskip("ultralytics")
    import warmstart.testing
    import warmstart.yolo_integration as wy

    assert "make_shapes_dataset" not in wy.__all__
    with pytest.warns(DeprecationWarning, match="warmstart.testing.make_shapes_dataset"):
        assert wy.make_shapes_dataset is warmstart.testing.make_shapes_dataset
    with pytest.raises(AttributeError):
        wy.NoSuchThing  # noqa: B018


def test_testing_module_writes_both_fixtures(tmp_path):
    import numpy as np

    from warmstart.core.data import write_image_folder as core_writer
    from warmstart.testing import make_shapes_dataset, write_image_folder

    assert write_image_folder is core_writer  # one implementation (core.data's copy is to become the re-export)
    root = write_image_folder(np.zeros((2, 8, 8, 3), np.uint8), [0, 1], tmp_path / "imgs")
    assert sorted(p.name for p in root.iterdir()) == ["0", "1"]
    data = make_shapes_dataset(tmp_path / "shapes", n_train=2, n_val=1, size=32)
    assert data.name == "data.yaml" and len(list((tmp_path / "shapes" / "labels" / "train").glob("*.txt"))) == 2
