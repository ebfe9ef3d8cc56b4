"""Run the `Example:` doctests of every module in the warmstart package (the docs must stay runnable).

Modules are found on disk (no import at collection time, so `pytest -k` stays fast) and imported by the test;
a module whose optional dependency is not installed is skipped with the reason.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest
from core_helpers import single_thread  # noqa: F401 (fixture)

import warmstart

pytestmark = pytest.mark.usefixtures("single_thread")


def _module_names(path: list[str], prefix: str) -> list[str]:
    names = []
    for info in pkgutil.iter_modules(path, prefix):
        names.append(info.name)
        if info.ispkg:
            names += _module_names([str(Path(path[0]) / info.name.rsplit(".", 1)[-1])], info.name + ".")
    return names


MODULES = ["warmstart"] + _module_names(list(warmstart.__path__), "warmstart.")


def test_every_package_found():
    assert {"warmstart.core.layers", "warmstart.core.freezing", "warmstart.core.param_groups",
            "warmstart.core.lora", "warmstart._optional"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    try:
        module = importlib.import_module(name)
    except ImportError as err:  # only missing optional dependencies may skip; other errors fail
        pytest.skip(f"{name} needs an optional dependency: {err}")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(module, name, globs=vars(module).copy())
    failures = []
    for test in tests:
        if test.examples and test.name.startswith(name):  # skip objects re-exported from other modules
            runner.run(test, out=failures.append)
    assert not failures, "".join(failures)
