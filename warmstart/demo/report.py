"""The demo's outputs: a text table, ``results.json`` and ``accuracy_vs_labels.png`` (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .._optional import require

PLOT_NAME = "accuracy_vs_labels.png"
RESULTS_NAME = "results.json"
TABLE_NAME = "table.txt"


def format_table(results: dict) -> str:
    """The fraction x method table: labeled images, held-out accuracy, trainable parameters, wall time.

    Example:
        >>> rows = [{"fraction": 0.05, "method": "scratch", "n_labeled": 63, "accuracy": 0.5,
        ...          "trainable_params": 100, "total_params": 100, "wall_time_s": 1.0}]
        >>> print(format_table({"rows": rows, "knn_1nn": {}}))  # doctest: +NORMALIZE_WHITESPACE
        labels  n    method    accuracy  trainable params  wall s
        5%      63   scratch   0.500     100 (100%)        1.0
    """
    lines = [f"{'labels':<7} {'n':<4} {'method':<9} {'accuracy':<9} {'trainable params':<17} wall s"]
    for r in results["rows"]:
        share = f"{r['trainable_params']:,} ({100 * r['trainable_params'] / max(r['total_params'], 1):.0f}%)"
        lines.append(f"{r['fraction']:<7.0%} {r['n_labeled']:<4} {r['method']:<9} {r['accuracy']:<9.3f} "
                     f"{share:<17} {r['wall_time_s']:.1f}")
    for fraction, pair in results.get("knn_1nn", {}).items():
        lines.append(f"1-NN on frozen features, {float(fraction):.0%} labels: random init {pair['random_init']:.3f}"
                     f" -> SSL {pair['ssl']:.3f}")
    return "\n".join(lines)


def gains(results: dict) -> dict[float, float]:
    """Best pretrained method's accuracy minus scratch's, per labeled fraction (where both ran).

    Example:
        >>> rows = [{"fraction": 0.1, "method": "scratch", "accuracy": 0.5},
        ...         {"fraction": 0.1, "method": "lora", "accuracy": 0.8}]
        >>> gains({"rows": rows})
        {0.1: 0.3}
    """
    out = {}
    for f in dict.fromkeys(r["fraction"] for r in results["rows"]):
        cell = {r["method"]: r["accuracy"] for r in results["rows"] if r["fraction"] == f}
        others = [v for k, v in cell.items() if k != "scratch"]
        if "scratch" in cell and others:
            out[f] = round(max(others) - cell["scratch"], 4)
    return out


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
    results = {**results, "gain_over_scratch": {str(k): v for k, v in gains(results).items()}}
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
        ax.plot([100 * r["fraction"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("labeled fraction of the training pool (%)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.axhline(0.1, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_title("digits: SSL-pretrained vs from scratch, same budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
