"""The ``warmstart`` command: ``pretrain`` | ``embed`` | ``models`` | ``demo``.

Heavy frameworks load only inside the sub-command that needs them, so ``warmstart --help`` is instant.

Example:
    >>> main(["models"])  # doctest: +ELLIPSIS
    backbone specs (examples; any torchvision / timm model name works):
    ...
    0
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Sequence
from typing import Any

METHOD_NAMES = ("simclr", "byol", "dino", "distillation")  # kept in sync with warmstart.core.ssl.METHODS (tested)
TEXT_METHODS = ("mlm", "clm")  # text continued pretraining of an hf/<folder> model on transformers.Trainer


def _devices(value: str) -> int | str | list[int]:
    # Lightning accepts "auto", a count or a list of indices; turn "2" into 2 and "0,1" into [0, 1].
    if value == "auto":
        return value
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    try:
        return int(value)
    except ValueError:
        return value


def _workers(value: str) -> int | str:
    # "auto" (per device, from the usable cores) or a count.
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a count, got {value!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {count}")
    return count


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # plain strings need no quotes: --set loss=mse
    return key.strip().replace("-", "_"), value


def _epochs(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"epochs must be a whole number or 'auto', got {value!r}") from None


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="self-supervised pretraining / distillation of a backbone on unlabeled images",
        description="Pretrain a backbone on a folder of unlabeled images with a Lightning Trainer and export its "
                    "weights in the model's native key layout to OUT/exported/backbone.safetensors (+ .pt).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="folder of unlabeled images (searched recursively)")
    p.add_argument("--model", required=True,
                   help="backbone spec: torchvision/<name>, timm/<name>, hf/<type or folder>, "
                        "ultralytics/<name>.yaml (see `warmstart models`)")
    p.add_argument("--method", default="simclr", choices=METHOD_NAMES + TEXT_METHODS,
                   help="SSL method; mlm / clm: continued pretraining of an hf/<folder> text model on raw text")
    p.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite or --resume)")
    p.add_argument("--epochs", type=_epochs, default=10, metavar="N|auto",
                   help="training epochs; auto = a budget of 10k optimizer steps, 10 to 500 epochs")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch per device")
    p.add_argument("--global-batch-size", type=int, default=None,
                   help="images per optimizer step over all devices; gradient accumulation is derived from it "
                        "(default: batch size x devices x nodes)")
    p.add_argument("--accumulate-grad-batches", type=int, default=None,
                   help="accumulate gradients over N batches (instead of --global-batch-size)")
    p.add_argument("--lr-scaling", default="none", choices=("linear", "none"),
                   help="default lr = the method lr (none) or method lr x global batch / 256 (linear, opt-in); "
                        "ignored with --lr")
    p.add_argument("--warmup-epochs", type=float, default=None,
                   help="lr warmup length in epochs (default: 10%% of the steps)")
    p.add_argument("--image-size", type=int, default=64, help="side of the square training views in pixels")
    p.add_argument("--channels", type=int, default=None, metavar="N",
                   help="input channels for non-RGB images (1: X-ray/depth, 4+: multi-band; 16-bit PNG/TIFF and "
                        ".npy read at full precision; every image must have N channels). Default: RGB")
    p.add_argument("--devices", type=_devices, default="auto", help="Lightning devices: auto, a count, or 0,1")
    p.add_argument("--strategy", default="auto", help="Lightning strategy: auto, ddp, fsdp, ...")
    p.add_argument("--precision", default="32-true", help="Lightning precision: 32-true, bf16-mixed, 16-mixed")
    p.add_argument("--num-nodes", type=int, default=1, help="number of machines (Lightning num_nodes)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu, mps")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from checkpoints/last.ckpt (mid-epoch where it was saved mid-epoch)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in OUT: removes only the files the previous run listed in its manifest")
    p.add_argument("--checkpoint-every", default="5min", metavar="N|DURATION",
                   help="also write checkpoints/last.ckpt every N steps or every duration (90s, 5min, 1h); 0: only "
                        "at epoch ends. Ctrl-C / SIGTERM always write one, then exit with 130 / 143")
    p.add_argument("--views", default="auto", choices=("auto", "batched", "pil"),
                   help="where augmented views are made: batched = on the training device, per-image random "
                        "parameters (kornia; --channels images too); pil = per image in the DataLoader (lightly/PIL); "
                        "auto = batched, except with a custom transform or without kornia")
    p.add_argument("--memory-format", default="auto", choices=("auto", "channels_last", "contiguous"),
                   help="layout convolutional backbones train in: auto = channels_last for a backbone with two or "
                        "more Conv2d on the CPU (faster convolutions), torch's default elsewhere (CUDA included); "
                        "channels_last = on every device; contiguous = torch's default")
    p.add_argument("--val-data", default=None, help="labeled folder (one subfolder per class) for kNN accuracy")
    p.add_argument("--teacher", default=None, help="teacher backbone spec (method distillation)")
    p.add_argument("--teacher-weights", default=None, help="teacher weights file (.safetensors or .pt)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the method's default)")
    p.add_argument("--num-workers", type=_workers, default="auto", metavar="auto|N",
                   help="DataLoader worker processes per device; auto = 0 for batched views from the RAM cache, "
                        "else usable cores / devices - 1, at most 8")
    p.add_argument("--cache", default="auto", choices=("auto", "ram", "off"),
                   help="keep decoded images in RAM (decoded once): auto = when they fit --cache-budget-gb, "
                        "ram = always (error if over budget), off = stream from disk")
    p.add_argument("--cache-budget-gb", type=float, default=None, metavar="GB",
                   help="RAM the image cache may use on this machine (default: 25%% of the available RAM)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--set", dest="method_options", type=_key_value, action="append", default=[],
                   metavar="KEY=VALUE", help="method option, repeatable (e.g. --set temperature=0.1); "
                                             "see `warmstart models` for each method's options")
    p.add_argument("--logger", default="csv,tensorboard", metavar="NAMES",
                   help="loggers, comma-separated: csv, tensorboard, mlflow, wandb (csv is always on; the same files "
                        "under OUT/logs for image and text pretraining). "
                        "Offline by default: mlflow to a file store in OUT/logs/mlflow unless MLFLOW_TRACKING_URI "
                        "is set, wandb offline in OUT/logs/wandb unless WANDB_MODE=online")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_text_options(p)


def _add_text_options(p: argparse.ArgumentParser) -> None:
    # Only --method mlm / clm reads these (--data is then a .txt/.csv/.jsonl file or a folder of .txt files).
    p.add_argument("--max-length", type=int, default=128, help="mlm/clm: tokens per training block")
    p.add_argument("--mask-prob", type=float, default=0.15, help="mlm: fraction of tokens masked")
    p.add_argument("--text-column", default="text", help="mlm/clm: the text column of CSV / JSONL data")
    p.add_argument("--lora-r", type=int, default=0, help="mlm/clm: LoRA rank (0: train all weights); merged on save")


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="write pooled backbone features of an image folder (npy, csv, parquet)",
                       description="Embed every readable image in DATA; writes OUT/embeddings.npy and OUT/files.txt, "
                                   "or OUT/embeddings.csv / .parquet (a path column, then embedding_0..N-1).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="folder of images (searched recursively)")
    p.add_argument("--model", default=None, help="backbone spec (default: read from the weights' backbone.json)")
    p.add_argument("--weights", default=None, help="exported weights: backbone.safetensors / .pt or its folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--image-size", type=int, default=64, help="images are resized + center-cropped to this size")
    p.add_argument("--channels", type=int, default=None, metavar="N",
                   help="input channels for non-RGB images (default: the export's backbone.json, else RGB)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--format", default="npy", choices=("npy", "csv", "parquet"),
                   help="npy: embeddings.npy + files.txt; csv / parquet: one table with a path column and one "
                        "column per feature (parquet needs pyarrow)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end pretrain-then-finetune demo",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    try:
        from .demo import cli as demo_cli
    except ImportError as err:  # the demo package is optional (and may not be installed in slim builds)
        p.set_defaults(demo_error=f"the demo is not available in this installation ({err})")
        return
    demo_cli.add_arguments(p)
    p.set_defaults(demo_run=demo_cli.run)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``warmstart`` command.

    Example:
        >>> build_parser().parse_args(["pretrain", "--data", "d", "--model", "m", "--out", "o"]).epochs
        10
    """
    parser = argparse.ArgumentParser(prog="warmstart", description="Pretrain-then-finetune for Lightning, "
                                     "Hugging Face transformers and Ultralytics YOLO.")
    sub = parser.add_subparsers(dest="command", metavar="{pretrain,embed,models,demo}")
    _add_pretrain(sub)
    _add_embed(sub)
    sub.add_parser("models", help="list example backbone specs and the SSL methods with their options")
    _add_demo(sub)
    return parser


def _run_text_pretrain(args: argparse.Namespace) -> int:
    # mlm / clm train a transformers text model with transformers.Trainer, not the Lightning image engine.
    if not args.model.startswith("hf/"):
        raise ValueError(f"--method {args.method} continues pretraining a Hugging Face text model: use "
                         f"--model hf/<model folder>, got {args.model!r}")
    if args.epochs == "auto":
        raise ValueError(f"--epochs auto is for image pretraining; give --method {args.method} a number of epochs")
    from .hf_integration.text_pretraining import continue_pretraining, read_summary

    training_args: dict[str, Any] = {"per_device_train_batch_size": args.batch_size, "seed": args.seed,
                                     "disable_tqdm": args.no_progress, "use_cpu": args.accelerator == "cpu"}
    if args.lr is not None:
        training_args["learning_rate"] = args.lr
    if str(args.checkpoint_every).isdigit() and int(args.checkpoint_every) > 0:  # durations: the Trainer counts steps
        training_args["save_steps"] = int(args.checkpoint_every)
    out = continue_pretraining(
        args.model[len("hf/"):], args.data, args.out, objective=args.method, epochs=args.epochs,
        max_length=args.max_length, mask_prob=args.mask_prob, text_column=args.text_column,
        lora={"r": args.lora_r, "alpha": 2 * args.lora_r} if args.lora_r else None, training_args=training_args,
        resume_from_checkpoint=True if args.resume else None, logger=args.logger)
    print(json.dumps(read_summary(out), indent=2))
    return 0


def _run_pretrain(args: argparse.Namespace) -> int:
    if args.method in TEXT_METHODS:
        return _run_text_pretrain(args)
    from .pretraining import pretrain

    summary = pretrain(
        out=args.out, data=args.data, model=args.model, method=args.method, epochs=args.epochs,
        batch_size=args.batch_size, image_size=args.image_size, devices=args.devices, strategy=args.strategy,
        precision=args.precision, num_nodes=args.num_nodes, accelerator=args.accelerator, resume=args.resume,
        overwrite=args.overwrite, val_data=args.val_data, teacher=args.teacher,
        teacher_weights=args.teacher_weights, lr=args.lr, num_workers=args.num_workers, seed=args.seed,
        cache=args.cache, cache_budget_gb=args.cache_budget_gb, progress=not args.no_progress,
        checkpoint_every=args.checkpoint_every, views=args.views, global_batch_size=args.global_batch_size,
        accumulate_grad_batches=args.accumulate_grad_batches, lr_scaling=args.lr_scaling,
        warmup_epochs=args.warmup_epochs, channels=args.channels, logger=args.logger,
        memory_format=args.memory_format,
        **dict(args.method_options))
    print(json.dumps({k: v for k, v in summary.items() if k != "knn_history"}, indent=2, default=str))
    return 0


def _run_pretrain_until_stopped(args: argparse.Namespace) -> int:
    from .pretraining import TrainingInterrupted

    try:
        return _run_pretrain(args)
    except TrainingInterrupted as stop:
        # Stopped on request with a checkpoint written: say where and how to continue, exit like the signal did.
        print(f"warmstart pretrain: {stop}", file=sys.stderr)
        return stop.exit_code


def _run_embed(args: argparse.Namespace) -> int:
    from .pretraining import embed

    feats = embed(args.data, args.model, weights=args.weights, out=args.out, batch_size=args.batch_size,
                  image_size=args.image_size, num_workers=args.num_workers, progress=not args.no_progress,
                  channels=args.channels, format=args.format)
    from .pretraining.embedding_files import FILE_NAMES

    print(f"wrote {feats.shape[0]} x {feats.shape[1]} features to {args.out}/{FILE_NAMES[args.format]}")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from .core.backbones import list_backbones
    from .core.ssl import METHODS, method_options

    print("backbone specs (examples; any torchvision / timm model name works):")
    for spec in list_backbones():
        print(f"  {spec}")
    print("SSL methods (options for --set KEY=VALUE):")
    for name in sorted(METHODS):
        print(f"  {name}: {', '.join(method_options(name))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``warmstart`` command line; returns the exit code (2 for bad input, with the reason printed).

    Example:
        >>> main(["pretrain", "--data", "/nonexistent", "--model", "torchvision/resnet18", "--out", "/tmp/x"])
        ... # doctest: +SKIP
        2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "pretrain":
            return _run_pretrain_until_stopped(args)
        if args.command == "embed":
            return _run_embed(args)
        if args.command == "models":
            return _run_models(args)
        if getattr(args, "demo_error", None):
            print(f"warmstart demo: {args.demo_error}", file=sys.stderr)
            return 1
        return int(args.demo_run(args) or 0)
    except (ValueError, FileNotFoundError, ImportError) as err:
        # Bad input gets its one-line reason, not a stack trace (ARCHITECTURE.md rule 8).
        print(f"warmstart {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
