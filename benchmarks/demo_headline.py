"""The demo's headline, recorded: SSL pretraining + the declared few-label recipe vs scratch on digits, by subset.

Runs ``warmstart demo``'s experiment (``warmstart.demo.experiment.run_experiment``, default size unless options
say otherwise) and keeps every single run. The headline method is declared before the run
(``warmstart.demo.report.HEADLINE_METHOD``: ``finetune``, i.e. ``warmstart.core.recipes.FEW_LABEL_FINETUNE``); the
table shows, per labeled fraction, scratch's and that method's accuracy on each labeled subset, their paired
differences, the mean and the wins. The other methods (probe, lora) are run and kept in the JSON but never
promoted to the headline.

    python benchmarks/demo_headline.py [--repeats 3] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import Recorder  # noqa: E402

from warmstart.demo.report import HEADLINE_METHOD, headline  # noqa: E402


def summarize(runs: list[dict], config: dict) -> dict:
    """Per fraction: scratch and the declared method on each subset, paired differences, mean, wins.

    Example:
        >>> runs = [{"fraction": 0.05, "method": m, "repeat": r, "accuracy": a, "n_labeled": 63}
        ...         for m, r, a in (("scratch", 0, 0.5), ("finetune", 0, 0.6), ("lora", 0, 0.9))]
        >>> summarize(runs, {"repeats": 1, "pretrain_epochs": 30, "epochs": 16, "seed": 0})["rows"]
        [['5%', '63', '0.500', '0.600', '+0.100', '+0.100', '1/1']]
    """
    rows = []
    for fraction, d in headline({"runs": runs}).items():
        acc = {(r["method"], r["repeat"]): r["accuracy"] for r in runs if r["fraction"] == fraction}
        repeats = sorted(k for (m, k) in acc if m == HEADLINE_METHOD and ("scratch", k) in acc)
        n = next(r["n_labeled"] for r in runs if r["fraction"] == fraction)
        rows.append([f"{fraction:.0%}", str(n), ", ".join(f"{acc[('scratch', k)]:.3f}" for k in repeats),
                     ", ".join(f"{acc[(HEADLINE_METHOD, k)]:.3f}" for k in repeats),
                     ", ".join(f"{x:+.3f}" for x in d["diffs"]), f"{statistics.mean(d['diffs']):+.3f}",
                     f"{d['wins']}/{d['repeats']}"])
    return {"title": f"warmstart demo (digits, seed {config['seed']}, {config['repeats']} labeled subsets per "
                     f"fraction, {config['pretrain_epochs']} SSL epochs, {config['epochs']} fine-tuning epochs): "
                     f"{HEADLINE_METHOD} (declared before the run) vs scratch, held-out accuracy per subset",
            "columns": ["labels", "n", "scratch", HEADLINE_METHOD, "difference per subset", "mean difference",
                        "wins"],
            "rows": rows}


def main() -> None:
    from warmstart.demo.experiment import DemoConfig, run_experiment

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the CI size of the demo")
    args = parser.parse_args()
    given = {"seed": args.seed} | ({"repeats": args.repeats} if args.repeats else {})
    config = DemoConfig.quick(**given) if args.quick else DemoConfig(**given)
    recorder_config = {k: v for k, v in asdict(config).items() if k != "extra"}
    recorder = Recorder("demo_headline", recorder_config)
    with tempfile.TemporaryDirectory() as out:
        results = run_experiment(config, Path(out), progress=False)
    runs = results["runs"]
    table = summarize(runs, recorder_config)
    for row in table["rows"]:
        print(" | ".join(row))
    recorder.write(runs, summarize)


if __name__ == "__main__":
    main()
