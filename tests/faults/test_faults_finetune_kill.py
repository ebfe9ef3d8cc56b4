"""SIGKILL a fine-tuning run mid-run, resume it, and compare with an uninterrupted run (ARCHITECTURE.md rules 5 and 11).

The existing resume tests stop the trainer politely, which lets every ``on_*_end`` hook and save run; a kill does
not, so only what was on disk survives. Per framework, one worker (``finetune_kill_*.py``, protocol in
``finetune_kill_common.py``) trains the same run twice at once: uninterrupted, and a copy that blocks at a known
kill point once >= 2 epochs are checkpointed (mid-epoch for Lightning and HF, so training lives only in memory;
inside the write of ``last.pt`` for YOLO). We SIGKILL that copy, check what the kill left on disk, and let a fresh
process resume from it. Then every step after the resume point must match the uninterrupted run: trainable layer
groups, BatchNorm modes, the lr of every param group, and (Lightning, HF) the final weights bit for bit.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
START_TIMEOUT = 240  # s until the kill point: imports alone take ~10 s when the 2 shared cores are busy
RUN_TIMEOUT = 300


def kill_and_resume(script: str, root: Path, args: tuple[str, ...], log_name: str,
                    check_on_disk: Callable[[Path], None]) -> tuple[list[dict], list[dict], list[dict]]:
    """Run the worker's three runs, doing the kill ourselves; returns the full, killed and resumed step logs."""
    killed = root / "killed"
    log = root / "worker.log"
    with log.open("w") as out:  # a file, not a pipe: a full pipe would block the worker
        # Own session: the finally below can end the worker and every run it forked, and nothing else.
        proc = subprocess.Popen([sys.executable, str(HERE / script), str(root), *args], stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def tail() -> str:
        return "\n".join(p.read_text()[-3000:] for p in (log, *root.glob("*/run.log")) if p.exists())

    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (killed / "hung").exists():  # poll the marker, not a guessed sleep
            assert proc.poll() is None, f"worker exited ({proc.returncode}) early:\n{tail()}"
            assert time.monotonic() < deadline, f"no kill point after {START_TIMEOUT} s:\n{tail()}"
            time.sleep(0.1)
        os.kill(int((killed / "pid").read_text()), signal.SIGKILL)
        while not (killed / "status").exists():  # the worker reaps the killed run and says how it died
            assert proc.poll() is None and time.monotonic() < deadline, tail()
            time.sleep(0.05)
        assert (killed / "status").read_text() == f"signal {int(signal.SIGKILL)}"
        check_on_disk(killed)
        # Keep the killed run's log apart so the resumed run's lines start fresh.
        (killed / log_name).rename(killed / f"killed-{log_name}")
        proc.communicate(b"resume\n", timeout=RUN_TIMEOUT)
        assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{tail()}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return [_lines(root / "full" / log_name), _lines(killed / f"killed-{log_name}"), _lines(killed / log_name)]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_same_weights(a: Path, b: Path) -> None:
    full, resumed = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert full.keys() == resumed.keys()
    differ = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not differ, f"resumed run ended with different weights in {differ}"


LIGHTNING_GROUPS = ["stem", "block1", "block2", "head"]


def test_lightning_kill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    pytest.importorskip("lightning")

    def on_disk(run: Path) -> None:
        ckpt = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
        assert (ckpt["epoch"], ckpt["global_step"]) == (1, 8)  # epochs 0-1 saved; step 9 was only in memory
        assert (run / "hung").read_text() == "9" and not (run / "final.pt").exists()
        assert ckpt["callbacks"]["GradualUnfreezing{'module': None}"]["trainable_groups"] == ["block2", "head"]

    full, killed, resumed = kill_and_resume("finetune_kill_lightning.py", tmp_path, (), "steps.jsonl",
                                            on_disk)
    g = LIGHTNING_GROUPS
    assert [s["step"] for s in full] == list(range(20))  # 5 epochs x 4 steps
    assert killed == full[:9]  # up to and including the first step of epoch 2
    # The schedule changes inside the resumed window (epochs 2-4), so a schedule restarted at epoch 0 or stuck at
    # the checkpoint's set would show below. The head has no BatchNorm; frozen groups keep theirs in eval.
    assert [s["trainable"] for s in full[::4]] == [g[3:], g[2:], g[1:], g, g]
    assert [s["bn_train"] for s in full[::4]] == [[], g[2:3], g[1:3], g[:3], g[:3]]
    # Every step after the resume point: same epoch/batch, trainable groups, BN modes, and lr of every param group.
    assert resumed == full[8:]
    _assert_same_weights(tmp_path / "full" / "final.pt", tmp_path / "killed" / "final.pt")


def test_lightning_kill_then_resume_keeps_the_anchor_on_the_starting_weights(tmp_path):
    """L2-SP (plan ``anchor``): the resumed process starts from moved weights, so only the checkpoint knows w0."""
    pytest.importorskip("lightning")
    saved: dict = {}

    def on_disk(run: Path) -> None:
        ckpt = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
        assert (ckpt["epoch"], ckpt["global_step"]) == (1, 8)
        saved.update(ckpt["callbacks"]["Finetune{'module': None}"]["anchor"]["values"])

    full, killed, resumed = kill_and_resume("finetune_kill_lightning.py", tmp_path, ("anchor",), "steps.jsonl",
                                            on_disk)
    start = torch.load(tmp_path / "full" / "start.pt", weights_only=True)
    # What is anchored: the pretrained groups' weights, not the new head; the values are the run's starting ones.
    assert sorted(saved) == sorted(k for k in start if k.split(".")[0] in ("stem", "block1", "block2")
                                   and "running" not in k and "num_batches" not in k)
    assert all(torch.equal(saved[k], start[k]) for k in saved)
    assert [s["trainable"] for s in full[::4]] == [LIGHTNING_GROUPS[3:], LIGHTNING_GROUPS[2:],
                                                   LIGHTNING_GROUPS[1:], LIGHTNING_GROUPS, LIGHTNING_GROUPS]
    assert resumed == full[8:] and killed == full[:9]
    # Bit for bit: a resume that re-captured the anchor at the interrupted weights would end elsewhere.
    _assert_same_weights(tmp_path / "full" / "final.pt", tmp_path / "killed" / "final.pt")


HF_GROUPS = ["embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "head"]


def test_hf_trainer_kill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    pytest.importorskip("transformers")

    def on_disk(run: Path) -> None:
        # checkpoint-9 is step 1 of epoch 2 (4 steps per epoch); step 10 was only in memory.
        assert sorted(p.name for p in (run / "run").glob("checkpoint-*")) == [f"checkpoint-{n}" for n in (3, 6, 9)]
        assert (run / "hung").read_text() == "10" and not (run / "final.pt").exists()
        state = json.loads((run / "run" / "checkpoint-9" / "trainer_state.json").read_text())
        saved = state["stateful_callbacks"]["GradualUnfreezing"]
        assert saved["attributes"]["_checkpoint_group_names"] == HF_GROUPS and state["epoch"] == 2.25

    full, killed, resumed = kill_and_resume("finetune_kill_hf.py", tmp_path, (), "steps.jsonl", on_disk)
    g = HF_GROUPS
    assert [s["step"] for s in full] == list(range(1, 17))  # 4 epochs x 4 steps
    assert killed == full[:10]
    assert [s["trainable"] for s in full[::4]] == [g[3:], g[2:], g[1:], g]  # changes inside the resumed window
    # Steps 10-16 (the rest of epoch 2 after the Trainer skips its first batch, then epoch 3): same fractional
    # epoch, trainable groups and lr of every LLRD param group (warmup + linear decay) as the uninterrupted run.
    assert resumed == full[9:]
    # Bit-exact: the Trainer restores optimizer, scheduler and RNG states, accelerate's seedable sampler replays
    # the epoch's order, dropout is off and the worker runs deterministic kernels on one thread.
    _assert_same_weights(tmp_path / "full" / "final.pt", tmp_path / "killed" / "final.pt")


def test_hf_kill_then_resume_keeps_the_anchor_on_the_starting_weights(tmp_path):
    """L2-SP through FinetuneCallback: the resumed process starts from moved weights; only output_dir knows w0."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    saved: dict = {}

    def on_disk(run: Path) -> None:
        state = json.loads((run / "run" / "checkpoint-9" / "trainer_state.json").read_text())
        path = Path(state["stateful_callbacks"]["FinetuneCallback"]["attributes"]["_anchor_file"])
        assert path == (run / "run" / "warmstart_anchor.safetensors").resolve()
        saved.update(load_file(str(path)))

    full, killed, resumed = kill_and_resume("finetune_kill_hf.py", tmp_path, ("anchor",), "steps.jsonl", on_disk)
    start = torch.load(tmp_path / "killed" / "start.pt", weights_only=True)
    # What is anchored: every pretrained (non-head) weight, at the run's starting values
    assert saved and not any(k.startswith("classifier") for k in saved)
    assert all(torch.equal(saved[k], start[k]) for k in saved)
    g = HF_GROUPS
    assert [s["trainable"] for s in full[::4]] == [g[3:], g[2:], g[1:], g]
    assert killed == full[:10] and resumed == full[9:]
    # Bit for bit: a resume that re-captured the anchor at the interrupted weights would end elsewhere.
    _assert_same_weights(tmp_path / "full" / "final.pt", tmp_path / "killed" / "final.pt")


def test_text_pretraining_killed_while_saving_resumes_from_the_last_complete_checkpoint(tmp_path):
    """transformers writes checkpoint-N in place; its own newest-checkpoint pick would take the half-written one."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    def on_disk(run: Path) -> None:
        folders = run / "model" / "checkpoints"
        assert (run / "hung").read_text() == "checkpoint-4"
        assert sorted(p.name for p in folders.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
        # checkpoint-4: weights written, trainer state not; checkpoint-2 whole
        assert (folders / "checkpoint-4" / "model.safetensors").is_file()
        assert not (folders / "checkpoint-4" / "trainer_state.json").exists()
        assert (folders / "checkpoint-2" / "trainer_state.json").is_file()

    full, killed, resumed = kill_and_resume("text_pretrain_kill_worker.py", tmp_path, (), "steps.jsonl", on_disk)
    assert [s["step"] for s in full] == list(range(1, 9))
    assert killed == full[:4]
    assert resumed == full[2:]  # from checkpoint-2: steps 3-8 again, on the same weights
    a, b = (load_file(str(tmp_path / run / "model" / "model.safetensors")) for run in ("full", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The CSV log: the killed run had logged steps 3-4 after checkpoint-2; the resumed run logs them again, and
    # each step's row is there once, with the uninterrupted run's values.
    logged = {run: [row for row in csv.reader((tmp_path / run / "model" / "logs" / "csv" / "metrics.csv").open())
                    if row[2] in ("loss", "learning_rate", "grad_norm")] for run in ("full", "killed")}
    assert [int(row[0]) for row in logged["killed"] if row[2] == "loss"] == list(range(1, 9))
    assert logged["killed"] == logged["full"]


def test_yolo_kill_while_saving_then_resume_keeps_schedule_position(tmp_path):
    pytest.importorskip("ultralytics")
    from warmstart.testing import make_shapes_dataset

    data = str(make_shapes_dataset(tmp_path / "shapes"))

    def on_disk(run: Path) -> None:
        # Killed half-way through writing epoch 2's last.pt: epoch 1's must still be there, whole.
        assert (run / "hung").read_text() == "writing last.pt of epoch 2"
        ckpt = torch.load(run / "run" / "weights" / "last.pt", map_location="cpu", weights_only=False)
        assert ckpt["epoch"] == 1
        assert json.loads(ckpt["train_args"]["warmstart"])["unfreeze_schedule"] == {
            "at": {"head": 0, "neck": 1, "backbone": 3}}

    full, killed, resumed = kill_and_resume("finetune_kill_yolo.py", tmp_path, (data,), "batches.jsonl",
                                            on_disk)
    full_batches = [b for b in full if b["at"] == "batch"]
    assert [b["epoch"] for b in full_batches] == [0, 0, 1, 1, 2, 2, 3, 3]  # 4 epochs x 2 batches
    assert [b for b in killed if b["at"] == "batch"] == full_batches[:6]  # epoch 2 trained, its save killed
    expected = {0: ["head"], 1: ["head", "neck"], 2: ["head", "neck"], 3: ["backbone", "head", "neck"]}
    assert all(b["trainable"] == b["bn_train"] == expected[b["epoch"]] for b in full_batches)

    start, *batches = resumed
    # Already at on_train_start the resumed run carries epoch 2's trainable set, not the schedule's start.
    assert start["at"] == "train_start" and start["epoch"] == 2
    assert (start["trainable"], start["bn_train"]) == (expected[2], expected[2])
    after = full_batches[4:]
    assert [b["epoch"] for b in batches] == [b["epoch"] for b in after]
    for r, u in zip(batches, after, strict=True):
        assert (r["trainable"], r["bn_train"]) == (u["trainable"], u["bn_train"]), r["epoch"]
        # Ultralytics resumes from the EMA weights, so weights are not bit-exact; the lrs (warmup position x
        # per-group initial_lr from the restored optimizer) are.
        assert r["lrs"] == pytest.approx(u["lrs"], rel=1e-9, abs=1e-15), r["epoch"]


def test_yolo_lora_kill_while_saving_resumes_with_the_adapters_of_the_saved_epoch(tmp_path):
    """The adapters file and last.pt are two files: killed between them, the resume must pair last.pt (epoch 1)
    with epoch 1's adapters, not with the epoch-2 adapters already on disk."""
    pytest.importorskip("ultralytics")
    pytest.importorskip("peft")
    from warmstart.testing import make_shapes_dataset
    from warmstart.yolo_integration.lora_merge import PENDING_ADAPTER_FILE, saved_epoch

    data = str(make_shapes_dataset(tmp_path / "shapes"))

    def on_disk(run: Path) -> None:
        weights = run / "run" / "weights"
        assert (run / "hung").read_text() == "writing last.pt of epoch 2"
        assert torch.load(weights / "last.pt", map_location="cpu", weights_only=False)["epoch"] == 1
        assert saved_epoch(weights / PENDING_ADAPTER_FILE) == 2  # written before last.pt, as every epoch
        assert saved_epoch(weights / "last_lora.safetensors") == 1

    kill_and_resume("finetune_kill_yolo.py", tmp_path, (data, "lora"), "batches.jsonl", on_disk)
    killed = tmp_path / "killed"
    saved = {e: torch.load(killed / f"saved_adapters_{e}.pt", weights_only=True) for e in (0, 1)}
    resumed = torch.load(killed / "resumed_adapters.pt", weights_only=True)
    assert resumed.keys() == saved[1].keys() and resumed
    assert all(torch.equal(resumed[k], saved[1][k]) for k in resumed)  # epoch 1's, exactly
    assert not all(torch.equal(saved[0][k], saved[1][k]) for k in resumed)  # the adapters did train


def test_yolo_kill_then_resume_keeps_the_anchor_on_the_starting_weights(tmp_path):
    """L2-SP in the YOLO trainer: last.pt holds moved weights; the anchor must come back from the run's start."""
    pytest.importorskip("ultralytics")
    from safetensors.torch import load_file

    from warmstart.testing import make_shapes_dataset

    data = str(make_shapes_dataset(tmp_path / "shapes"))
    start: dict = {}

    def on_disk(run: Path) -> None:
        assert torch.load(run / "run" / "weights" / "last.pt", map_location="cpu", weights_only=False)["epoch"] == 1
        start.update(load_file(str(run / "run" / "weights" / "warmstart_anchor.safetensors")))

    full, killed, resumed = kill_and_resume("finetune_kill_yolo.py", tmp_path, (data, "anchor"), "batches.jsonl",
                                            on_disk)
    saved = torch.load(tmp_path / "killed" / "resumed_anchor.pt", weights_only=True)
    assert start and saved["anchor"].keys() == start.keys()
    assert all(torch.equal(saved["anchor"][k], start[k]) for k in start)  # the run's start, not where it stopped
    assert not all(torch.equal(saved["weights"][k], start[k]) for k in start)  # (the weights did move)
    assert [b["epoch"] for b in resumed if b["at"] == "batch"] == [2, 2, 3, 3]
