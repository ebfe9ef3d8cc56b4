"""`warmstart pretrain` under faults, done for real: SIGKILL mid-epoch, SIGTERM/SIGINT, a damaged checkpoint on
--resume, and --overwrite next to the user's own files. Nothing is simulated with `trainer.should_stop`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from warmstart.testing import write_image_folder

HERE = Path(__file__).parent
WORKER = HERE / "pretrain_kill_worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
BATCHES_PER_EPOCH = 6  # 48 images / batch 8


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    return write_image_folder(rng.integers(0, 255, (48, 32, 32, 3), dtype=np.uint8), None,
                              tmp_path_factory.mktemp("kill_data"))


@pytest.fixture(scope="module")
def bands(tmp_path_factory) -> Path:
    """48 four-band 16-bit arrays (a satellite-like ``channels=4`` folder)."""
    root = tmp_path_factory.mktemp("kill_bands")
    rng = np.random.default_rng(1)
    for i in range(48):
        np.save(root / f"{i:02d}.npy", rng.integers(0, 65535, (32, 32, 4), dtype=np.uint16))
    return root


def _worker(out: Path, data: Path, epochs: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(out), str(data), str(epochs), *extra], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _progress(out: Path) -> list[tuple[int, int]]:
    path = Path(f"{out}.progress")
    lines = path.read_text().split("\n") if path.exists() else []
    return [tuple(map(int, line.split())) for line in lines if line.strip()]


def _finish(proc: subprocess.Popen, timeout: float = 180.0) -> int:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory) -> Path:
    """Weights of a tiny CNN teacher (another seed than the student), saved as a user would pass them."""
    from warmstart.core.checkpoints import save_weights

    torch.manual_seed(7)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    return save_weights(net.state_dict(), tmp_path_factory.mktemp("teacher") / "teacher.safetensors")


@pytest.mark.parametrize("kind", ["rgb", "channels", "distillation"])
def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(kind: str, request, tmp_path: Path) -> None:
    # RGB images (BYOL), 4-band float images (channels=4: float32 cache, intensity views) and distillation from a
    # frozen teacher the checkpoint leaves out (rebuilt from its weights on resume), all on batched views
    images = request.getfixturevalue("bands" if kind == "channels" else "images")
    flags = {"rgb": (), "channels": ("--channels", "4"),
             "distillation": ("--teacher", str(request.getfixturevalue("teacher_weights")))}[kind]
    epochs = 4
    reference = _worker(tmp_path / "full", images, epochs, *flags)
    killed = _worker(tmp_path / "cut", images, epochs, "--sleep", "0.3", *flags)
    try:
        # Past 2 whole epochs and 3 batches into the third: the newest checkpoint (every 2 steps) is mid-epoch.
        _wait_for(lambda: len(_progress(tmp_path / "cut")) >= 2 * BATCHES_PER_EPOCH + 3, killed, "epoch 3")
        killed.send_signal(signal.SIGKILL)
    finally:
        _finish(killed)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut" / "exported").exists()  # it really died before the end
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    loader_state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert ckpt["epoch"] == 2 and 0 < loader_state["batches_done"] < BATCHES_PER_EPOCH, loader_state
    if kind == "distillation":  # the frozen teacher is not in the checkpoint, only its fingerprint
        assert not [k for k in ckpt["state_dict"] if k.startswith("method.teacher.")]
        assert len(ckpt["warmstart_external_modules"]["teacher"]) == 64

    resumed = _worker(tmp_path / "cut", images, epochs, "--resume", *flags)
    assert _finish(resumed) == 0, resumed.stderr.read()[-3000:]
    assert _finish(reference) == 0, reference.stderr.read()[-3000:]
    # The resumed session trained exactly the batches after the checkpoint: no replay, no gap.
    logged = [step for _, step in _progress(tmp_path / "cut")]
    killed_steps = len(logged) - next(i for i in range(len(logged) - 1, 0, -1) if logged[i] <= logged[i - 1])
    resumed_steps = logged[len(logged) - killed_steps:]
    assert resumed_steps == list(range(ckpt["global_step"] + 1, epochs * BATCHES_PER_EPOCH + 1)), logged
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == epochs * BATCHES_PER_EPOCH
    assert summary["views"] == "batched" and summary.get("channels") == (4 if kind == "channels" else None)
    full = load_file(tmp_path / "full" / "exported" / "backbone.safetensors")
    again = load_file(tmp_path / "cut" / "exported" / "backbone.safetensors")
    assert full.keys() == again.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), key


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_writes_a_checkpoint_and_partial_summary_then_resume_finishes(images: Path, tmp_path: Path,
                                                                                   sig: int) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "warmstart.cli", "pretrain", "--data", str(images), "--model",
           "torchvision/resnet18", "--image-size", "32", "--batch-size", "8", "--epochs", "30", "--out", str(out),
           "--accelerator", "cpu", "--devices", "1", "--no-progress", "--checkpoint-every", "1"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for((out / "checkpoints" / "last.ckpt").is_file, proc, "the first step checkpoint")
        proc.send_signal(sig)
        code = _finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert code == 128 + sig, err[-2000:]  # non-zero, the shell's code for "ended by this signal"
    assert "--resume" in err and "interrupted by" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == sig
    assert 1 <= summary["steps"] < 30 * BATCHES_PER_EPOCH
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == summary["steps"]  # the checkpoint holds every step that was trained
    assert not list((out / "checkpoints").glob(".*tmp"))  # no half-written file left behind
    manifest = json.loads((out / ".warmstart-manifest.json").read_text())["files"]
    assert "checkpoints/last.ckpt" in manifest and "summary.json" in manifest


def test_damaged_checkpoint_on_resume_is_refused_by_name(images: Path, tmp_path: Path) -> None:
    from warmstart.pretraining import pretrain

    run = dict(batch_size=8, image_size=32, progress=False, accelerator="cpu", devices=1, epochs=1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    pretrain(tmp_path / "run", images, net, **run)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    good = ckpt.read_bytes()
    damaged = {
        "truncated": good[: len(good) // 2],
        "random bytes": np.random.default_rng(0).bytes(4096),
        # A pickle that would run code when loaded: weights_only must refuse it, never execute it.
        "code pickle": b"cos\nsystem\n(S'echo pwned'\ntR.",
    }
    for _what, data in damaged.items():
        ckpt.write_bytes(data)
        with pytest.raises(ValueError, match=r"cannot resume: .*last\.ckpt is damaged.*overwrite"):
            pretrain(tmp_path / "run", images, net, resume=True, **run)
    torch.save({"epoch": 3}, ckpt)  # loads, but is no Lightning checkpoint
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        pretrain(tmp_path / "run", images, net, resume=True, **run)


def test_overwrite_removes_only_the_previous_runs_files(images: Path, tmp_path: Path) -> None:
    from warmstart.pretraining import pretrain

    run = dict(batch_size=8, image_size=32, progress=False, accelerator="cpu", devices=1, epochs=1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    out = tmp_path / "run"
    pretrain(out, images, net, **run)
    mine = [out / "checkpoints" / "mine.txt", out / "notes.md", out / "logs" / "my_plots" / "loss.png",
            out / "exported" / "README.txt"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("the user's own file")
    old_events = list((out / "logs" / "tensorboard").rglob("events.out.tfevents*"))
    assert old_events
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = pretrain(out, images, net, overwrite=True, **run)
    assert all(path.read_text() == "the user's own file" for path in mine)
    left = [str(w.message) for w in caught if "overwrite" in str(w.message)]
    assert len(left) == 1 and "mine.txt" in left[0] and "notes.md" in left[0], left
    assert not any(p.exists() for p in old_events)  # the previous run's own files are gone
    assert summary["status"] == "completed" and (out / "exported" / "backbone.safetensors").is_file()
    assert summary["data_files"]["found"] == summary["data_files"]["used"] == 48  # every data file accounted for
    # ... and only one run's logs remain (the new one reuses version_0, nothing stale beside it)
    assert [p.name for p in (out / "logs" / "csv").iterdir()] == ["version_0"]


def test_files_are_written_with_the_users_umask(images: Path, tmp_path: Path) -> None:
    from warmstart.pretraining import pretrain

    old = os.umask(0o022)
    try:
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        pretrain(tmp_path / "run", images, net, batch_size=8, image_size=32, progress=False, accelerator="cpu",
                 devices=1, epochs=1)
    finally:
        os.umask(old)
    for rel in ["exported/backbone.safetensors", "exported/backbone.pt", "exported/backbone.json",
                "checkpoints/last.ckpt", "summary.json", ".warmstart-manifest.json"]:
        assert (tmp_path / "run" / rel).stat().st_mode & 0o777 == 0o644, rel
