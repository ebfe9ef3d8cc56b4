"""Fast unit checks of the demo's data splits, model and report (no training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from warmstart.demo.data import labeled_subset, load_digit_images, split_indices  # noqa: E402
from warmstart.demo.experiment import repeat_seed, summarize_runs  # noqa: E402
from warmstart.demo.model import DigitNet  # noqa: E402
from warmstart.demo.report import format_headline, format_table, headline  # noqa: E402


def test_demo_splits_are_disjoint_stratified_and_seeded():
    images, labels = load_digit_images(16)
    assert images.shape == (1797, 16, 16, 3) and images.dtype == np.uint8
    pool, test = split_indices(labels, 0.3, seed=0)
    assert not set(pool) & set(test) and len(pool) + len(test) == 1797
    sub = labeled_subset(pool, labels, 0.01, seed=0)
    assert set(sub) <= set(pool) and len(set(labels[sub])) == 10
    assert np.array_equal(sub, labeled_subset(pool, labels, 0.01, seed=0))
    assert not np.array_equal(sub, labeled_subset(pool, labels, 0.01, seed=1))
    with pytest.raises(ValueError, match="fractions"):
        labeled_subset(pool, labels, 0.0)


def test_demo_backbone_keys_match_classifier():
    backbone, classifier = DigitNet(8, 0), DigitNet(8, 10)
    assert set(backbone.state_dict()) == {k for k in classifier.state_dict() if not k.startswith("head.")}
    assert backbone(torch.zeros(2, 3, 16, 16)).shape == (2, 32)


def test_demo_report_table():
    rows = [{"fraction": 0.01, "method": m, "n_labeled": 13, "accuracy": a, "trainable_params": t,
             "total_params": 100, "wall_time_s": 1.0} for m, a, t in (("scratch", 0.5, 100), ("lora", 0.7, 10))]
    assert "lora" in format_table({"rows": rows, "knn_1nn": {"0.01": {"random_init": 0.4, "ssl": 0.6}}})


def test_demo_repeats_are_summarized_as_mean_std_and_paired_gains():
    # three labeled subsets; finetune beats scratch on two of them (paired by subset, not by sorted accuracy);
    # lora is better on average, but the headline stays the method declared before the run
    accs = {"scratch": (0.50, 0.60, 0.70), "finetune": (0.60, 0.70, 0.65), "lora": (0.9, 0.9, 0.9)}
    runs = [{"fraction": 0.01, "method": m, "repeat": k, "n_labeled": 13, "accuracy": accs[m][k],
             "trainable_params": t, "total_params": 100, "wall_time_s": 1.0 + k}
            for k in range(3) for m, t in (("scratch", 100), ("finetune", 100), ("lora", 10))]
    rows = summarize_runs(runs)
    assert [r["method"] for r in rows] == ["scratch", "finetune", "lora"]
    assert rows[0]["accuracies"] == [0.5, 0.6, 0.7] and rows[0]["accuracy"] == 0.6
    assert rows[0]["accuracy_std"] == 0.1 and rows[0]["wall_time_s"] == 2.0 and rows[0]["repeats"] == 3
    detail = headline({"rows": rows, "runs": runs})[0.01]
    assert detail["method"] == "finetune" and detail["wins"] == 2 and detail["repeats"] == 3
    assert detail["diffs"] == [0.1, 0.1, -0.05]
    assert abs(detail["gain"] - 0.05) < 1e-9 and detail["gain_std"] > 0
    assert "1% labels: +0.050 mean; per subset +0.100, +0.100, -0.050; better on 2/3 subsets" in \
        format_headline({"runs": runs})
    # a run without the declared method has no headline (nothing else is promoted to it)
    assert headline({"runs": [r for r in runs if r["method"] != "finetune"]}) == {}
    table = format_table({"rows": rows, "knn_1nn": {"0.01": {"random_init": 0.4, "random_init_std": 0.01,
                                                             "ssl": 0.6, "ssl_std": 0.02, "ssl_runs": [0.6] * 3}}})
    assert "accuracy (3 subsets)" in table and "0.600 ± 0.100" in table
    assert "0.400 ± 0.010 -> SSL 0.600 ± 0.020" in table
    assert len({repeat_seed(0, k) for k in range(3)} | {repeat_seed(1, 0)}) == 4
