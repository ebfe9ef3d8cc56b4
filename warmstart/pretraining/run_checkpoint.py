"""``RunCheckpoint``: ``last.ckpt`` every epoch, every N steps or minutes, and on SIGINT/SIGTERM (rule 11).

Lightning's ``ModelCheckpoint(save_last=True, save_top_k=0)`` writes ``last.ckpt`` only after a top-k save, so a
run killed after 12 of 30 epochs had no checkpoint at all. This callback owns the rolling ``last.ckpt`` itself:
written to a temporary file and renamed into place (a kill mid-write leaves the previous checkpoint intact), at
every epoch end, on a step or time cadence mid-epoch, and when the process is asked to stop. A stop request
(Ctrl-C, ``kill``, a preemption notice) is honoured at the next batch boundary: the checkpoint is written, then
:class:`TrainingInterrupted` ends ``fit`` so the caller can write a partial summary and exit non-zero.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._optional import require

L = require("lightning", "lightning")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after writing ``checkpoint``; resume from it to continue.

    Example:
        >>> err = TrainingInterrupted(signal.SIGTERM, Path("out/checkpoints/last.ckpt"))
        >>> err.exit_code, "resume" in str(err)
        (143, True)
    """

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.signum, self.checkpoint = int(signum), checkpoint
        name = signal.Signals(self.signum).name
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint could be written"
        super().__init__(f"training interrupted by {name}; {where}. Run again with resume=True (--resume) to "
                         "continue where it stopped.")

    @property
    def exit_code(self) -> int:
        """The shell convention for a process ended by a signal: 128 + signal number."""
        return 128 + self.signum


def parse_every(value: int | float | str | None) -> tuple[int, float]:
    """``(steps, seconds)`` of a checkpoint cadence: ``200`` steps, ``"10min"``, ``"90s"``, ``"1h"``; 0/None: off.

    Example:
        >>> parse_every(200), parse_every("10min"), parse_every("90s"), parse_every(None)
        ((200, 0.0), (0, 600.0), (0, 90.0), (0, 0.0))
    """
    if value is None or value == 0 or value in ("0", "off", "none"):
        return 0, 0.0
    if isinstance(value, bool):
        raise ValueError(f"checkpoint_every must be a step count or a duration like '5min', got {value!r}")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        steps = int(value)
        if steps < 0:
            raise ValueError(f"checkpoint_every must be >= 0 steps, got {value!r}")
        return steps, 0.0
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h)\s*", str(value))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"checkpoint_every must be a step count (e.g. 500) or a positive duration such as "
                         f"'90s', '5min', '1h'; got {value!r}")
    return 0, float(match.group(1)) * _UNITS[match.group(2)]


class RunCheckpoint(L.Callback):
    """Keep ``dirpath/last.ckpt`` current: every epoch end, every ``every`` (steps or duration), on SIGINT/SIGTERM.

    ``mid_epoch=False`` restricts saves to epoch ends (for data loaders that cannot resume mid-epoch; a stop
    signal then ends training without a new checkpoint, and resume starts from the last epoch boundary).
    ``on_save`` runs on rank 0 after each save (the engine updates its file manifest there). Under DDP every
    decision (cadence by time, a signal seen by any rank) is agreed by all ranks before anyone saves.

    Example:
        >>> cb = RunCheckpoint("out/checkpoints", every="5min")
        >>> cb.last_path.name, cb.every_steps, cb.every_seconds
        ('last.ckpt', 0, 300.0)
    """

    def __init__(self, dirpath: str | Path, every: int | float | str | None = "5min", *, mid_epoch: bool = True,
                 on_save: Callable[[], Any] | None = None, handle_signals: bool = True) -> None:
        self.dirpath = Path(dirpath)
        self.every_steps, self.every_seconds = parse_every(every)
        self.mid_epoch, self.on_save, self.handle_signals = mid_epoch, on_save, handle_signals
        self.saves = 0
        self.stop_signal: int | None = None
        self._last_save = time.monotonic()
        self._previous_handlers: dict[int, Any] = {}

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    # ------------------------------------------------------------------------------------------ signals
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save = time.monotonic()
        # Installed here, after Lightning registered its own SIGTERM handler for this fit (which would raise
        # and skip the checkpoint); restored when training ends, however it ends.
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                self._previous_handlers[sig] = signal.signal(sig, self._request_stop)

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None:  # asked twice: the user wants out now
            self._restore_handlers()
            raise KeyboardInterrupt
        self.stop_signal = signum

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    # ------------------------------------------------------------------------------------------ cadence
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step_due = self.every_steps > 0 and trainer.global_step % self.every_steps == 0
        time_due = self.every_seconds > 0 and time.monotonic() - self._last_save >= self.every_seconds
        stop, due = self._agree(trainer, self.stop_signal is not None, step_due or time_due)
        if stop:
            signum = self.stop_signal if self.stop_signal is not None else signal.SIGTERM
            saved = None
            if self.mid_epoch:
                self.save(trainer)
                saved = self.last_path
            elif self.last_path.is_file():
                saved = self.last_path  # the last epoch boundary: what resume continues from
            raise TrainingInterrupted(signum, saved)
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        if due and self.mid_epoch and not last_batch:  # the epoch-end save follows right after the last batch
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> Path:
        """Write ``last.ckpt`` atomically (temporary file + rename) and run ``on_save`` on rank 0."""
        tmp = self.dirpath / ".last.ckpt.tmp"
        trainer.save_checkpoint(tmp)  # every rank calls it (FSDP gathers); only rank 0 writes, then a barrier
        if trainer.is_global_zero:
            os.replace(tmp, self.last_path)
            if self.on_save is not None:
                self.on_save()
        trainer.strategy.barrier("warmstart.RunCheckpoint.save")
        self._last_save = time.monotonic()
        self.saves += 1
        return self.last_path

    @staticmethod
    def _agree(trainer: L.Trainer, stop: bool, due: bool) -> tuple[bool, bool]:
        if trainer.world_size <= 1:
            return stop, due
        # One small all-reduce per step: a signal seen by any rank stops all, and clocks never disagree.
        flags = torch.tensor([float(stop), float(due)], device=trainer.strategy.root_device)
        flags = trainer.strategy.reduce(flags, reduce_op="max")
        return bool(flags[0] > 0), bool(flags[1] > 0)
