"""The demo's outputs: a text table, ``results.json`` and ``accuracy_vs_labels.png`` (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._optional import require

PLOT_NAME = "accuracy_vs_labels.png"
RESULTS_NAME = "results.json"
TABLE_NAME = "table.txt"


def _pm(mean: float, std: float | None, repeats: int) -> str:
    return f"{mean:.3f} ± {std:.3f}" if repeats > 1 and std is not None else f"{mean:.3f}"


def format_table(results: dict) -> str:
    """The fraction x method table: labeled images, held-out accuracy (mean ± std over the labeled subsets when
    there are several), trainable parameters, wall time per run; then 1-NN accuracy of frozen features.

    Example:
        >>> rows = [{"fraction": 0.05, "method": "scratch", "n_labeled": 63, "accuracy": 0.5, "accuracy_std": 0.02,
        ...          "repeats": 3, "trainable_params": 100, "total_params": 100, "wall_time_s": 1.0}]
        >>> print(format_table({"rows": rows, "knn_1nn": {}}))  # doctest: +NORMALIZE_WHITESPACE
        labels  n    method    accuracy (3 subsets)  trainable params  wall s
        5%      63   scratch   0.500 ± 0.020         100 (100%)        1.0
    """
    repeats = max([r.get("repeats", 1) for r in results["rows"]] or [1])
    head = f"accuracy ({repeats} subsets)" if repeats > 1 else "accuracy"
    width = max(len(head), 13 if repeats > 1 else 8) + 1
    lines = [f"{'labels':<7} {'n':<4} {'method':<9} {head:<{width}} {'trainable params':<17} wall s"]
    for r in results["rows"]:
        share = f"{r['trainable_params']:,} ({100 * r['trainable_params'] / max(r['total_params'], 1):.0f}%)"
        acc = _pm(r["accuracy"], r.get("accuracy_std"), r.get("repeats", 1))
        lines.append(f"{r['fraction']:<7.0%} {r['n_labeled']:<4} {r['method']:<9} {acc:<{width}} "
                     f"{share:<17} {r['wall_time_s']:.1f}")
    for fraction, pair in results.get("knn_1nn", {}).items():
        n = len(pair.get("ssl_runs", [0]))
        lines.append(f"1-NN on frozen features, {float(fraction):.0%} labels: random init "
                     f"{_pm(pair['random_init'], pair.get('random_init_std'), n)} -> SSL "
                     f"{_pm(pair['ssl'], pair.get('ssl_std'), n)}")
    return "\n".join(lines)


# The headline comparison is fixed before any run (never picked from the results): SSL weights + the declared
# few-label recipe (warmstart.core.recipes.FEW_LABEL_FINETUNE) against the same network from scratch.
HEADLINE_METHOD = "finetune"


def headline(results: dict, method: str = HEADLINE_METHOD) -> dict[float, dict]:
    """Per fraction: ``method`` minus scratch on each labeled subset (the same subset for both, so the difference
    is paired), their mean, sample std, and on how many subsets ``method`` won. Fractions where either did not
    run are left out.

    Example:
        >>> runs = [{"fraction": 0.1, "method": m, "repeat": r, "accuracy": a} for m, r, a in
        ...         (("scratch", 0, 0.5), ("scratch", 1, 0.6), ("finetune", 0, 0.8), ("finetune", 1, 0.55),
        ...          ("lora", 0, 0.9), ("lora", 1, 0.9))]
        >>> headline({"runs": runs})[0.1]
        {'method': 'finetune', 'diffs': [0.3, -0.05], 'gain': 0.125, 'gain_std': 0.2475, 'wins': 1, 'repeats': 2}
    """
    out = {}
    runs = results.get("runs", [])
    for f in dict.fromkeys(r["fraction"] for r in runs):
        acc = {(r["method"], r["repeat"]): r["accuracy"] for r in runs if r["fraction"] == f}
        repeats = sorted(k for (m, k) in acc if m == method and ("scratch", k) in acc)
        if not repeats:
            continue
        diffs = [round(acc[(method, k)] - acc[("scratch", k)], 4) for k in repeats]
        std = round(float(np.std(diffs, ddof=1)), 4) if len(diffs) > 1 else 0.0
        out[f] = {"method": method, "diffs": diffs, "gain": round(float(np.mean(diffs)), 4), "gain_std": std,
                  "wins": sum(d > 0 for d in diffs), "repeats": len(diffs)}
    return out


def format_headline(results: dict, method: str = HEADLINE_METHOD) -> str:
    """The headline lines ``warmstart demo`` prints: per fraction, the paired per-subset differences.

    Example:
        >>> runs = [{"fraction": 0.05, "method": m, "repeat": r, "accuracy": a} for m, r, a in
        ...         (("scratch", 0, 0.5), ("scratch", 1, 0.6), ("finetune", 0, 0.7), ("finetune", 1, 0.55))]
        >>> print(format_headline({"runs": runs}))
        headline (declared before the run): finetune minus scratch, paired by labeled subset
        5% labels: +0.075 mean; per subset +0.200, -0.050; better on 1/2 subsets
    """
    details = headline(results, method)
    if not details:
        return (f"headline (declared before the run): {method} minus scratch; not measured (run both methods, "
                f"e.g. --methods scratch,{method})")
    lines = [f"headline (declared before the run): {method} minus scratch, paired by labeled subset"]
    for fraction, d in details.items():
        lines.append(f"{fraction:.0%} labels: {d['gain']:+.3f} mean; per subset "
                     f"{', '.join(f'{x:+.3f}' for x in d['diffs'])}; better on {d['wins']}/{d['repeats']} subsets")
    return "\n".join(lines)


def write_results(results: dict, out: Path) -> dict[str, Path]:
    """Write ``results.json``, ``table.txt`` and the plot into ``out``; returns their paths.

    Example:
        >>> import tempfile
        >>> rows = [{"fraction": f, "method": "scratch", "n_labeled": 9, "accuracy": 0.5,
        ...          "trainable_params": 1, "total_params": 1, "wall_time_s": 1.0} for f in (0.1, 0.2)]
        >>> sorted(write_results({"rows": rows}, Path(tempfile.mkdtemp())))
        ['plot', 'results', 'table']
    """
    out.mkdir(parents=True, exist_ok=True)
    results = {**results, "headline": {str(k): v for k, v in headline(results).items()}}
    paths = {"results": out / RESULTS_NAME, "table": out / TABLE_NAME, "plot": out / PLOT_NAME}
    tmp = paths["results"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, paths["results"])
    paths["table"].write_text(format_table(results) + "\n")
    plot(results, paths["plot"])
    return paths


def plot(results: dict, path: Path) -> Path:
    """Accuracy vs labeled fraction, one line per method (log x axis)."""
    matplotlib = require("matplotlib", "demo")
    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for method in dict.fromkeys(r["method"] for r in results["rows"]):
        rows = sorted((r for r in results["rows"] if r["method"] == method), key=lambda r: r["fraction"])
        ax.errorbar([100 * r["fraction"] for r in rows], [r["accuracy"] for r in rows], capsize=3, marker="o",
                    yerr=[r.get("accuracy_std", 0.0) for r in rows], label=method)
    ax.set_xscale("log")
    ax.set_xlabel("labeled fraction of the training pool (%)")
    repeats = max(r.get("repeats", 1) for r in results["rows"])
    ax.set_ylabel(f"held-out accuracy (mean ± std, {repeats} subsets)" if repeats > 1 else "held-out accuracy")
    ax.set_ylim(0, 1)
    ax.axhline(0.1, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_title("digits: SSL-pretrained vs from scratch, same budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
