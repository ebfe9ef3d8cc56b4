"""The process choreography shared by the ``finetune_kill_*.py`` workers of test_faults_finetune_kill.

Importing torch + Lightning / transformers / Ultralytics costs ~6 s of CPU, training these tiny runs ~1 s; three
interpreters per framework would spend almost all of the test's time importing. So one worker process imports
once and forks every run from that clean, never-trained state (training state exists only in the children):

1. ``ROOT/full``: the uninterrupted run; in parallel
2. ``ROOT/killed``: the same run, which blocks at its kill point (writes ``hung``) until the *test* SIGKILLs it
   (its pid is in ``ROOT/killed/pid``); the parent reaps it and writes how it died to ``ROOT/killed/status``;
3. after the test writes ``resume`` to our stdin (it inspects the files the kill left first): ``ROOT/killed``
   again with ``resume=True``, a process that has only what is on disk.

The exit code is 0 only if runs 1 and 3 succeeded and run 2 died of SIGKILL. Each run logs to ``<dir>/run.log``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

Train = Callable[[Path, bool, bool], None]  # train(out, hang, resume)


def hang_here(out: Path, marker: str) -> None:
    """Tell the test we reached the kill point, then block until its SIGKILL arrives."""
    (out / "hung").write_text(marker)
    while True:
        time.sleep(1)


def _fork(train: Train, out: Path, hang: bool, resume: bool) -> int:
    out.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        log = os.open(out / "run.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
        (out / "pid").write_text(str(os.getpid()))
        train(out, hang, resume)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # never run the parent's atexit handlers or return into its code


def _exit_status(status: int) -> str:
    return f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"


def main(train: Train) -> None:
    """Run the choreography above under ``ROOT = sys.argv[1]``."""
    import torch

    torch.set_num_threads(1)  # before any fork: the children inherit it; tiny ops are fastest on one thread
    root = Path(sys.argv[1])
    full = _fork(train, root / "full", hang=False, resume=False)
    killed = _fork(train, root / "killed", hang=True, resume=False)
    children = [full]
    try:
        _, status = os.waitpid(killed, 0)
        (root / "killed" / "status").write_text(_exit_status(status))
        if sys.stdin.readline().strip() != "resume":
            sys.exit("the test did not ask for the resume")
        resumed = _fork(train, root / "killed", hang=False, resume=True)
        children.append(resumed)
        results = {name: _exit_status(os.waitpid(pid, 0)[1]) for name, pid in (("full", full), ("resumed", resumed))}
        children.clear()
        print(results)
        ok = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        sys.exit(0 if ok and set(results.values()) == {"exit 0"} else 1)
    finally:
        for pid in children:  # only when something above failed
            os.kill(pid, signal.SIGKILL)
