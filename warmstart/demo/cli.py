"""``warmstart demo``: argument parsing and the run entry point (``warmstart/cli.py`` calls these lazily)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .finetune import METHODS

DEFAULT_OUT = "warmstart-demo"


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--fractions takes comma-separated numbers like 0.01,0.05,0.2; got {text!r}") from err
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"--fractions must be in (0, 1], e.g. 0.01,0.05,0.2; got {text!r}")
    return values


def _methods(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in METHODS]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad or text!r}; choose from {','.join(METHODS)}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the demo's options to ``parser`` (a ``warmstart demo`` subparser or a standalone parser).

    Example:
        >>> p = add_arguments(argparse.ArgumentParser())
        >>> a = p.parse_args(["--quick", "--fractions", "0.05,0.2"])
        >>> a.quick, a.fractions
        (True, (0.05, 0.2))
    """
    parser.description = (
        "Self-supervised pretraining of a small CNN on scikit-learn's digits (labels unused), then fine-tuning "
        "with few labels (Freeze / the declared Finetune recipe / LoRA callbacks) vs the same network "
        "trained from scratch with the same budget. Prints a table and the headline declared before the run "
        "(finetune minus scratch, paired by labeled subset), and writes results.json, table.txt and "
        "accuracy_vs_labels.png to --out. Offline; about 2.5 minutes on 2 CPU cores (--quick: under 1).")
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    add = parser.add_argument
    add("--out", default=DEFAULT_OUT, help="output folder (must be empty or new unless --overwrite)")
    add("--overwrite", action="store_true", help="allow a non-empty --out (its demo files are replaced)")
    add("--quick", action="store_true",
        help="reduced size for CI: fractions 0.01,0.2, methods scratch,finetune,lora, 4 pretrain + 10 fine-tune "
             "epochs, 1 labeled subset (options given explicitly still win)")
    add("--fractions", type=_fractions, default=None,
        help="labeled fractions of the training pool, comma-separated (default 0.01,0.05,0.2)")
    add("--methods", type=_methods, default=None,
        # argparse %-formats help strings: a literal % in a description must be doubled
        help="fine-tuning methods, comma-separated: " + "; ".join(f"{k} = {v}".replace("%", "%%")
                                                                   for k, v in METHODS.items())
        + " (default: all)")
    add("--method", default="simclr", choices=("simclr", "byol", "dino"), help="self-supervised pretraining method")
    add("--pretrain-epochs", type=int, default=None, help="SSL epochs over the unlabeled pool (default 30)")
    add("--epochs", type=int, default=None,
        help="fine-tuning epochs per run; every run sees epochs x 128 labeled samples (default 16)")
    add("--repeats", type=int, default=None,
        help="labeled subsets per fraction: every (fraction, method) cell is trained once per subset (all methods "
             "see the same subsets) and the table shows mean ± std; the pretrained backbone is shared "
             "(default 3; --quick: 1)")
    add("--image-size", type=int, default=16, help="side in pixels the 8x8 digits are upsampled to")
    add("--width", type=int, default=16, help="channels of the CNN's first layer (features = 4 x width)")
    add("--lr", type=float, default=3e-3, help="fine-tuning learning rate (the head's, under DiscriminativeLR)")
    add("--seed", type=int, default=0, help="seed of splits, labeled subsets, init and augmentation")
    add("--no-progress", action="store_true", help="no progress bars or step messages (the table is still printed)")
    return parser


def config_from_args(args: argparse.Namespace):
    """Turn parsed arguments into a ``DemoConfig`` (``--quick`` first, explicit options on top).

    Example:
        >>> a = add_arguments(argparse.ArgumentParser()).parse_args(["--quick", "--epochs", "3"])
        >>> c = config_from_args(a)
        >>> c.epochs, c.pretrain_epochs
        (3, 4)
    """
    from .experiment import DemoConfig

    given = {"fractions": args.fractions, "methods": args.methods, "pretrain_epochs": args.pretrain_epochs,
             "epochs": args.epochs, "repeats": args.repeats}
    given = {k: v for k, v in given.items() if v is not None}
    common = {"ssl_method": args.method, "image_size": args.image_size, "width": args.width, "lr": args.lr,
              "seed": args.seed}
    return DemoConfig.quick(**given, **common) if args.quick else DemoConfig(**given, **common)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {out} is not empty; pass --overwrite to replace the demo's results there, "
                         "or choose another folder")


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed ``args``; print the table; return the exit code (0 ok, 2 bad input).

    Example:
        >>> import tempfile
        >>> args = add_arguments(argparse.ArgumentParser()).parse_args(["--quick", "--out", tempfile.mkdtemp()])
        >>> run(args)  # doctest: +SKIP
        0
    """
    import shutil

    from .experiment import run_experiment
    from .report import format_headline, format_table, write_results

    out = Path(args.out)
    try:
        config = config_from_args(args)
        config.validate()
        _check_out(out, args.overwrite)
    except ValueError as err:
        print(f"warmstart demo: error: {err}", file=sys.stderr)
        return 2
    if args.overwrite and (out / "pretrain").exists():
        shutil.rmtree(out / "pretrain")  # only the demo's own subfolder; other files are replaced one by one
    results = run_experiment(config, out, progress=not args.no_progress)
    paths = write_results(results, out)
    print()
    print(format_table(results))
    print(format_headline(results))
    print(f"total {results['total_wall_time_s']:.0f} s; wrote {paths['results']}, {paths['table']}, {paths['plot']}")
    return 0
