"""``pretrain()``: self-supervised pretraining / distillation of a backbone with a real Lightning Trainer.

Everything that can be wrong with the input (paths, method, model spec, teacher, batch size vs data) is checked
before the Trainer starts. Distributed strategies are Lightning's (``strategy="ddp"``, ``"fsdp"``, ...): this file
has no distributed code of its own; only rank 0 writes the exported weights, ``metrics.csv`` and ``summary.json``.

Output layout (``out/``)::

    checkpoints/last.ckpt      Lightning checkpoint (resume with resume=True)
    exported/backbone.safetensors, backbone.pt, backbone.json   native-layout backbone weights
    exported/yolo.pt           (ultralytics/<yaml> models) the whole YOLO model, pretrained backbone in place:
                               ``YOLO("exported/yolo.pt")`` / ``yolo train model=exported/yolo.pt``
    logs/csv/version_N/, logs/tensorboard/version_N/            Lightning loggers (``logger=``: + mlflow/, wandb/)
    metrics.csv                all CSV log versions flattened into one file
    summary.json               images seen, files skipped, final loss, wall time, images/s, ...
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .._optional import require
from ..core.processes import is_launched_child
from ..core.run_manifest import MANIFEST_NAME, RunManifest, remove_previous_run
from ..core.ssl import METHODS, get_method
from .checkpoint_io import LocalCheckpointIO
from .knn import KNNMonitor
from .loggers import PROCESS_WIDE, build_loggers, logger_environment, logger_paths, resolve_loggers, run_environment
from .memory_format import check_memory_format, resolve_memory_format
from .run_checkpoint import RunCheckpoint, TrainingInterrupted, parse_every
from .ssl_data import SSLDataModule, resolve_num_workers
from .ssl_module import SSLModule
from .throughput import ThroughputMonitor
from .yolo_export import export_yolo

L = require("lightning", "lightning")

# What pretrain writes into `out`, recorded file by file in the run's manifest; overwrite=True removes only files
# that manifest lists, never other files the user keeps there (ARCHITECTURE.md rule 11).
OUTPUTS = ("checkpoints", "exported", "logs", "metrics.csv", "summary.json", MANIFEST_NAME)


def pretrain(out: str | Path, data: str | Path | Sequence | Dataset, model: str | nn.Module,
             method: str = "simclr", epochs: int | str = 10, batch_size: int = 64, image_size: int = 64,
             devices: int | str | list = "auto", strategy: Any = "auto", precision: str | int = "32-true",
             num_nodes: int = 1, accelerator: str = "auto", resume: bool = False, overwrite: bool = False,
             val_data: str | Path | None = None, teacher: str | nn.Module | None = None,
             teacher_weights: str | Path | None = None, lr: float | None = None,
             num_workers: int | str = "auto", cache: str = "auto", cache_budget_gb: float | None = None,
             seed: int = 0, progress: bool = True, callbacks: Sequence[L.Callback] = (),
             transform: Callable | None = None, checkpoint_every: int | str | None = "5min",
             views: str = "auto", global_batch_size: int | None = None,
             accumulate_grad_batches: int | None = None, lr_scaling: str = "none",
             warmup_epochs: float | None = None, logger: str | Sequence[Any] | None = None,
             channels: int | None = None, memory_format: str = "auto", **method_kwargs: Any) -> dict:
    """Pretrain ``model`` on the unlabeled images in ``data`` with ``method``; export its weights to ``out``.

    Args:
        out: output folder (refused if non-empty unless ``overwrite`` or ``resume``).
        data: folder of images (recursive), list of image paths, or a torch Dataset of images.
        model: backbone spec ("torchvision/resnet18", "timm/<name>", "hf/<type or folder>",
            "ultralytics/yolov8n.yaml") or an nn.Module (wrapped by ``build_backbone``).
        method: "simclr", "byol", "dino" or "distillation" (needs ``teacher``: a pretrained teacher name such as
            ``"efficientnet_lite0"``, or a spec/module with ``teacher_weights``).
        devices, strategy, precision, num_nodes, accelerator: passed to ``lightning.Trainer`` unchanged.
        resume: continue from ``out/checkpoints/last.ckpt`` (same arguments as the interrupted run): mid-epoch
            where the checkpoint was written mid-epoch (single process), else from the last epoch end.
        overwrite: start over in a used ``out``: removes only the files the previous run's manifest lists.
        checkpoint_every: besides every epoch end, also write ``last.ckpt`` every N steps (int) or every
            duration (``"5min"``, ``"90s"``); None or 0: epoch ends only. SIGINT/SIGTERM always write one and
            raise :class:`TrainingInterrupted` after a partial ``summary.json``.
        val_data: optional labeled folder (class per subfolder): logs ``knn_acc`` every epoch.
        epochs: training epochs, or ``"auto"``: a step budget of ``AUTO_TARGET_STEPS`` optimizer steps,
            ``clamp(ceil(AUTO_TARGET_STEPS * global_batch / n_images), 10, 500)`` epochs (see ``auto_epochs``);
            ``summary["epochs"]`` records the resolved number.
        global_batch_size: images per optimizer step over all devices and nodes. Default: ``batch_size`` x
            devices x nodes. When given, ``batch_size`` stays the per-device batch and gradients are accumulated
            over ``global_batch_size / (batch_size * world_size)`` batches (must be a whole number).
        accumulate_grad_batches: accumulate gradients over this many batches (passed to the Lightning Trainer);
            an alternative to ``global_batch_size``, not both.
        lr: peak learning rate, used as given. Default: ``lr_scaling`` of the method's ``default_lr``.
        lr_scaling: how the default peak lr follows the global batch. ``"none"`` (default): ``default_lr``
            whatever the batch; ``"linear"`` (opt-in): the linear scaling rule ``default_lr * global_batch / 256``
            (Goyal et al. 2017; what the SimCLR paper and LightlyTrain use). Not the default yet: at small batches
            it lowers the lr (batch 64: x0.25) and existing short runs stopped learning (the batched-views
            test's loss no longer fell). Ignored when ``lr`` is given.
        warmup_epochs: linear lr warmup length in epochs (may be fractional), converted to a fraction of the
            run's optimizer steps; must be < epochs. Default: 10% of the steps (``SSLModule.warmup_fraction``).
        num_workers: DataLoader workers per device. ``"auto"`` (default): 0 when batched views read the RAM
            cache (the loader only gathers ready tensors); else the cores this process may use
            (``os.sched_getaffinity``) divided by the devices on this node, minus one for the training process,
            capped at 8; so 0 on a single core. An int is used as given.
        cache: keep the decoded images in RAM as uint8 (float32 with ``channels``), decoded once before the first
            epoch (the PIL path keeps the decoded image, ``views="batched"`` the resized one). ``"auto"``
            (default): when the estimate fits ``cache_budget_gb``, else stream from disk with one warning;
            ``"ram"``: always, an estimate over the budget is an error; ``"off"``: stream.
        cache_budget_gb: RAM the cache may use on this machine (split between its local processes); default 25%
            of the RAM available at start. Less than one batch of decoded images is an error.
        callbacks: extra Lightning callbacks.
        logger: Lightning loggers by name, comma-separated or a list: ``"csv"``, ``"tensorboard"``, ``"mlflow"``,
            ``"wandb"``, and/or Lightning ``Logger`` objects. Default: csv + tensorboard. CSV is always on
            (``metrics.csv`` comes from it). Offline by default: MLflow to a file store in ``out/logs/mlflow``
            (unless ``MLFLOW_TRACKING_URI`` is set), W&B in offline mode in ``out/logs/wandb`` (unless
            ``WANDB_MODE=online``). A missing package is an ImportError with the pip line before anything runs.
        transform: your own views for your domain (PIL image -> list of view tensors, as many as the method
            expects: 2 for simclr/byol/distillation, e.g. ``lightly.transforms.SimCLRTransform(hf_prob=0, ...)``
            for images where flips change the meaning). Default: the method's own lightly transform.
        views: where the augmented views are made. ``"batched"``: the loader only decodes and resizes, the views
            are made on the training device a batch at a time with per-image random parameters (kornia, the
            method's ``view_specs``); ``"pil"``: per image in the DataLoader with the PIL transform; ``"auto"``
            (default): batched, on the CPU too (``benchmarks/views_throughput.py``), ``channels`` images included;
            PIL whenever ``transform`` is given, or kornia is not installed.
        channels: input channels for non-RGB images (1: X-ray/depth, 4+: multi-band). Files are read at full
            precision (16-bit kept, ``.npy`` accepted), the backbone's first conv takes ``channels`` inputs, views are
            geometric + intensity only (batched on the device by default, float32 in the RAM cache), and
            per-channel mean/std computed from the data replace the family's RGB statistics (recorded in
            ``summary.json`` and ``exported/backbone.json``). Any image with another channel count is an error
            before training. None (default) or 3: the RGB path. See docs/ssl.md.
        memory_format: the layout convolutional backbones train in. ``"auto"`` (default): channels_last for a
            backbone with two or more 2-D convolutions on the CPU, where convolutions run faster in it (see
            ``warmstart/pretraining/memory_format.py`` and ``benchmarks/memory_layout.py``), torch's default
            elsewhere; ``"channels_last"``: on every device (CUDA with mixed precision, say); ``"contiguous"``:
            torch's default everywhere. Exports are the same either way; ``summary["memory_format"]`` records it.
        method_kwargs: method options, e.g. ``temperature=0.1`` (see ``warmstart.core.ssl.method_options``).

    Returns:
        The summary dict (also written to ``out/summary.json`` by rank 0).

    Example:
        >>> import numpy as np, tempfile
        >>> from warmstart.testing import write_image_folder
        >>> data = write_image_folder(np.random.randint(0, 255, (8, 32, 32, 3), np.uint8), None, tempfile.mkdtemp())
        >>> summary = pretrain(tempfile.mkdtemp(), data, "torchvision/resnet18", epochs=1, batch_size=4,
        ...                    image_size=32, progress=False)  # doctest: +SKIP
        >>> summary["images_seen"]  # doctest: +SKIP
        8
    """
    wall_start = time.perf_counter()
    out = Path(out)
    # Lightning's DDP launcher re-runs the user's script in child processes (LOCAL_RANK/NODE_RANK set; torchrun sets
    # RANK too): only the first process may check or clean the output folder.
    launched_child = is_launched_child()
    # ---- validate everything before any training starts -------------------------------------------------------
    if str(method).lower() not in METHODS:
        raise ValueError(f"unknown SSL method {method!r}; valid methods: {', '.join(sorted(METHODS))}")
    method = str(method).lower()
    if epochs != "auto":
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or int(epochs) != epochs:
            raise ValueError(f"epochs must be a whole number >= 1 or 'auto', got {epochs!r}")
        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
    if global_batch_size is not None and accumulate_grad_batches is not None:
        raise ValueError("pass either global_batch_size (accumulation is derived from it) or "
                         "accumulate_grad_batches, not both")
    if global_batch_size is not None and int(global_batch_size) < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if accumulate_grad_batches is not None and int(accumulate_grad_batches) < 1:
        raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
    if lr_scaling not in ("linear", "none"):
        raise ValueError(f"lr_scaling must be 'linear' or 'none', got {lr_scaling!r}")
    if warmup_epochs is not None:
        if float(warmup_epochs) < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if epochs != "auto" and float(warmup_epochs) >= int(epochs):
            raise ValueError(f"warmup_epochs={warmup_epochs} must be less than epochs={epochs}")
    if int(batch_size) < 2:
        raise ValueError(f"batch_size must be >= 2 for self-supervised losses, got {batch_size}")
    if (teacher is not None or teacher_weights is not None) and method != "distillation":
        raise ValueError(f"teacher/teacher_weights are only used by method='distillation', not {method!r}")
    parse_every(checkpoint_every)  # a bad cadence fails now, not after the first epoch
    logger_choice = resolve_loggers(logger)  # unknown name / missing package: fails now, with the pip line
    if views not in ("auto", "batched", "pil"):
        raise ValueError(f"views must be 'auto', 'batched' or 'pil', got {views!r}")
    if views == "batched" and transform is not None:
        raise ValueError("views='batched' makes the method's own views on the device; a custom transform= is a "
                         "per-image PIL transform: pass views='pil' (or 'auto') with it")
    asked_views = views
    views = _resolve_views(views, transform)
    channels = _check_channel_options(channels, views, cache, precision, why_pil=_why_pil(asked_views, transform))
    check_memory_format(memory_format)
    resolve_num_workers(num_workers)  # a bad value fails now ("auto" is resolved per device by the data module)
    checkpoint = out / "checkpoints" / "last.ckpt"
    if not launched_child:
        _check_out(out, checkpoint, resume=resume, overwrite=overwrite)
    from ..core.data import UnlabeledImages

    # Raises a clear error for a missing folder / no images (and, with channels, for a wrong channel count).
    dataset = UnlabeledImages(data, progress=progress, channels=channels)
    knn = KNNMonitor(val_data, image_size=image_size, channels=channels) if val_data is not None else None
    if knn is not None:
        knn.dataset(image_size)  # fail now, not after the first epoch, if the folder has no classes

    L.seed_everything(seed, workers=True, verbose=False)  # before building models: same init for the same seed
    backbone = _build(model, image_size, "model", channels)
    if channels is not None:
        _data_normalize(backbone, dataset)
    if method == "distillation":
        method_kwargs["teacher"] = _teacher(teacher, teacher_weights, image_size)
    ssl_method = get_method(method, backbone, image_size, **method_kwargs)
    if channels is not None:
        from ..core.ssl.views import channel_views

        ssl_method.transform = channel_views(ssl_method.view_specs, ssl_method.normalize)
    if transform is not None:
        ssl_method.transform = _check_transform(transform, ssl_method.transform, dataset)
    if views == "batched":
        from .batched_views import LoadResized, LoadResizedChannels

        require("kornia", "ssl")  # a missing extra fails here, before the Trainer starts
        size = max(spec.size for spec in ssl_method.view_specs)
        loader_transform: Callable = LoadResized(size) if channels is None else LoadResizedChannels(size, channels)
    else:
        loader_transform = ssl_method.transform
    dataset.transform = loader_transform
    module = SSLModule(ssl_method, lr=lr, seed=seed, views=views, channels=channels, memory_format=memory_format)
    datamodule = SSLDataModule(dataset, loader_transform, batch_size=batch_size, num_workers=num_workers,
                               seed=seed, views=views, pin_memory="auto", cache=cache,
                               cache_budget_gb=cache_budget_gb, progress=progress)

    if overwrite and not launched_child and not resume:
        _remove_outputs(out)
    manifest = RunManifest.load(out) if resume else RunManifest(out)
    # MLflow's local file store opens only with MLFLOW_ALLOW_FILE_STORE: set for this run, as the text engine does;
    # what MLflow exports during the run (its tracking URI) is put back after it
    with run_environment(logger_environment(logger_choice), restore=PROCESS_WIDE):
        loggers = build_loggers(logger_choice, out)

        def record_outputs() -> None:  # rank 0, after every checkpoint and at the end: what overwrite may remove
            manifest.add(p for p in [checkpoint, *logger_paths(loggers, out), out / "exported", out / "metrics.csv",
                                     out / "summary.json"] if p.exists())
            manifest.save()

        throughput = ThroughputMonitor(batch_size=int(batch_size))
        all_callbacks: list[L.Callback] = [throughput, *callbacks]
        if knn is not None:
            all_callbacks.append(knn)
        all_callbacks.append(L.pytorch.callbacks.LearningRateMonitor(logging_interval="step"))
        # Last, so an epoch-end checkpoint holds the kNN result and every other callback's state of that epoch.
        run_checkpoint = RunCheckpoint(out / "checkpoints", every=checkpoint_every, on_save=record_outputs)
        all_callbacks.append(run_checkpoint)
        if not progress:
            logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        trainer = L.Trainer(
            # epochs="auto" and a global batch need the world size, known once the Trainer exists: set below.
            max_epochs=1 if epochs == "auto" else int(epochs),
            accumulate_grad_batches=int(accumulate_grad_batches or 1),
            devices=devices, strategy=strategy, precision=precision, num_nodes=num_nodes,
            accelerator=accelerator, logger=loggers, callbacks=all_callbacks, default_root_dir=out,
            # RunCheckpoint writes last.ckpt; Lightning's default ModelCheckpoint would add a second, unlisted copy.
            enable_checkpointing=any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks),
            enable_progress_bar=progress, enable_model_summary=progress,
            log_every_n_steps=max(1, min(10, len(dataset) // int(batch_size))),
            # A strategy object may carry its own checkpoint IO, and DeepSpeed writes its own files.
            plugins=[LocalCheckpointIO()] if isinstance(strategy, str) and "deepspeed" not in strategy else None,
        )
        per_rank = len(dataset) // max(trainer.world_size, 1)
        if per_rank < int(batch_size):
            raise ValueError(
                f"{len(dataset)} images over {trainer.world_size} process(es) is {per_rank} per process, fewer than "
                f"batch_size={batch_size} (incomplete batches are dropped). Lower --batch-size or add images."
            )
        world = max(trainer.world_size, 1)
        if global_batch_size is not None:
            trainer.accumulate_grad_batches = derive_accumulation(int(global_batch_size), int(batch_size), world)
        accumulate = int(trainer.accumulate_grad_batches)
        global_batch = int(batch_size) * world * accumulate
        if epochs == "auto":
            epochs = auto_epochs(len(dataset), global_batch)
            trainer.fit_loop.max_epochs = epochs
            if warmup_epochs is not None and float(warmup_epochs) >= epochs:
                raise ValueError(f"warmup_epochs={warmup_epochs} must be less than epochs "
                                 f"('auto' resolved to {epochs})")
        if warmup_epochs is not None:
            module.warmup_fraction = float(warmup_epochs) / int(epochs)
        if lr is None and lr_scaling == "linear":
            module.lr = float(ssl_method.default_lr) * global_batch / 256
        # Mid-epoch resume needs our resumable loader, which Lightning replaces under DDP: epoch boundaries there.
        run_checkpoint.mid_epoch = trainer.world_size == 1
        # Cache decision now (budget vs estimate, budget vs one batch): its errors come before any training.
        # Per-image channel views read the full-resolution files at full precision: they stream from disk (the one place
        # this is decided; cache="ram" was refused above), plan_cache keeps this decision.
        if channels is not None and views == "pil":
            datamodule.cache_info = {"mode": "off", "reason": "channels with views='pil': images stream from disk"}
        datamodule.plan_cache(local_processes=trainer.num_devices)
        # ---- train ----------------------------------------------------------------------------------------------
        info = dict(model=model, method=method, views=views, image_size=image_size, batch_size=int(batch_size),
                    epochs=int(epochs), global_batch_size=global_batch, accumulate_grad_batches=accumulate,
                    warmup_fraction=module.warmup_fraction, lr_scaling="explicit" if lr is not None else lr_scaling,
                    resume=resume, lr=module.lr, seed=seed, precision=precision, out=out,
                    loggers=[n if isinstance(n, str) else type(n).__name__ for n in logger_choice])
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(checkpoint) if resume else None)
        except TrainingInterrupted as stop:
            throughput.stop()
            if trainer.is_global_zero:  # what was done so far, so a user sees where the run stands
                summary = _summary(trainer, module, datamodule, throughput, knn, **info)
                if channels is not None:
                    summary.update(channels=channels, normalize=backbone.normalize)
                summary.update(status="interrupted", signal=stop.signum, checkpoint=str(stop.checkpoint))
                _flatten_metrics(out / "logs" / "csv", out / "metrics.csv")
                summary["wall_time_s"] = round(time.perf_counter() - wall_start, 3)
                _write_json(out / "summary.json", summary)
                record_outputs()
            raise
        finally:
            module.restore_layout()  # Lightning skips teardown after an exception: the caller's modules come back

        summary = _summary(trainer, module, datamodule, throughput, knn, **info)
        if channels is not None:  # what fine-tuning must feed the backbone (also in exported/backbone.json)
            summary.update(channels=channels, normalize=backbone.normalize)
        if trainer.is_global_zero:
            summary["exported"] = {k: str(v) for k, v in module.export(out / "exported").items()}
            if module.backbone.family == "ultralytics" and module.backbone.info.get("yaml"):
                # The whole model too, so plain Ultralytics can `YOLO(path)` / `yolo train model=path` from it.
                summary["exported"]["yolo"] = str(export_yolo(module.backbone, out / "exported"))
            _flatten_metrics(out / "logs" / "csv", out / "metrics.csv")
            summary["wall_time_s"] = round(time.perf_counter() - wall_start, 3)
            _write_json(out / "summary.json", summary)
            record_outputs()
        return summary


# epochs="auto": a fixed budget of optimizer steps. 10k steps is our choice for the small-to-medium unlabeled sets
# warmstart targets (a 100k-image set at a global batch of 256 gets 26 epochs, a 5k-image set 500): long enough
# for the contrastive/self-distillation losses to settle, short enough to run in hours on one GPU. Not measured.
AUTO_TARGET_STEPS = 10_000
AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS = 10, 500


def auto_epochs(n_images: int, global_batch: int, target_steps: int | None = None) -> int:
    """Epochs for ``epochs="auto"``: ``clamp(ceil(target_steps * global_batch / n_images), 10, 500)``.

    Example:
        >>> auto_epochs(100_000, 256), auto_epochs(5_000, 256), auto_epochs(10_000_000, 256)
        (26, 500, 10)
    """
    if n_images < global_batch:
        raise ValueError(f"epochs='auto' needs at least one global batch of images: {n_images} image(s) < "
                         f"global batch {global_batch}. Pass an explicit epochs=, a smaller batch, or add images.")
    wanted = math.ceil((target_steps or AUTO_TARGET_STEPS) * global_batch / n_images)
    return int(min(max(wanted, AUTO_MIN_EPOCHS), AUTO_MAX_EPOCHS))


def derive_accumulation(global_batch_size: int, batch_size: int, world_size: int) -> int:
    """Gradient-accumulation steps so ``batch_size * world_size * accumulate == global_batch_size``.

    Example:
        >>> derive_accumulation(256, 32, 2)
        4
    """
    per_step = batch_size * world_size
    if global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not a multiple of batch_size={batch_size} x "
            f"{world_size} process(es) = {per_step}; pick a global batch that is (e.g. "
            f"{max(1, round(global_batch_size / per_step)) * per_step}) or change batch_size")
    return math.ceil(global_batch_size / per_step)


def _resolve_views(views: str, transform: Callable | None) -> str:
    """``views="auto"``: batched (kornia, on the training device) unless a per-image ``transform`` is given.

    On a GPU the views leave the CPU free for decoding. On the CPU they also win, for a less obvious reason: a
    DataLoader worker making PIL views competes with torch's intra-op threads for the same cores, and a parallel
    region stalls whenever one of its threads is descheduled (one busy process beside a 2-thread resnet18 step
    made it 3x slower on 2 cores). Batched views from the RAM cache need no worker at all (see
    ``SSLDataModule.resolved_num_workers``); ``benchmarks/views_throughput.py`` measures the two paths.
    """
    if views != "auto":
        return views
    if transform is not None:
        return "pil"  # user transforms are per-image PIL transforms
    try:
        require("kornia", "ssl")
    except ImportError:
        return "pil"  # the batched path needs kornia; without the extra, auto keeps working on the PIL path
    return "batched"


def _check_out(out: Path, checkpoint: Path, *, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={out} is a file; pass a folder for the run's outputs")
    if resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"resume=True but {checkpoint} does not exist; start without --resume")
        _check_checkpoint(checkpoint)
        return
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output folder {out} is not empty; pass overwrite=True (--overwrite) to replace its "
                         "results, resume=True (--resume) to continue its run, or choose another folder")


def _check_checkpoint(checkpoint: Path) -> None:
    """Refuse a damaged or foreign last.ckpt with its name and the fix, before the Trainer unpickles it."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle that needs code: all refused the same way
        raise ValueError(
            f"cannot resume: {checkpoint} is damaged or not a warmstart checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). Nothing was trained. Restore a good copy, or start over with "
            "--overwrite (removes this run's files only)."
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state or "loops" not in state:
        raise ValueError(f"cannot resume: {checkpoint} is not a Lightning checkpoint written by warmstart "
                         "pretrain (no model state or loop progress). Start over with --overwrite.")


def _remove_outputs(out: Path) -> None:
    removed, left = remove_previous_run(out)
    if left:
        names = ", ".join(str(p.relative_to(out)) for p in left[:10]) + (" ..." if len(left) > 10 else "")
        warnings.warn(f"overwrite: removed the previous run's {len(removed)} files; left {len(left)} files that "
                      f"warmstart did not write (or wrote after its last checkpoint) in {out}: {names}",
                      stacklevel=3)


def _build(spec: str | nn.Module, image_size: int, what: str, channels: int | None = None) -> nn.Module:
    from ..core.backbones import Backbone, build_backbone

    if isinstance(spec, Backbone) and channels is None:
        return spec
    if not isinstance(spec, (str, nn.Module)):
        raise ValueError(f"{what} must be a spec string like 'torchvision/resnet18' or an nn.Module, got "
                         f"{type(spec).__name__}")
    if channels is not None:  # only then: RGB builds stay exactly as they were
        return build_backbone(spec, image_size=image_size, channels=channels)
    return build_backbone(spec, image_size=image_size)


# Lightning casts floating-point batches to these dtypes before training_step, i.e. before the batched views
# standardise them: a 16-bit scan would be cut to a half float's 11 bits (RGB batches are uint8 and stay exact).
HALF_INPUT_PRECISIONS = ("16-true", "bf16-true")


def _check_channel_options(channels: Any, views: str, cache: str, precision: Any = "32-true",
                           why_pil: str = "views='pil'") -> int | None:
    """``channels`` as an int, or None for RGB (None or 3); options that cannot work with it fail here.

    Example:
        >>> _check_channel_options(3, "batched", "auto"), _check_channel_options(1, "batched", "ram")
        (None, 1)
    """
    if channels is None:
        return None
    from ..core.channels import _check_channels

    if _check_channels(channels) == 3:
        return None
    if cache == "ram" and views == "pil":
        raise ValueError(f"channels={channels} with cache='ram' needs batched views (the cache keeps their resized "
                         f"float32 images), but the views are per image here ({why_pil}: they read the full-resolution "
                         "files from disk); use batched views or cache='auto'/'off'")
    if views == "batched" and str(precision) in HALF_INPUT_PRECISIONS:
        raise ValueError(f"channels={channels} with batched views and precision={precision!r}: Lightning casts "
                         "float image batches to half precision before the views are made, which cuts 16-bit and "
                         "float images to 11 bits; use precision='16-mixed' or 'bf16-mixed' (autocast), or "
                         "views='pil' (views standardised in the loader before the cast)")
    return int(channels)


def _why_pil(asked: str, transform: Callable | None) -> str:
    """Why views resolved to per-image ones, in the words of the option that decided it."""
    if asked == "pil":
        return "views='pil'"
    return "a custom transform= makes per-image views" if transform is not None else "kornia is not installed"


def _data_normalize(backbone: nn.Module, dataset: Any) -> None:
    """Per-channel statistics from the data, unless the family's default is channel-free (Ultralytics: pixels
    / 255) or the backbone carries its own (``info["normalize"]``): ImageNet's RGB mean/std cannot apply."""
    from ..core.channels import channel_stats

    info = getattr(backbone, "info", None)
    if info is None or "normalize" in info or backbone.normalize is None:
        return
    info["normalize"] = channel_stats(dataset)


def _teacher(teacher: str | nn.Module | None, weights: str | Path | None, image_size: int) -> nn.Module:
    if teacher is None:
        raise ValueError("method='distillation' needs teacher=<spec, pretrained teacher name or nn.Module> "
                         "(--teacher) and, unless it is a pretrained teacher such as 'efficientnet_lite0', "
                         "teacher_weights=<file or export folder> (--teacher-weights) with its trained weights")
    from ..core.backbones import Backbone
    from ..core.teachers import build_teacher

    if isinstance(teacher, Backbone) and weights is None:
        return teacher
    return build_teacher(teacher, weights, image_size)  # refuses random init / mismatched weights by name


def _summary(trainer: L.Trainer, module: SSLModule, datamodule: SSLDataModule, throughput: ThroughputMonitor,
             knn: KNNMonitor | None, **info: Any) -> dict:
    world = max(trainer.world_size, 1)
    per_step = info["batch_size"] * world * trainer.accumulate_grad_batches
    session_images = (trainer.global_step - throughput.start_step) * per_step
    loss = trainer.callback_metrics.get("train_loss_epoch", trainer.callback_metrics.get("train_loss"))
    model = info.pop("model")
    summary = {
        "method": info.pop("method"),
        "model": getattr(module.backbone, "spec", None) or (model if isinstance(model, str) else
                                                            type(model).__name__),
        "feature_dim": int(module.method.feature_dim),
        **info,
        "out": str(info["out"]),
        "precision": str(info["precision"]),
        "world_size": world,
        "epochs_completed": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "images_seen": int(trainer.global_step * per_step),
        "files_total": len(datamodule.dataset),
        "files_skipped": datamodule.skipped,
        "final_loss": float(loss) if loss is not None else None,
        "train_time_s": round(throughput.seconds, 3),
        "images_per_s": round(session_images / throughput.seconds, 2) if throughput.seconds > 0 else None,
        # Share of the epochs' loop time spent waiting for the next batch: near 1 means the data side is the
        # bottleneck (more workers, the cache, views="batched"); near 0, the model is.
        "data_wait_fraction": (round(throughput.data_wait_fraction, 4)
                               if throughput.data_wait_fraction is not None else None),
        "num_workers": datamodule.resolved_num_workers(),
        "cache": dict(datamodule.cache_info or {"mode": "off"}),
        # the parent of a spawned run (ddp_spawn) never ran setup: the layout its processes resolved to
        "memory_format": module.resolved_memory_format or resolve_memory_format(
            module.memory_format, module.method.backbone, trainer.strategy.root_device),
        "checkpoint": str(Path(info["out"]) / "checkpoints" / "last.ckpt"),
        "status": "completed",
    }
    scan = getattr(datamodule.dataset, "scan", None)
    if scan is not None:  # every file under the data folder: used, skipped (why), ignored (by which rule)
        summary["data_files"] = scan.counts()
    if knn is not None and knn.history:
        summary["knn_acc"] = knn.history[-1][1]
        summary["knn_history"] = [{"epoch": e, "knn_acc": a} for e, a in knn.history]
    return summary


def _check_transform(transform: Callable, default: Callable, dataset: Any) -> Callable:
    """Fail before training if a user transform gives views the method cannot use (count or type)."""
    if not callable(transform):
        raise ValueError(f"transform must be callable (PIL image -> list of view tensors), got {type(transform)}")
    image = dataset[0]  # the dataset has no transform yet: a PIL image
    ours, theirs = default(image), transform(image)
    if not isinstance(theirs, (list, tuple)) or not all(isinstance(v, torch.Tensor) for v in theirs):
        raise ValueError("transform must return a list of view tensors (like lightly's SimCLRTransform), "
                         f"got {type(theirs).__name__}")
    if len(theirs) != len(ours):
        raise ValueError(f"transform gives {len(theirs)} views but this method uses {len(ours)} per image; "
                         "build it from the method's lightly transform (e.g. SimCLRTransform for simclr/byol)")
    return transform


def _flatten_metrics(csv_root: Path, target: Path) -> None:
    """Concatenate every CSV-logger version (a resumed run adds one) into one metrics.csv with all columns."""
    rows: list[dict] = []
    for path in sorted(csv_root.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1])):
        with path.open(newline="") as f:
            rows.extend(csv.DictReader(f))
    # LearningRateMonitor rows carry a step but no epoch; give them the epoch logged at the same step.
    epoch_at = {row.get("step"): row["epoch"] for row in rows if row.get("epoch")}
    for row in rows:
        if not row.get("epoch") and row.get("step") in epoch_at:
            row["epoch"] = epoch_at[row["step"]]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    tmp = target.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or ["epoch", "step"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, target)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
