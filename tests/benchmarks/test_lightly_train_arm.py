"""Fast checks of the LightlyTrain benchmark arm and the side-by-side table, without running LightlyTrain.

LightlyTrain itself runs only in ``benchmarks/ssl_vs_lightly_train.py`` (minutes, its own venv); here: its export
loads into torchvision's resnet18 through warmstart's loader, the arguments it gets cannot download anything, the
AGPL package is never imported by warmstart or the benchmark modules, and the table is computed from the runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import lightly_train_arm as arm  # noqa: E402
import ssl_vs_lightly_train as bench  # noqa: E402


def test_export_drops_the_classifier_and_loads_into_resnet18_with_the_trained_values(tmp_path: Path) -> None:
    from warmstart.core.checkpoints import load_backbone_weights

    trained = torchvision.models.resnet18()
    with torch.no_grad():
        trained.layer4[1].conv2.weight.add_(1.0)  # differs from any fresh init
    torch.save(trained.state_dict(), tmp_path / "exported_last.pt")
    weights = arm.export_lightly_train_backbone(tmp_path / "exported_last.pt", tmp_path / "backbone.safetensors")
    fresh = torchvision.models.resnet18(num_classes=10)
    report = load_backbone_weights(fresh, weights)
    assert report.missing == ["fc.weight", "fc.bias"]
    assert torch.equal(fresh.layer4[1].conv2.weight, trained.layer4[1].conv2.weight)


def test_export_refuses_what_is_not_a_resnet_state_dict(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        arm.export_lightly_train_backbone(tmp_path / "x.pt", tmp_path / "b.safetensors")
    with pytest.raises(FileNotFoundError, match="no export"):
        arm.export_lightly_train_backbone(tmp_path / "missing.pt", tmp_path / "b.safetensors")


def test_arguments_are_offline_and_explicit() -> None:
    kw = arm.lightly_train_kwargs(Path("d"), Path("o"), model="torchvision/resnet18", method="simclr", epochs=2,
                                  batch_size=32, image_size=32, num_workers=1, seed=0, steps=None,
                                  transform_args={"gaussian_blur": None}, method_args={"hidden_dim": 512})
    assert kw["model_args"] == {"weights": None}  # random init, never a download
    assert kw["transform_args"] == {"image_size": [32, 32], "gaussian_blur": None}
    assert (kw["accelerator"], kw["devices"], kw["precision"]) == ("cpu", 1, "32-true")
    assert "trainer_args" not in kw
    env = arm.lightly_train_env(Path("o"))
    assert env["LIGHTLY_TRAIN_EVENTS_DISABLED"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    for method, model in (("distillation", "torchvision/resnet18"), ("dinov2", "torchvision/resnet18"),
                          ("simclr", "dinov2/vits14")):
        with pytest.raises(ValueError):
            arm.lightly_train_kwargs(Path("d"), Path("o"), model=model, method=method, epochs=1, batch_size=2,
                                     image_size=32, num_workers=0, seed=0, steps=None, transform_args=None,
                                     method_args=None)


def test_the_agpl_package_is_never_imported_here() -> None:
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import warmstart, warmstart.pretraining, "
            "lightly_train_arm, ssl_vs_lightly_train; sys.exit('lightly_train' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    offenders = [p for p in (ROOT / "warmstart").rglob("*.py") if "import lightly_train" in p.read_text()]
    assert offenders == []


def test_identical_files_are_shared_and_different_ones_kept(tmp_path: Path) -> None:
    src, dst = tmp_path / "a", tmp_path / "b"
    for root in (src, dst):
        (root / "pkg").mkdir(parents=True)
    (src / "pkg" / "same.so").write_bytes(b"x" * 100_000)
    (dst / "pkg" / "same.so").write_bytes(b"x" * 100_000)
    (src / "pkg" / "other.so").write_bytes(b"x" * 100_000)
    (dst / "pkg" / "other.so").write_bytes(b"y" * 100_000)
    assert arm.share_identical_files(src, dst) == 100_000
    assert (src / "pkg" / "same.so").stat().st_ino == (dst / "pkg" / "same.so").stat().st_ino
    assert (dst / "pkg" / "other.so").read_bytes() == b"y" * 100_000


def test_table_is_computed_from_every_round_and_judges_the_goals() -> None:
    runs = []
    for rnd, (ws, lt) in enumerate([(30.0, 20.0), (24.0, 24.0), (33.0, 22.0)]):
        runs += [{"round": rnd, "arm": "warmstart", "images_per_s": ws, "wall_s": 50.0, "cpu_s": 90.0},
                 {"round": rnd, "arm": "lightly_train", "images_per_s": lt, "wall_s": 60.0, "cpu_s": 99.0}]
    table = bench.summarize(runs, {"arms": ["warmstart", "lightly_train"]})
    ratio = table["rows"][-1]
    assert ratio[0] == "warmstart / LightlyTrain"
    assert ratio[1] == "1.500 (1.000..1.500, n=3)"  # median of 1.5, 1.0, 1.5: every round kept
    assert ratio[2] == "1.200 (1.200..1.200, n=3)" and ratio[3] == "1.100 (1.100..1.100, n=3)"
    assert ratio[4] == ">= 1.2: median only, not in every round (not established)"  # round 1 was 1.0
    steady = bench.summarize([r for r in runs if r["round"] != 1], {"arms": ["warmstart", "lightly_train"]})
    assert steady["rows"][-1][4] == ">= 1.2: met in every round"
    assert all(len(row) == len(table["columns"]) for row in table["rows"])
    assert bench.rotation(1, ["a", "b", "c", "d"]) == ["b", "c", "d", "a"]
