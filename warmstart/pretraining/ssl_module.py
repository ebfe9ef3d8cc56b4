"""``SSLModule``: the LightningModule that trains any ``warmstart.core.ssl`` Method with any Trainer."""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._optional import require
from ..core.backbones import input_dtype
from ..core.param_groups import is_no_decay
from ..core.ssl import Method, get_method
from .memory_format import apply_memory_format, check_memory_format, match_state_layout, resolve_memory_format

L = require("lightning", "lightning")

# Checkpoint entry: fingerprints of the method's external modules (the frozen distillation teacher), which the
# checkpoint leaves out.
EXTERNAL_KEY = "warmstart_external_modules"

OPTIMIZERS = ("adamw", "sgd")


class SSLModule(L.LightningModule):
    """Self-supervised pretraining of a backbone as a LightningModule.

    Pass a built ``Method`` or a method name plus a backbone (spec string or nn.Module). The optimizer is AdamW
    (or SGD) over the method's trainable parameters, no weight decay on biases and norms, and a per-step
    schedule: linear warmup over ``warmup_fraction`` of the run, then cosine decay to 0. Momentum teachers are
    updated after every optimizer step. Each epoch reseeds the augmentation RNG from ``(seed, epoch, rank)`` so a
    resumed run draws the same augmentations as an uninterrupted one. ``views="batched"`` makes the views of
    ``[images, indices]`` batches on the device; for a backbone built with ``channels=N`` (or with ``channels=N``
    given here) the images are float32 N-band tensors and the views intensity-only. ``memory_format="auto"``
    trains convolutional backbones channels_last on the CPU (faster convolutions, ``memory_format.py``) and puts
    them back in torch's default layout when the Trainer call ends normally (after an exception: call
    ``restore_layout()``); ``"channels_last"`` on any device, ``"contiguous"`` keeps the default.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> module = SSLModule("simclr", backbone=net, image_size=32)
        >>> module.method.name, module.lr
        ('simclr', 0.001)
    """

    def __init__(self, method: Method | str = "simclr", backbone: str | nn.Module | None = None,
                 image_size: int = 64, *, lr: float | None = None, weight_decay: float | None = None,
                 warmup_fraction: float = 0.1, optimizer: str = "adamw", seed: int | None = 0,
                 method_kwargs: dict[str, Any] | None = None, views: str = "pil",
                 channels: int | None = None, memory_format: str = "auto") -> None:
        super().__init__()
        if views not in ("pil", "batched"):
            raise ValueError(f"views must be 'pil' or 'batched', got {views!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if isinstance(method, Method):
            if backbone is not None:
                raise ValueError("pass either a built Method or a method name + backbone, not both")
            self.method = method
        else:
            if backbone is None:
                raise ValueError("SSLModule(method_name, backbone=...) needs a backbone spec or nn.Module")
            from ..core.backbones import build_backbone

            model = backbone if hasattr(backbone, "native_state_dict") else build_backbone(backbone,
                                                                                         image_size=image_size)
            self.method = get_method(method, model, image_size, **(method_kwargs or {}))
        # Record what can be recorded as hyperparameters (objects like modules cannot).
        plain = {"method": method if isinstance(method, str) else self.method.name,
                 "backbone": backbone if isinstance(backbone, str) else getattr(self.backbone, "spec", None),
                 "image_size": self.method.image_size}
        self.save_hyperparameters(plain)
        self.lr = float(lr if lr is not None else self.method.default_lr)
        self.weight_decay = float(weight_decay if weight_decay is not None else self.method.default_weight_decay)
        self.warmup_fraction, self.optimizer_name, self.seed = warmup_fraction, optimizer, seed
        self.views = views
        self.memory_format = check_memory_format(memory_format)
        self.resolved_memory_format: str | None = None  # set at setup, once the device is known
        self._external_fingerprints: dict[str, str] = {}
        self.channels = _channels_of(self.method.backbone, channels)
        self.batched_views = None
        if views == "batched":
            if not self.method.view_specs:
                raise ValueError(f"method {self.method.name!r} has no view_specs, so its views cannot be made in "
                                 "batches on the device; use views='pil'")
            from .batched_views import BatchedViews

            self.batched_views = BatchedViews(self.method.view_specs, self.method.normalize, seed or 0,
                                              channels=self.channels)

    @property
    def backbone(self) -> nn.Module:
        """The backbone being trained (what ``pretrain`` exports)."""
        return self.method.backbone

    def forward(self, x: Tensor) -> Tensor:
        """Pooled backbone features of an image batch."""
        return self.method.backbone(x)

    def batched_views_of(self, batch: Any) -> Any:
        """Batched mode: turn ``[images, indices]`` or ``[images, indices, shapes]`` (already on the device; uint8
        RGB, float32 with ``channels``; ``shapes``: each image's crop frame, ``Resized.shape``) into the method's
        views."""
        if self.batched_views is None or not _is_image_batch(batch, self.batched_views.channels is not None):
            return batch
        images, indices, *shapes = batch
        # The epoch of the batch is the trainer's (the sampler's epoch), restored on resume with the loop state.
        # "-true" precisions make half precision torch's default dtype during the step: the random parameters and
        # the views are still drawn in float32 (same views as every other precision), then cast to the backbone's
        # dtype, since Lightning casts the module but not a uint8 batch.
        with torch.no_grad(), default_dtype(torch.float32):
            views = self.batched_views(images, indices, epoch=self.current_epoch,
                                       shapes=shapes[0] if shapes else None)
        dtype = input_dtype(self.method.backbone, views[0].dtype)
        if dtype != views[0].dtype:
            views = [v.to(dtype) for v in views]
        return views

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        # Views are made here rather than in on_after_batch_transfer: that hook is the data module's when one is
        # passed (Lightning warns), and here the batch is on the device all the same.
        views = _views(self.batched_views_of(batch))
        loss = self.method.training_loss(views)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=views[0].shape[0])
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Momentum teachers move right after the step, not in on_train_batch_end: callbacks' on_train_batch_end
        # runs before the module's, so a checkpoint written there (RunCheckpoint) would miss this update.
        # Lightning counts the step only after this hook returns, hence + 1.
        self.method.on_step_end(self.trainer.global_step + 1, self.total_steps())

    def on_train_epoch_start(self) -> None:
        if self.seed is None:
            return
        # Seeds the (main-process) augmentation RNGs; different per rank so DDP ranks see different views.
        seed = (int(self.seed) * 1_000_003 + self.current_epoch * 1009 + self.global_rank) % (2**31 - 1)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def total_steps(self) -> int:
        """Optimizer steps of the whole run (from the attached Trainer)."""
        steps = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        return int(steps) if math.isfinite(steps) else 1_000_000

    def configure_optimizers(self) -> dict:
        decay, no_decay = [], []
        for name, param in self.method.named_trainable_parameters():
            (no_decay if is_no_decay(name, param) else decay).append(param)
        groups = [{"params": decay, "weight_decay": self.weight_decay, "name": "decay"},
                  {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
        # On the CPU torch defaults to its per-tensor Python loop; its fused CPU kernel updates each tensor in one
        # pass: resnet18's AdamW step ran ~3x faster, and the step was ~19% of a 32 px SimCLR step under cProfile
        # (benchmarks/ssl_vs_lightly_train.py measures the whole run). Other devices keep torch's own default.
        fused = {"fused": True} if fused_kernels_fit([p for g in groups for p in g["params"]]) else {}
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=self.lr, momentum=0.9, **fused)
        else:
            optimizer = torch.optim.AdamW(groups, lr=self.lr, **fused)
        # A resumed state keeps the layout it was saved in; the fused kernels need the parameters' (memory_format.py).
        optimizer.register_load_state_dict_post_hook(match_state_layout)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(self.total_steps(), self.warmup_fraction))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str) -> None:
        # Fingerprint the external modules here, before the strategy wraps or casts the module ("bf16-true"
        # converts the teacher too): a fingerprint of the cast copy would never match the fp32 teacher a resume
        # rebuilds. Any stage: the first Trainer call on this module is the one that sees it uncast.
        self._fingerprint_external_modules()
        device = self._trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        # decided by the student backbone: a ViT's momentum copy (DINO, BYOL) must not make two patch convolutions
        self.resolved_memory_format = resolve_memory_format(self.memory_format, self.method.backbone, device)
        if self.resolved_memory_format == "channels_last":
            apply_memory_format(self.method, "channels_last")

    def teardown(self, stage: str) -> None:
        self.restore_layout()

    def restore_layout(self) -> None:
        """Put the method's modules in torch's default layout if ``setup`` made them channels_last, so a module the
        caller passed in leaves training in the default layout (exports are written contiguous either way).
        Lightning calls ``teardown`` only when a Trainer call ends normally: after an exception, call this yourself
        (``pretrain`` does)."""
        if self.resolved_memory_format == "channels_last":
            apply_memory_format(self.method, "contiguous")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A frozen teacher is rebuilt from its spec and weights on resume: saving it put a second model in every
        # checkpoint (EfficientNet-Lite0: +14 MB per save; a ViT-B teacher: about +340 MB). Its fingerprint stays, so
        # a resume with other teacher weights fails instead of training half a run against each.
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict):
            return
        fingerprints = self._fingerprint_external_modules()
        drop = self._drops_external_modules()
        for name in self.method.external_modules:
            prefix = f"method.{name}."
            keys = [k for k in state if k.startswith(prefix)]
            if keys and name in fingerprints:  # kept or not, the fingerprint is checked on resume
                checkpoint.setdefault(EXTERNAL_KEY, {})[name] = fingerprints[name]
            for key in keys if drop else ():
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Put the rebuilt external modules back into the state to restore (strict loading stays on), after
        # checking they are the ones the run was started with. Runs before the strategy casts the module.
        saved = checkpoint.get(EXTERNAL_KEY) or {}
        state = checkpoint.get("state_dict")
        if not saved:
            return
        for name in saved:
            if not isinstance(getattr(self.method, name, None), nn.Module):
                raise ValueError(f"the checkpoint was written by a run with a {name} (method "
                                 f"{checkpoint.get('hyper_parameters', {}).get('method')!r}); this module's "
                                 f"{self.method.name!r} method has none: resume with the same method")
        fingerprints = self._fingerprint_external_modules()
        for name, fingerprint in saved.items():
            if fingerprints.get(name) != fingerprint:
                raise ValueError(
                    f"the checkpoint was written with another {name}: its weights differ from the {name} this run "
                    f"was given. Resume with the same {name} (spec and weights) the run started with, or start "
                    "over (--overwrite)")
            prefix = f"method.{name}."
            if isinstance(state, dict) and not any(k.startswith(prefix) for k in state):  # left out at save
                state.update({prefix + k: v for k, v in getattr(self.method, name).state_dict().items()})

    def _drops_external_modules(self) -> bool:
        """Whether checkpoints leave the external modules out: not where Lightning restores after the strategy's
        setup (FSDP, DeepSpeed load the state before ``on_load_checkpoint`` could put the modules back)."""
        strategy = getattr(self._trainer, "strategy", None)
        return bool(self.method.external_modules) and not getattr(strategy, "restore_checkpoint_after_setup", False)

    def _fingerprint_external_modules(self) -> dict[str, str]:
        """Fingerprints of the method's external modules, each hashed once (they are frozen)."""
        for name in self.method.external_modules:
            module = getattr(self.method, name, None)
            if isinstance(module, nn.Module) and name not in self._external_fingerprints:
                self._external_fingerprints[name] = module_fingerprint(module)
        return self._external_fingerprints

    def export(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the backbone in its native key layout (``export_backbone``) to ``out_dir``."""
        from ..core.checkpoints import export_backbone

        return export_backbone(self.backbone, out_dir)


class warmup_cosine:  # noqa: N801 - used like a function; a class so LambdaLR state stays picklable
    """LR multiplier: linear warmup over ``warmup_fraction`` of ``total_steps``, then cosine to 0.

    Example:
        >>> f = warmup_cosine(100, 0.1)
        >>> round(f(0), 2), round(f(10), 2), round(f(55), 2), round(f(100), 2)
        (0.09, 1.0, 0.5, 0.0)
    """

    def __init__(self, total_steps: int, warmup_fraction: float = 0.1) -> None:
        self.total = max(int(total_steps), 1)
        self.warmup = int(self.total * warmup_fraction)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Make ``dtype`` torch's default floating dtype inside the block (the previous one is restored after).

    Example:
        >>> with default_dtype(torch.float64):
        ...     torch.zeros(1).dtype
        torch.float64
        >>> torch.zeros(1).dtype
        torch.float32
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state: every tensor's name, dtype, shape and bytes, in state-dict order.

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> _ = b.load_state_dict(a.state_dict())
        >>> module_fingerprint(a) == module_fingerprint(b), module_fingerprint(a) == module_fingerprint(nn.Linear(2, 2))
        (True, False)
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        if not isinstance(tensor, Tensor):  # a module's non-tensor ``_extra_state``
            # its repr without the memory address a default repr holds: that differs between processes, and a
            # resume compares fingerprints across them (every other repr, and so older fingerprints, unchanged)
            digest.update(f"{name}={_MEMORY_ADDRESS.sub('', repr(tensor))};".encode())
            continue
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fused_kernels_fit(params: Sequence[Tensor]) -> bool:
    """True when every parameter is a floating-point CPU tensor and this torch has fused CPU optimizer kernels.

    Example:
        >>> fused_kernels_fit([nn.Parameter(torch.zeros(2))]), fused_kernels_fit([])
        (True, False)
    """
    from torch.optim import optimizer as torch_optimizer

    supported = getattr(torch_optimizer, "_get_fused_kernels_supported_devices", lambda: [])()
    return bool(params) and "cpu" in supported and all(
        p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
        for p in params)


def _channels_of(backbone: nn.Module, channels: int | None) -> int | None:
    """The non-RGB channel count of the batched views (None: RGB): ``channels``, else what the backbone declares."""
    from ..core.backbones import declared_channels

    declared = declared_channels(backbone)
    if channels in (None, 3):
        return None if declared == 3 else declared
    if declared != 3 and declared != int(channels):
        raise ValueError(f"channels={channels}, but the backbone was built for {declared} input channel(s)")
    return int(channels)


def _is_image_batch(batch: Any, float_images: bool = False) -> bool:
    # SSLDataModule(views="batched") batches: [uint8 (B, 3, S, S), indices (B,), shapes (B, 2)] (a user's own
    # loader may leave the shapes out); with channels=N the images are float32 (B, N, S, S). A list of float view
    # batches is 4-D in every place, never a 1-D index tensor.
    if not (isinstance(batch, (list, tuple)) and len(batch) in (2, 3)
            and all(isinstance(part, Tensor) for part in batch) and batch[0].ndim == 4 and batch[1].ndim == 1):
        return False
    if len(batch) == 3 and tuple(batch[2].shape) != (batch[0].shape[0], 2):
        return False
    return batch[0].dtype == torch.uint8 or (float_images and batch[0].is_floating_point())


def _views(batch: Any) -> list[Tensor]:
    # A batch from SSLDataModule is already a list of view tensors; a (views, extra) batch from a user's own
    # DataLoader with default collate is tolerated too.
    if isinstance(batch, Tensor):
        return [batch]
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], (list, tuple)):
        return list(batch[0])
    return [v for v in batch if isinstance(v, Tensor) and v.ndim == 4]
