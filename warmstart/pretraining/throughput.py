"""``ThroughputMonitor``: images/s and the share of each step spent waiting for data, per epoch.

Between the end of one training batch and the start of the next, the loop does nothing but fetch data (from the
DataLoader and its workers) and move it to the device; everything from ``on_train_batch_start`` to
``on_train_batch_end`` is the step (forward, backward, optimizer, callbacks). So per epoch::

    data_wait_fraction = sum(batch_start - previous batch_end) / (last batch_end - epoch start)

(the first wait is measured from ``on_train_epoch_start``, so worker start-up counts as waiting). Near 0: the model
is the bottleneck, more workers or a cache will not help; near 1: the GPU/CPU waits for images, raise
``num_workers``, cache the decoded images, or use ``views="batched"``. Both numbers are logged per epoch
(``data_wait_fraction``, ``images_per_s`` in ``metrics.csv``) and accumulated over the run for the summary.
"""

from __future__ import annotations

import time
from typing import Any

from .._optional import require

L = require("lightning", "lightning")


class ThroughputMonitor(L.Callback):
    """Times the training loop (not setup/teardown): images/s, and the fraction of it spent waiting for data.

    ``seconds`` / ``start_step`` cover the whole run for the summary's ``images_per_s``; ``wait_s`` / ``loop_s``
    sum the measured epochs for ``data_wait_fraction``.

    Example:
        >>> import lightning as L, torch
        >>> from torch.utils.data import DataLoader
        >>> class Tiny(L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__(); self.w = torch.nn.Parameter(torch.zeros(1))
        ...     def training_step(self, batch, i): return (self.w - batch).pow(2).mean()
        ...     def configure_optimizers(self): return torch.optim.SGD(self.parameters(), lr=0.1)
        ...     def train_dataloader(self): return DataLoader(torch.ones(8, 1), batch_size=2)
        >>> monitor = ThroughputMonitor(batch_size=2)
        >>> trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...                     enable_model_summary=False, callbacks=[monitor], accelerator="cpu")
        >>> trainer.fit(Tiny())
        >>> 0.0 <= monitor.data_wait_fraction <= 1.0, monitor.images_per_s > 0
        (True, True)
    """

    def __init__(self, batch_size: int | None = None) -> None:
        self.batch_size = batch_size
        self.start_step, self.start_time, self.seconds = 0, 0.0, 0.0
        self.wait_s, self.loop_s, self.images = 0.0, 0.0, 0
        self._epoch_start: float | None = None
        self._last_end = 0.0
        self._epoch_wait, self._epoch_batches = 0.0, 0

    # -- whole run ------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step, self.start_time = trainer.global_step, time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop()

    def stop(self) -> None:
        """Freeze the measured time (also called when training ends on a signal, where on_train_end is not)."""
        if self.start_time and not self.seconds:
            self.seconds = time.perf_counter() - self.start_time

    # -- per epoch ------------------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last_end = time.perf_counter()
        self._epoch_wait, self._epoch_batches = 0.0, 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._epoch_wait += time.perf_counter() - self._last_end

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._last_end = time.perf_counter()
        self._epoch_batches += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_start is None or self._epoch_batches == 0:
            return
        total = self._last_end - self._epoch_start
        images = self._epoch_batches * self._batch_images(trainer)
        self.wait_s, self.loop_s, self.images = self.wait_s + self._epoch_wait, self.loop_s + total, \
            self.images + images
        if total > 0:
            # Logged from the callback: lands in every logger (metrics.csv, TensorBoard) at this epoch's step.
            pl_module.log("data_wait_fraction", min(1.0, self._epoch_wait / total), on_step=False, on_epoch=True)
            pl_module.log("images_per_s", images / total, on_step=False, on_epoch=True)
        self._epoch_start = None

    def _batch_images(self, trainer: L.Trainer) -> int:
        size = self.batch_size
        if size is None:
            loader = trainer.train_dataloader
            size = int(getattr(loader, "batch_size", None) or 1)
        return int(size) * max(1, trainer.world_size)

    # -- results --------------------------------------------------------------------------------------------------
    @property
    def data_wait_fraction(self) -> float | None:
        """Share of the measured epochs' loop time spent waiting for the next batch (None before an epoch)."""
        return min(1.0, self.wait_s / self.loop_s) if self.loop_s > 0 else None

    @property
    def images_per_s(self) -> float | None:
        """Images per second over the measured epochs' loop time (None before an epoch)."""
        return self.images / self.loop_s if self.loop_s > 0 else None
