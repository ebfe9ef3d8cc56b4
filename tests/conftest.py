"""Shared test setup: no network, quiet frameworks, deterministic seeds."""

from __future__ import annotations

import os
import shutil
import tempfile

# Set before any framework import: nothing in the suite may reach a hub or phone home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _tempfiles_deleted_after_each_test(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Route ``tempfile.mkdtemp()`` (used by every doc example and doctest) and subprocesses' ``TMPDIR`` into a
    folder deleted when the test ends: without this one suite run left ~3 GB of checkpoints in /tmp, and CI's
    machine ran out of disk."""
    scratch = tmp_path_factory.mktemp("tempfile")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    yield
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def one_thread():
    """torch on one thread for the test, restored afterwards: tiny models are several times faster on one thread
    when the 2 cores are shared (no OpenMP spin contention). Use with ``pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
