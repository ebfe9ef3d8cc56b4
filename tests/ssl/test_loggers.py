"""``pretrain(logger=...)`` / ``--logger``: Lightning loggers by name, offline defaults, files in the run manifest.

A real run logs to CSV, TensorBoard and (when mlflow is installed) a local MLflow file store; MLflow receives the
same epoch loss as the CSV log; ``--overwrite`` removes every logger file and keeps the user's. A missing package
is refused with the pip line before any data is read.
"""

from __future__ import annotations

import csv
import importlib.abc
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

import pytest
from ssl_helpers import digit_folder, one_thread, tiny_cnn  # noqa: F401 (one_thread: autouse fixture)

from warmstart.cli import main
from warmstart.core.run_manifest import RunManifest, remove_previous_run
from warmstart.pretraining import pretrain
from warmstart.pretraining.loggers import resolve_loggers

RUN = dict(model="custom", epochs=1, batch_size=8, image_size=32, accelerator="cpu", devices=1, num_workers=0,
           progress=False, checkpoint_every=None)


def _pretrain(out: Path, data: Path, **kwargs) -> dict:
    args = {**RUN, **kwargs}
    args["model"] = tiny_cnn()
    return pretrain(out, data, **args)


HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None


def test_loggers_log_the_same_loss_and_overwrite_removes_their_files(tmp_path: Path, monkeypatch) -> None:
    # MLflow joins when installed (it is optional); CSV + TensorBoard are checked either way.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # set for the run only (asserted below)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (MLflow's default ./mlruns)
    data = digit_folder(tmp_path / "data", 16)
    out = tmp_path / "run"
    names = ["csv", "tensorboard"] + (["mlflow"] if HAS_MLFLOW else [])
    summary = _pretrain(out, data, logger=",".join(names[1:]))
    assert summary["steps"] == 2 and summary["loggers"] == names
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # the run's opt-in must not outlive the run

    with (out / "logs" / "csv" / "version_0" / "metrics.csv").open() as f:
        csv_loss = [float(r["train_loss_epoch"]) for r in csv.DictReader(f) if r.get("train_loss_epoch")]
    assert len(csv_loss) == 1
    events = list((out / "logs" / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    listed = set(json.loads((out / ".warmstart-manifest.json").read_text())["files"])
    assert events[0].relative_to(out).as_posix() in listed
    if HAS_MLFLOW:
        metric_files = list((out / "logs" / "mlflow").glob("*/*/metrics/train_loss_epoch"))
        assert len(metric_files) == 1, "expected one MLflow run in the local store under out/logs/mlflow"
        mlflow_loss = [float(line.split()[1]) for line in metric_files[0].read_text().splitlines()]
        assert mlflow_loss == pytest.approx(csv_loss, rel=1e-6)
        assert not (tmp_path / "mlruns").exists()
        mlflow_files = {p.relative_to(out).as_posix() for p in (out / "logs" / "mlflow").rglob("*") if p.is_file()}
        assert mlflow_files <= listed  # every file MLflow wrote is the run's, so overwrite may remove it

    (out / "logs" / "my_notes.txt").write_text("keep me")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _pretrain(out, data, overwrite=True, logger="csv")
    left = [str(w.message) for w in caught if "overwrite" in str(w.message)]
    assert left and left[0].rsplit(": ", 1)[1] == "logs/my_notes.txt"  # only the user's file was left
    assert not [p for p in (out / "logs").rglob("*") if p.is_file() and "my_notes" not in p.name
                and "version_0" not in p.parts]  # csv/version_0 is the new run's
    assert not (out / "logs" / "tensorboard").exists()  # this run did not ask for it: the old logs are gone
    assert (out / "logs" / "my_notes.txt").read_text() == "keep me"


class _Block(importlib.abc.MetaPathFinder):
    """Makes packages unimportable, as on a machine where they are not installed."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(f"blocked: {name}")


@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is optional")
def test_two_mlflow_runs_in_one_process_each_log_into_their_own_folder(tmp_path: Path, monkeypatch) -> None:
    # MLflow exports the first run's store as MLFLOW_TRACKING_URI; left in place, the second run would take it for
    # the user's choice and log into the first run's folder (which --overwrite of that run would then delete).
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    data = digit_folder(tmp_path / "data", 16)
    for name in ("first", "second"):
        _pretrain(tmp_path / name, data, logger="mlflow")
        assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    for name in ("first", "second"):
        runs = list((tmp_path / name / "logs" / "mlflow").glob("*/*/metrics/train_loss_epoch"))
        assert len(runs) == 1, f"{name}: expected its own run in its own store, found {len(runs)}"


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_missing_logger_package_fails_before_anything_runs(tmp_path: Path, monkeypatch, name: str) -> None:
    monkeypatch.setattr(sys, "meta_path", [_Block(name), *sys.meta_path])
    for module in [m for m in sys.modules if m.split(".")[0] == name]:  # an earlier test imported it: forget it
        monkeypatch.delitem(sys.modules, module)
    # The data folder does not exist either: the logger error must come first, before any scan or model build.
    with pytest.raises(ImportError, match=f"pip install {name}"):
        pretrain(tmp_path / "o", tmp_path / "no-data", "torchvision/resnet18", logger=f"csv,{name}")
    assert not (tmp_path / "o").exists()


def test_cli_logger_errors_are_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "meta_path", [_Block("wandb"), *sys.meta_path])
    base = ["pretrain", "--data", str(tmp_path), "--model", "torchvision/resnet18", "--out", str(tmp_path / "o"),
            "--no-progress"]
    assert main([*base, "--logger", "csv,wandb"]) == 2
    err = capsys.readouterr().err
    assert "pip install wandb" in err and "Traceback" not in err
    assert main([*base, "--logger", "neptune"]) == 2
    assert "unknown logger 'neptune'" in capsys.readouterr().err


def test_resolve_loggers_names_and_objects(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    assert resolve_loggers(None) == ["csv", "tensorboard"]
    assert resolve_loggers("TensorBoard, csv") == ["csv", "tensorboard"]  # csv always first, once
    own = CSVLogger(tmp_path / "elsewhere")
    assert resolve_loggers(["tensorboard", own]) == ["csv", "tensorboard", own]
    with pytest.raises(ValueError, match="Lightning Logger objects"):
        resolve_loggers([42])


def test_manifest_records_a_logger_symlink_and_removes_only_the_link(tmp_path: Path) -> None:
    # W&B leaves `latest-run` links next to its run folders; the link goes, what it points to outside stays.
    out = tmp_path / "run"
    run_dir = out / "logs" / "wandb" / "offline-run-1"
    run_dir.mkdir(parents=True)
    (run_dir / "run.wandb").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("y")
    (out / "logs" / "wandb" / "latest-run").symlink_to(outside, target_is_directory=True)
    manifest = RunManifest(out)
    manifest.add([out / "logs" / "wandb", out / "logs" / "wandb" / "latest-run"])
    manifest.save()
    assert "logs/wandb/latest-run" in RunManifest.load(out).files
    removed, left = remove_previous_run(out)
    assert left == [] and not (out / "logs").exists()
    assert (outside / "precious.txt").read_text() == "y"
