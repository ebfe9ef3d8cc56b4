"""Lightning loggers by name for ``pretrain(logger=...)`` / ``warmstart pretrain --logger csv,tensorboard,mlflow``.

Every name maps to Lightning's own logger class with a default that works offline and keeps the run's files in the
run's folder: MLflow writes to a local file store under ``out/logs/mlflow`` (unless ``MLFLOW_TRACKING_URI`` names a
server), W&B runs in offline mode under ``out/logs/wandb`` (unless ``WANDB_MODE=online``). Any other Lightning logger
(Comet, LitLogger, ...) is passed as an object from Python. A logger whose package is missing is refused by
:func:`resolve_loggers` with the ``pip install`` line, before any data is read or a model is built.

The CSV logger is always on: ``out/metrics.csv`` is flattened from it. ``logger_paths`` names the files each logger
wrote under ``out``, so the run manifest lists them and ``--overwrite`` removes them (ARCHITECTURE.md rule 11).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_LOGGERS = ("csv", "tensorboard")
PROJECT = "warmstart"  # MLflow experiment and W&B project unless MLFLOW_EXPERIMENT_NAME / WANDB_PROJECT say otherwise


@dataclass(frozen=True)
class LoggerKind:
    """A logger name: the Lightning class it builds and the package (import name, pip name) that class needs."""

    cls: str
    modules: tuple[str, ...]  # any one of them will do (TensorBoardLogger also runs on tensorboardX)
    pip: str | None


KINDS = {
    "csv": LoggerKind("CSVLogger", (), None),
    "tensorboard": LoggerKind("TensorBoardLogger", ("tensorboard", "tensorboardX"), "tensorboard"),
    "mlflow": LoggerKind("MLFlowLogger", ("mlflow",), "mlflow"),
    "wandb": LoggerKind("WandbLogger", ("wandb",), "wandb"),
}


def resolve_loggers(logger: str | Sequence[Any] | None) -> list[Any]:
    """Check a logger choice and return it as a list: names (lower case, csv first) and logger objects as given.

    ``logger`` is a comma-separated string (``"csv,mlflow"``), a list of names and/or Lightning ``Logger``
    objects, or None (the default, csv + tensorboard). Unknown names and missing packages raise here, with the
    install line, so a run never fails at its first log call.

    Example:
        >>> resolve_loggers("tensorboard")
        ['csv', 'tensorboard']
        >>> resolve_loggers("neptune")
        Traceback (most recent call last):
        ...
        ValueError: unknown logger 'neptune'; valid names: csv, mlflow, tensorboard, wandb ...
    """
    if logger is None:
        items: list[Any] = list(DEFAULT_LOGGERS)
    elif isinstance(logger, str):
        items = [part.strip() for part in logger.split(",") if part.strip()]
    elif isinstance(logger, Sequence):
        items = list(logger)
    else:
        items = [logger]  # a single Logger object
    names: list[Any] = ["csv"]  # always: metrics.csv is built from the CSV logs
    for item in items:
        if isinstance(item, str):
            name = item.strip().lower()
            if name not in KINDS:
                raise ValueError(f"unknown logger {item!r}; valid names: {', '.join(sorted(KINDS))} "
                                 "(comma-separated, e.g. --logger csv,mlflow), or pass a Lightning Logger object "
                                 "in Python")
            _check_installed(name)
            if name not in names:
                names.append(name)
        elif _is_logger(item):
            names.append(item)
        else:
            raise ValueError(f"logger entries must be names like 'mlflow' or Lightning Logger objects, got "
                             f"{type(item).__name__}")
    return names


def build_loggers(names: Sequence[Any], out: str | Path) -> list[Any]:
    """Lightning logger objects for ``resolve_loggers``' result, each writing under ``out/logs``.

    Example:
        >>> import tempfile
        >>> [type(lg).__name__ for lg in build_loggers(["csv", "tensorboard"], tempfile.mkdtemp())]
        ['CSVLogger', 'TensorBoardLogger']
    """
    from lightning.pytorch import loggers as pl_loggers

    logs = Path(out) / "logs"
    built = []
    for name in names:
        if not isinstance(name, str):
            built.append(name)  # the user's own Logger object, configured by them
            continue
        cls = getattr(pl_loggers, KINDS[name].cls)
        built.append(cls(**_defaults(name, logs)))
    return built


def logger_paths(loggers: Sequence[Any], out: str | Path) -> list[Path]:
    """Files and folders under ``out`` that ``loggers`` wrote (what the run manifest records).

    A folder stands for every file below it; symlinks a logger made (W&B's ``latest-run``) are listed one by one,
    because the manifest does not follow links found inside folders. Paths outside ``out`` (a remote MLflow
    server, the user's own logger elsewhere) are not listed: warmstart never deletes them.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> [p.relative_to(out).as_posix() for p in logger_paths(build_loggers(["csv"], out), out)]
        ['logs/csv/version_0']
    """
    out = Path(out)
    root = out.resolve()
    paths: list[Path] = []
    for lg in loggers:
        for folder in _folders(lg):
            resolved = Path(folder).resolve()
            if resolved == root or root not in resolved.parents:
                continue
            inside = out / resolved.relative_to(root)  # in the caller's spelling of out, as the manifest's root is
            paths.append(inside)
            if inside.is_dir():
                paths.extend(p for p in inside.rglob("*") if p.is_symlink())
    return paths


def _defaults(name: str, logs: Path) -> dict[str, Any]:
    # Offline-friendly defaults: everything lands in the run folder unless the user's environment points elsewhere.
    if name == "csv":
        return {"save_dir": logs, "name": "csv"}
    if name == "tensorboard":
        return {"save_dir": logs, "name": "tensorboard", "default_hp_metric": False}
    if name == "mlflow":
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = local_mlflow_uri(logs)  # opens only inside run_environment(logger_environment(...))
        return {"experiment_name": os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT), "tracking_uri": uri}
    if name == "wandb":
        mode = os.environ.get("WANDB_MODE", "offline")
        return {"save_dir": logs, "project": os.environ.get("WANDB_PROJECT", PROJECT), "offline": mode != "online"}
    raise ValueError(f"unknown logger {name!r}")


def logger_environment(names: Sequence[Any], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables the loggers in ``names`` need for the run (set with :func:`run_environment`).

    MLflow 3 opens a local file store, warmstart's offline default, only with ``MLFLOW_ALLOW_FILE_STORE=true``;
    with ``MLFLOW_TRACKING_URI`` set in ``environ`` (default ``os.environ``) the user's own server or store is used
    and nothing is needed.

    Example:
        >>> logger_environment(["csv", "mlflow"], environ={}), logger_environment(["csv", "tensorboard"], environ={})
        ({'MLFLOW_ALLOW_FILE_STORE': 'true'}, {})
        >>> logger_environment(["mlflow"], environ={"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000"})
        {}
    """
    environ = os.environ if environ is None else environ
    if "mlflow" in names and not environ.get("MLFLOW_TRACKING_URI"):
        return {"MLFLOW_ALLOW_FILE_STORE": "true"}
    return {}


# Variables a logger exports for the whole process while it runs: Lightning's MLFlowLogger calls
# mlflow.set_tracking_uri, which sets MLFLOW_TRACKING_URI, so a second run in the same process would take the first
# run's store for the user's choice and log into the first run's folder. run_environment puts them back.
PROCESS_WIDE = ("MLFLOW_TRACKING_URI",)


@contextmanager
def run_environment(env: dict[str, str], restore: Sequence[str] = ()) -> Iterator[None]:
    """Set the variables in ``env`` that the user has not set, for the ``with`` block only; afterwards every
    variable of ``env`` and ``restore`` is as it was before the block (unset if it was unset).

    Example:
        >>> with run_environment({"WARMSTART_EXAMPLE": "1"}, restore=["WARMSTART_OTHER"]):
        ...     os.environ["WARMSTART_OTHER"] = "set by a library during the run"
        ...     print(os.environ["WARMSTART_EXAMPLE"])
        1
        >>> "WARMSTART_EXAMPLE" in os.environ, "WARMSTART_OTHER" in os.environ
        (False, False)
    """
    before = {key: os.environ.get(key) for key in [*env, *restore]}
    os.environ.update({key: value for key, value in env.items() if before[key] is None})
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def local_mlflow_uri(logs: str | Path) -> str:
    """The offline MLflow store of a run: a file store in ``logs/mlflow`` (MLflow 3 also needs
    ``MLFLOW_ALLOW_FILE_STORE=true`` to open it).

    Example:
        >>> local_mlflow_uri("/runs/r18/logs")
        'file:///runs/r18/logs/mlflow'
    """
    return (Path(logs) / "mlflow").resolve().as_uri()


def _folders(lg: Any) -> list[str | Path]:
    kind = type(lg).__name__
    if kind in ("CSVLogger", "TensorBoardLogger"):
        return [lg.log_dir]
    if kind == "MLFlowLogger":
        return [lg.save_dir] if lg.save_dir else []  # None for a server: nothing local to record
    if kind == "WandbLogger":
        return [Path(lg.save_dir) / "wandb"] if lg.save_dir else []
    found = [getattr(lg, attr, None) for attr in ("log_dir", "save_dir")]
    return [f for f in found if isinstance(f, (str, Path)) and f][:1]


def _check_installed(name: str) -> None:
    kind = KINDS[name]
    if not kind.modules or any(_findable(module) for module in kind.modules):
        return
    raise ImportError(f"the {name} logger needs the '{kind.modules[0]}' package, which is not installed. Install it "
                      f"with: pip install {kind.pip}  (or drop '{name}' from --logger)")


def _findable(module: str) -> bool:
    # find_spec, not import: importing mlflow takes seconds, and the logger imports it anyway when it is built.
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocking finder raises; a None entry in sys.modules gives ValueError
        return False


def _is_logger(obj: Any) -> bool:
    from lightning.pytorch.loggers import Logger

    return isinstance(obj, Logger)


__all__ = ["DEFAULT_LOGGERS", "KINDS", "PROJECT", "build_loggers", "local_mlflow_uri", "logger_environment",
           "logger_paths", "PROCESS_WIDE", "resolve_loggers", "run_environment"]
