"""``warmstart demo`` end to end: --quick size gives a measured gain over scratch; same seed -> same results."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import pytest

pytest.importorskip("lightly")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from warmstart.demo.cli import add_arguments, run  # noqa: E402


def _run(out, *extra: str) -> int:
    args = add_arguments(argparse.ArgumentParser()).parse_args(["--out", str(out), "--no-progress", *extra])
    return run(args)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "quick"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert _run(out, "--quick") == 0
    return out, json.loads((out / "results.json").read_text()), printed.getvalue()


def test_demo_quick_writes_outputs(quick):
    out, results, _ = quick
    png = (out / "accuracy_vs_labels.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    cells = {(r["fraction"], r["method"]) for r in results["rows"]}
    assert cells == {(f, m) for f in (0.01, 0.2) for m in ("scratch", "finetune", "lora")}
    table = (out / "table.txt").read_text()
    for method in ("scratch", "finetune", "lora"):
        assert table.count(f" {method} ") == 2
    lora = [r for r in results["rows"] if r["method"] == "lora"]
    scratch = [r for r in results["rows"] if r["method"] == "scratch"]
    assert all(r["trainable_params"] < 0.2 * r["total_params"] for r in lora)
    assert all(r["trainable_params"] == r["total_params"] for r in scratch)
    assert results["pretrain"]["steps"] > 0 and results["pretrain"]["final_loss"] is not None
    repeats = results["config"]["repeats"]
    assert len(results["runs"]) == repeats * len(cells)
    assert all(len(r["accuracies"]) == r["repeats"] == repeats for r in results["rows"])


def test_demo_headline_is_the_declared_method_paired_by_subset(quick):
    _, results, printed = quick
    # lora is also run, but the headline is always finetune (declared before the run), never the best on the test set
    acc = {(r["fraction"], r["method"], r["repeat"]): r["accuracy"] for r in results["runs"]}
    for fraction in (0.01, 0.2):
        d = results["headline"][str(fraction)]
        assert d["method"] == "finetune" and d["repeats"] == len(d["diffs"]) == 1
        assert d["diffs"] == [round(acc[(fraction, "finetune", 0)] - acc[(fraction, "scratch", 0)], 4)]
        assert d["wins"] == int(d["diffs"][0] > 0)
        assert f"{fraction:.0%} labels: {d['gain']:+.3f} mean; per subset {d['diffs'][0]:+.3f}; better on " \
               f"{d['wins']}/1 subsets" in printed
    assert "headline (declared before the run): finetune minus scratch, paired by labeled subset" in printed
    assert "best pretrained" not in printed


def test_demo_quick_pretrained_beats_scratch(quick):
    _, results, _ = quick
    acc = {(r["fraction"], r["method"]): r["accuracy"] for r in results["rows"]}
    assert all(a > 0.1 for a in acc.values()), acc  # every cell above chance (10 classes)
    # The measured gain (see README "The demo"): with 1% of the labels (13 images) the SSL-pretrained,
    # gradually unfrozen network beats the same network trained from scratch on the same budget.
    assert acc[(0.01, "finetune")] > acc[(0.01, "scratch")] + 0.03, acc
    # and SSL features are better than random ones before any fine-tuning (1-NN with the same labels)
    knn = results["knn_1nn"]["0.01"]
    assert knn["ssl"] > knn["random_init"], knn


def test_demo_same_seed_same_results(tmp_path, capsys):
    small = ["--fractions", "0.05", "--methods", "scratch,lora", "--pretrain-epochs", "1", "--epochs", "2",
             "--repeats", "2"]
    assert _run(tmp_path / "a", *small) == 0
    assert _run(tmp_path / "b", *small) == 0
    a, b = (json.loads((tmp_path / x / "results.json").read_text()) for x in ("a", "b"))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]  # noqa: E731
    assert strip(a["rows"]) == strip(b["rows"]) and strip(a["runs"]) == strip(b["runs"])
    assert a["knn_1nn"] == b["knn_1nn"]
    # the repeats are different labeled subsets (seeds), and the table reports their mean ± std
    runs = [r for r in a["runs"] if r["method"] == "scratch"]
    assert [r["repeat"] for r in runs] == [0, 1] and runs[0]["seed"] != runs[1]["seed"]
    row = next(r for r in a["rows"] if r["method"] == "scratch")
    assert row["accuracies"] == [r["accuracy"] for r in runs]
    assert abs(row["accuracy"] - sum(row["accuracies"]) / 2) < 1e-3
    out = capsys.readouterr().out
    assert "accuracy (2 subsets)" in out and f"{row['accuracy']:.3f} ± {row['accuracy_std']:.3f}" in out
    # without the declared method there is no headline, and the demo says so instead of picking another method
    assert "finetune minus scratch; not measured" in out and a["headline"] == {}


def test_demo_refuses_non_empty_out(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user file")
    assert _run(tmp_path, "--quick") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "user file"


def test_demo_help_documents_every_option(capsys):
    parser = add_arguments(argparse.ArgumentParser(prog="warmstart demo"))
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for option in ("--out", "--overwrite", "--quick", "--fractions", "--methods", "--method", "--pretrain-epochs",
                   "--epochs", "--repeats", "--image-size", "--width", "--lr", "--seed", "--no-progress"):
        assert option in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--fractions", "0,2"])


def test_demo_rejects_zero_repeats(tmp_path, capsys):
    assert _run(tmp_path / "out", "--quick", "--repeats", "0") == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
