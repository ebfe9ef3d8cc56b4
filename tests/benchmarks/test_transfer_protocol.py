"""The transfer benchmark's protocol: fine-tuning shifts per sample, reuse only of matching pretraining, the
results' records and title, and the optional scratch control row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import transfer  # noqa: E402


def test_shift_moves_each_image_of_a_batch_by_its_own_offset_and_keeps_the_content() -> None:
    shift = transfer.finetune_augmentation({"finetune_augment": "shift", "finetune_shift_px": 4, "image_size": 32})
    image = torch.zeros(1, 3, 32, 32)
    image[..., 12:20, 12:20] = 1.0  # a bright square in the middle: where it lands tells the offset
    torch.manual_seed(0)
    out = shift(image.repeat(16, 1, 1, 1))
    assert out.shape == (16, 3, 32, 32)
    corners = {tuple((o[0] > 0.5).nonzero().min(0).values.tolist()) for o in out}
    assert len(corners) > 4, "every sample must draw its own shift"
    assert all(max(abs(r - 12), abs(c - 12)) <= 4 for r, c in corners)
    assert torch.allclose(out.sum(dim=(1, 2, 3)), image.sum().expand(16))  # moved, never cut (4 px margin)


def test_no_augmentation_is_none_and_an_unknown_name_is_refused() -> None:
    assert transfer.finetune_augmentation({"finetune_augment": "none"}) is None
    with pytest.raises(ValueError, match="'none' or 'shift'"):
        transfer.finetune_augmentation({"finetune_augment": "flip"})


def test_distillation_weights_are_reused_only_for_the_same_teacher_size(tmp_path: Path) -> None:
    weights = tmp_path / "backbone.safetensors"
    weights.write_bytes(b"x")
    old = {"dataset": "d", "arm": "distill", "status": "ok", "weights": str(weights), "epochs": 5}  # no size: 64
    cfg = {"epochs": {"d": {"distill": 5}}, "teacher_image_size": 64}
    assert transfer.reused([old], "d", "distill", cfg)["epochs"] == 5
    assert transfer.reused([old], "d", "distill", {**cfg, "teacher_image_size": 128}) is None
    new = {**old, "teacher_image_size": 128}
    assert transfer.reused([new], "d", "distill", {**cfg, "teacher_image_size": 128}) is not None
    assert transfer.reused([new], "d", "distill", cfg) is None


def test_a_reused_record_gives_its_weights_and_keeps_only_what_the_run_records(tmp_path: Path) -> None:
    weights = tmp_path / "backbone.safetensors"
    weights.write_bytes(b"x")
    record = {"dataset": "d", "arm": "distill", "status": "ok", "weights": str(weights), "epochs": 1,
              "unlabeled_extra": 9}
    cfg = {"epochs": {"d": {"distill": 1}}, "unlabeled_extra": 9, "teacher_image_size": 64}
    res = transfer.reused([record], "d", "distill", cfg)
    path, kept = transfer.pretrain_run_record(res)
    assert path == str(weights)
    assert kept == {"status": "ok", "epochs": 1, "reused_from": str(tmp_path)}  # the pool size is in the config
    assert transfer.pretrain_run_record({"status": "not run: no venv", "epochs": 1})[0] is None


def test_labels_per_class_must_be_positive_and_seeds_distinct():
    with pytest.raises(SystemExit, match="--labels-per-class must be >= 1"):
        transfer.main(["--labels-per-class", "10", "0"])
    for option in ("--labels-per-class", "--seeds"):  # a repeat would be pooled as if it were another seed
        with pytest.raises(SystemExit, match=f"{option} repeats a value"):
            transfer.main([option, "10", "10"])


def test_the_table_title_names_a_fine_tune_length_other_than_the_default() -> None:
    runs = [{"kind": "eval", "dataset": "d", "arm": "scratch", "eval": "knn", "recipe": "-", "labels_per_class": 10,
             "seed": 0, "accuracy": 0.5}]
    longer = transfer.summarize(runs, {"finetune_steps": 600, "finetune_augment": "shift", "finetune_shift_px": 4})
    assert "fine-tunes of 600 steps; every fine-tune with up to 4 px shifts" in longer["title"]
    default = transfer.summarize(runs, {"finetune_steps": transfer.FULL["finetune_steps"]})["title"]
    assert "fine-tunes of" not in default and "fine-tunes of" not in transfer.summarize(runs, {})["title"]


@pytest.mark.parametrize("control", [True, False])
def test_the_scratch_control_row_is_fine_tuned_unless_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              control: bool) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the work folder too
    argv = ["--quick", "--arms", "scratch", "--seeds", "0", "--out", str(tmp_path / "results")]
    transfer.main(argv + ([] if control else ["--no-scratch-control"]))
    payload = json.loads((tmp_path / "results" / "transfer.json").read_text())
    recipes = [r["recipe"] for r in payload["runs"] if r.get("eval") == "finetune"]
    assert recipes == (["full", payload["config"]["declared"]] if control else ["full"])
    assert payload["config"]["scratch_control"] is control
