"""The ``warmstart`` command in-process via ``main([...])``: pretrain end to end, embed its export, models, help."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ssl_helpers import digit_folder, one_thread  # noqa: F401 (one_thread: autouse fixture)

from warmstart.cli import METHOD_NAMES, build_parser, main
from warmstart.core.ssl import METHODS


def test_cli_pretrain_then_embed_end_to_end(tmp_path: Path, capsys) -> None:
    data = digit_folder(tmp_path / "data", 16)
    out = tmp_path / "run"
    code = main(["pretrain", "--data", str(data), "--model", "torchvision/resnet18", "--method", "simclr",
                 "--out", str(out), "--epochs", "1", "--batch-size", "8", "--image-size", "32",
                 "--devices", "1", "--accelerator", "cpu", "--seed", "3", "--lr", "0.002",
                 "--set", "temperature=0.1", "--memory-format", "contiguous", "--no-progress"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert printed["steps"] == summary["steps"] == 2 and summary["model"] == "torchvision/resnet18"
    assert summary["lr"] == 0.002 and summary["seed"] == 3 and summary["memory_format"] == "contiguous"
    assert (out / "exported" / "backbone.safetensors").is_file()
    # the same folder again is refused (exit code 2, one-line reason), --overwrite replaces it
    args = ["pretrain", "--data", str(data), "--model", "torchvision/resnet18", "--out", str(out), "--epochs", "1",
            "--batch-size", "8", "--image-size", "32", "--accelerator", "cpu", "--devices", "1", "--no-progress"]
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    # embed with the exported weights (spec read from backbone.json)
    emb = tmp_path / "emb"
    assert main(["embed", "--data", str(data), "--weights", str(out / "exported"), "--out", str(emb),
                 "--image-size", "32", "--no-progress"]) == 0
    feats = np.load(emb / "embeddings.npy")
    assert feats.shape == (16, 512)


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    code = main(["pretrain", "--data", str(tmp_path / "nope"), "--model", "torchvision/resnet18",
                 "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("warmstart pretrain: error:") and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["pretrain", "--data", "d", "--model", "m", "--out", "o", "--method", "mae"])


def test_cli_models_and_help_document_everything(capsys) -> None:
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "torchvision/resnet18" in text and all(f"  {m}:" in text for m in METHODS)
    assert set(METHOD_NAMES) == set(METHODS)
    sub = build_parser()._subparsers._group_actions[0].choices["pretrain"]
    help_text = sub.format_help()
    for option in ["--data", "--model", "--method", "--out", "--epochs", "--batch-size", "--image-size",
                   "--devices", "--strategy", "--precision", "--num-nodes", "--resume", "--overwrite",
                   "--val-data", "--teacher", "--teacher-weights", "--lr", "--seed", "--set"]:
        assert option in help_text, option
    assert all(a.help for a in sub._actions)  # every option is documented
    with pytest.raises(SystemExit):
        main(["--help"])
