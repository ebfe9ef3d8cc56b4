"""Loggers for text continued pretraining, by the names image pretraining's ``--logger`` takes.

``warmstart pretrain --logger csv,tensorboard,mlflow,wandb`` means the same on both engines: csv (always on) and
TensorBoard write under ``out/logs``; MLflow writes to a local file store in ``out/logs/mlflow`` unless
``MLFLOW_TRACKING_URI`` is set; W&B runs offline in ``out/logs/wandb`` unless ``WANDB_MODE=online``. The image
engine builds Lightning loggers (:mod:`warmstart.pretraining.loggers`); here the same names become what
``transformers.Trainer`` has: its TensorBoard, MLflow and W&B integrations through ``report_to`` and their
environment variables (set only for the run, and only where the user has not set them), and a small callback that
appends the Trainer's log records to ``out/logs/csv/metrics.csv`` (transformers has no CSV logger).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmstart._optional import require
from warmstart.pretraining.loggers import PROJECT, local_mlflow_uri, resolve_loggers

transformers = require("transformers", "hf")

CSV_FILE = Path("logs") / "csv" / "metrics.csv"
CSV_COLUMNS = ("step", "epoch", "name", "value")


@dataclass
class TrainerLogging:
    """What one ``--logger`` choice needs from ``transformers.Trainer``: ``report_to``, callbacks, environment."""

    report_to: list[str]
    callbacks: list[Any] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def trainer_logging(logger: str | Sequence[str] | None, out: str | Path) -> TrainerLogging:
    """Map logger names (as for image pretraining: csv always, None = csv + tensorboard) to the Trainer's own means.

    Unknown names and missing packages raise here, with the install line, before any model is loaded.

    Example:
        >>> import tempfile
        >>> logging = trainer_logging("csv,mlflow", tempfile.mkdtemp())
        >>> logging.report_to, [type(c).__name__ for c in logging.callbacks], sorted(logging.env)
        (['mlflow'], ['CsvLogCallback'], ['MLFLOW_ALLOW_FILE_STORE', 'MLFLOW_EXPERIMENT_NAME', 'MLFLOW_TRACKING_URI'])
        >>> trainer_logging(None, "out").report_to  # the CLI's default: csv + tensorboard
        ['tensorboard']
    """
    logs = Path(out) / "logs"
    names = resolve_loggers(logger)
    if any(not isinstance(name, str) for name in names):
        raise ValueError("text pretraining takes logger names (csv, tensorboard, mlflow, wandb); pass a "
                         "transformers TrainerCallback through callbacks= for any other logger")
    result = TrainerLogging(report_to=[], callbacks=[CsvLogCallback(Path(out) / CSV_FILE)])
    for name in names:
        if name == "tensorboard":
            # transformers 5 reads this variable, 4.x TrainingArguments.logging_dir (continue_pretraining sets
            # both); the Trainer's callback opens the writer on the main process only.
            result.report_to.append("tensorboard")
            result.env.update(TENSORBOARD_LOGGING_DIR=str(logs / "tensorboard"))
        elif name == "mlflow":
            result.report_to.append("mlflow")
            result.env.update(MLFLOW_TRACKING_URI=local_mlflow_uri(logs), MLFLOW_EXPERIMENT_NAME=PROJECT,
                              MLFLOW_ALLOW_FILE_STORE="true")
        elif name == "wandb":
            result.report_to.append("wandb")
            result.env.update(WANDB_MODE="offline", WANDB_DIR=str(logs), WANDB_PROJECT=PROJECT)
    return result


class CsvLogCallback(transformers.TrainerCallback):
    """Append every Trainer log record to a CSV file as ``step, epoch, name, value`` rows (main process only).

    One row per value keeps the columns fixed while the logged names change (loss, then the final train summary)
    and lets a resumed run append to the same file. At train begin (after a resume has restored the step) the file
    keeps only whole rows up to that step: rows a killed run logged after its checkpoint would otherwise appear
    twice, and a row cut off mid-write would be glued to the next one.

    Example:
        >>> import tempfile, types
        >>> path = Path(tempfile.mkdtemp()) / "metrics.csv"
        >>> state = types.SimpleNamespace(is_world_process_zero=True, global_step=5, epoch=0.5)
        >>> CsvLogCallback(path).on_log(None, state, None, logs={"loss": 2.5})
        >>> path.read_text().splitlines()
        ['step,epoch,name,value', '5,0.5,loss,2.5']
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Drop rows after the step this run starts from (all of them for a new run), and partial rows.

        Example:
            >>> import tempfile, types
            >>> path = Path(tempfile.mkdtemp()) / "metrics.csv"
            >>> _ = path.write_text("step,epoch,name,value\\n2,0.2,loss,3.0\\n4,0.4,loss,2.5\\n5,0.5,lo")  # killed
            >>> state = types.SimpleNamespace(is_world_process_zero=True, global_step=2, epoch=0.2)
            >>> CsvLogCallback(path).on_train_begin(None, state, None)  # resumed from checkpoint-2
            >>> path.read_text().splitlines()
            ['step,epoch,name,value', '2,0.2,loss,3.0']
        """
        if not state.is_world_process_zero or not self.path.exists():
            return
        with self.path.open(newline="") as handle:
            text = handle.read()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):  # cut off mid-write
            lines.pop()
        rows = [row for row in csv.reader(line.rstrip("\r\n") for line in lines[1:])
                if len(row) == len(CSV_COLUMNS) and _step(row[0]) is not None and _step(row[0]) <= state.global_step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)
        os.replace(tmp, self.path)  # the old file or the cleaned one, never half of it

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        """Append ``logs``' numeric values."""
        if not state.is_world_process_zero or not logs:
            return
        rows = [(state.global_step, state.epoch, name, value) for name, value in logs.items()
                if isinstance(value, (int, float))]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)


def _step(text: str) -> int | None:
    return int(text) if text.isdigit() else None


__all__ = ["CSV_FILE", "CsvLogCallback", "TrainerLogging", "trainer_logging"]
