"""``KNNMonitor``: a Lightning callback logging the backbone's kNN accuracy on a labeled folder every epoch."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from .._optional import require
from ..core.backbones import IMAGENET_NORMALIZE, input_dtype
from ..core.ssl import knn_accuracy
from .embedding import eval_transform

L = require("lightning", "lightning")


@torch.no_grad()
def embed_loader(backbone: nn.Module, loader: DataLoader, device: torch.device | str = "cpu"):
    """Features and labels of every (image, label) batch of ``loader``, backbone in eval mode.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
        >>> data = [(torch.zeros(3, 2, 2), 0), (torch.ones(3, 2, 2), 1)]
        >>> feats, labels = embed_loader(net, DataLoader(data, batch_size=2))
        >>> tuple(feats.shape), labels.tolist()
        ((2, 2), [0, 1])
    """
    was_training = backbone.training
    backbone.eval()
    dtype = input_dtype(backbone)  # a "-true" precision casts the backbone (bf16, fp64): float images follow it
    feats, labels = [], []
    try:
        for images, targets in loader:
            images = images.to(device, dtype=dtype) if images.is_floating_point() else images.to(device)
            feats.append(backbone(images).float().cpu())
            labels.append(torch.as_tensor(targets))
    finally:
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


class KNNMonitor(L.Callback):
    """Log ``knn_acc``: leave-one-out cosine kNN accuracy of the backbone's features on a labeled folder.

    ``val_data`` has one subfolder per class. Runs at the end of every ``every_n_epochs``-th training epoch (and
    once before training, kept in ``history[0]`` as the random-init baseline). The module must expose the backbone
    as ``pl_module.backbone`` (``SSLModule`` does). Images are resized to ``image_size`` (default: the method's).
    ``channels=N``: the folder holds non-RGB images (``.npy`` too), read at full precision like the training
    images and normalised with the method's per-channel statistics (``warmstart.core.channels``).

    Example:
        >>> import numpy as np, tempfile
        >>> from warmstart.testing import write_image_folder
        >>> root = write_image_folder(np.zeros((4, 8, 8, 3), np.uint8), [0, 0, 1, 1], tempfile.mkdtemp())
        >>> KNNMonitor(root, k=3).k
        3
    """

    def __init__(self, val_data: str | Path, k: int = 20, image_size: int | None = None, batch_size: int = 128,
                 every_n_epochs: int = 1, num_workers: int = 0, check_at_start: bool = True,
                 channels: int | None = None) -> None:
        super().__init__()
        root = Path(val_data)
        if not root.is_dir():
            raise FileNotFoundError(f"kNN validation folder {root} does not exist (expected one subfolder per class)")
        if k < 1 or every_n_epochs < 1:
            raise ValueError(f"k and every_n_epochs must be >= 1, got k={k}, every_n_epochs={every_n_epochs}")
        self.val_data, self.k, self.image_size = root, int(k), image_size
        self.batch_size, self.every_n_epochs, self.num_workers = batch_size, every_n_epochs, num_workers
        self.check_at_start, self.channels = check_at_start, channels
        self.history: list[tuple[int, float]] = []  # (epoch, accuracy); epoch -1 = before training
        self._loader: DataLoader | None = None

    def dataset(self, image_size: int, normalize: dict | None = IMAGENET_NORMALIZE):
        """The labeled validation set (class per subfolder) with the deterministic eval transform.

        With ``channels``, every file is checked for that channel count here (a mismatch raises, naming files).
        """
        from ..core.data import LabeledImageFolder

        if self.channels is None:
            transform = eval_transform(image_size, normalize)
        else:  # RGB defaults (ImageNet's 3 means) cannot apply: the caller passes the data's own statistics
            from ..core.channels import eval_channels_transform

            transform = eval_channels_transform(image_size, None if normalize is IMAGENET_NORMALIZE else normalize)
        dataset = LabeledImageFolder(self.val_data, transform=transform, progress=False, channels=self.channels)
        if len(getattr(dataset, "classes", [])) < 2:
            raise ValueError(f"kNN validation folder {self.val_data} needs at least 2 class subfolders")
        return dataset

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._loader is None:
            size = self.image_size or getattr(getattr(pl_module, "method", None), "image_size", None) or 64
            normalize = getattr(getattr(pl_module, "method", None), "normalize", IMAGENET_NORMALIZE)
            self._loader = DataLoader(self.dataset(size, normalize), batch_size=self.batch_size, shuffle=False,
                                      num_workers=self.num_workers)

    def accuracy(self, pl_module: L.LightningModule) -> float:
        """kNN accuracy of ``pl_module.backbone`` right now."""
        feats, labels = embed_loader(pl_module.backbone, self._loader, pl_module.device)
        return knn_accuracy(feats, labels, k=self.k)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.check_at_start and not self.history:
            self.history.append((-1, self.accuracy(pl_module)))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        acc = self.accuracy(pl_module)
        self.history.append((trainer.current_epoch, acc))
        pl_module.log("knn_acc", acc, prog_bar=True, on_step=False, on_epoch=True)

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [tuple(h) for h in state_dict.get("history", [])]
