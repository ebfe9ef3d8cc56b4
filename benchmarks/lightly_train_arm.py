"""LightlyTrain as a benchmark arm: its own venv, driven only as a subprocess.

LightlyTrain is AGPL-licensed, so it is never imported by warmstart nor by a benchmark's own process: it lives in a
separate venv (``.venv-lightly-train``) whose torch/torchvision are pinned to exactly the builds of the project's
venv (pip takes them from the local wheel cache; any other torch would download gigabytes), and it runs as
``python -c <driver>`` in that venv. Its trained backbone (``exported_models/exported_last.pt``, a torchvision
``state_dict``) is re-saved without the random ``fc`` classifier as ``backbone.safetensors``, which
``warmstart.core.checkpoints.load_backbone_weights`` and ``LoadBackboneWeights`` load like any warmstart export.

Used by ``benchmarks/ssl_vs_lightly_train.py`` (throughput) and ``benchmarks/transfer.py`` (transfer quality)::

    python = ensure_lightly_train_venv()
    result = pretrain_with_lightly_train(python, data_dir, out_dir, epochs=2, batch_size=64, image_size=32,
                                         num_workers=1)
    result["images_per_s"], result["weights"]

Example:
    >>> sorted(lightly_train_env())[:2]
    ['HF_HUB_OFFLINE', 'LIGHTLY_TRAIN_EVENTS_DISABLED']
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = ROOT / ".venv-lightly-train"
PINNED = ("torch", "torchvision")

# Runs inside the lightly-train venv. A Lightning callback appended to LightlyTrain's own callbacks times its
# training loop exactly as warmstart's ThroughputMonitor does (on_train_start -> on_train_end, global steps), so
# the two images/s numbers mean the same thing; everything else is LightlyTrain's default behaviour.
_DRIVER = r"""
import json, sys, time
args = json.loads(sys.argv[1])
import pytorch_lightning as pl
import lightly_train
from lightly_train._commands import train_helpers

timing = {}

class _Timer(pl.Callback):
    def on_train_start(self, trainer, module):
        timing["start"], timing["start_step"] = time.perf_counter(), trainer.global_step
    def on_train_end(self, trainer, module):
        timing["seconds"] = time.perf_counter() - timing["start"]
        timing["steps"] = trainer.global_step - timing["start_step"]

_get_trainer = train_helpers.get_trainer
def _with_timer(*a, **kw):
    kw["callbacks"] = [*kw["callbacks"], _Timer()]
    return _get_trainer(*a, **kw)
train_helpers.get_trainer = _with_timer

kwargs = args["kwargs"]
called = time.perf_counter()
lightly_train.pretrain(**kwargs)
timing["call_s"] = time.perf_counter() - called
timing.pop("start", None)
with open(args["timing"], "w") as f:
    json.dump(timing, f)
"""


def _pins() -> list[str]:
    """``name==X.Y.Z`` for torch/torchvision as installed in the running (project) venv, local label dropped.

    ``==2.14.1`` matches ``2.14.1+cu130`` too (PEP 440), so pip picks the same build from the local wheels.

    Example:
        >>> [p.split("==")[0] for p in _pins()]
        ['torch', 'torchvision']
    """
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in PINNED]


def lightly_train_env(out_dir: Path | None = None) -> dict[str, str]:
    """Environment variables that keep a LightlyTrain run offline and quiet (telemetry off, caches in ``out_dir``).

    Example:
        >>> lightly_train_env()["LIGHTLY_TRAIN_EVENTS_DISABLED"]
        '1'
    """
    env = {"LIGHTLY_TRAIN_EVENTS_DISABLED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    if out_dir is not None:
        env["LIGHTLY_TRAIN_CACHE_DIR"] = str(Path(out_dir) / "lightly_train_cache")
    return env


def ensure_lightly_train_venv(path: Path = DEFAULT_VENV) -> Path:
    """Create (once) a venv with ``lightly-train`` on the project's exact torch build; return its python.

    Idempotent: a venv where ``lightly_train`` is already importable is returned as is. The install is
    ``pip install -c constraints.txt lightly-train`` with torch/torchvision pinned to this venv's versions.

    Example:
        >>> ensure_lightly_train_venv().name  # doctest: +SKIP
        'python'
    """
    path = Path(path)
    python = path / "bin" / "python"
    if python.exists() and _has_lightly_train(python):
        return python
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=False).create(path)
    constraints = path / "constraints.txt"
    constraints.write_text("\n".join(_pins()) + "\n")
    cmd = [str(python), "-m", "pip", "install", "--quiet", "-c", str(constraints), "lightly-train"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"installing lightly-train into {path} failed:\n{done.stderr[-4000:]}")
    versions = subprocess.run([str(python), "-c", "import torch, torchvision; print(torch.__version__, "
                               "torchvision.__version__)"], capture_output=True, text=True).stdout.split()
    wanted = [p.split("==")[1] for p in _pins()]
    if [v.split("+")[0] for v in versions] != wanted:
        raise RuntimeError(f"{path} has torch/torchvision {versions}, expected {wanted}: the constraints were "
                           "not honoured; delete the venv and retry")
    share_identical_files(_site_packages(Path(sys.prefix)), _site_packages(path))
    return python


def _site_packages(prefix: Path) -> Path:
    return prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def share_identical_files(source: Path, target: Path, min_size: int = 1 << 16) -> int:
    """Replace files under ``target`` that are byte-identical to the same path under ``source`` by hard links.

    The second venv holds a second copy of the same torch build (CUDA libraries included, ~6 GB); sharing the
    identical files brings its own footprint down to what differs. Only regular files of at least ``min_size``
    bytes on the same file system; a file is replaced atomically (link to a temporary name, then rename), so a
    failure leaves the copy in place. Returns the bytes freed.

    Example:
        >>> import tempfile
        >>> a, b = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
        >>> _ = (a / "x.so").write_bytes(b"1" * 70000), (b / "x.so").write_bytes(b"1" * 70000)
        >>> share_identical_files(a, b), (a / "x.so").stat().st_ino == (b / "x.so").stat().st_ino
        (70000, True)
    """
    import filecmp

    freed = 0
    for dirpath, _, names in os.walk(target):
        for name in names:
            mine = Path(dirpath) / name
            theirs = source / mine.relative_to(target)
            try:
                if mine.is_symlink() or theirs.is_symlink() or not theirs.is_file():
                    continue
                a, b = theirs.stat(), mine.stat()
                if a.st_ino == b.st_ino or a.st_dev != b.st_dev or a.st_size != b.st_size or b.st_size < min_size:
                    continue
                if not filecmp.cmp(theirs, mine, shallow=False):
                    continue
                tmp = mine.with_name(f".{mine.name}.link-tmp")
                os.link(theirs, tmp)
                os.replace(tmp, mine)
                freed += b.st_size
            except OSError:  # another file system, no permission: keep the copy
                continue
    return freed


def _has_lightly_train(python: Path) -> bool:
    """True if ``lightly_train`` is installed in that venv (checked in a subprocess, never imported here)."""
    probe = [str(python), "-c", "import importlib.util, sys; "
             "sys.exit(importlib.util.find_spec('lightly_train') is None)"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def lightly_train_kwargs(data_dir: Path, out_dir: Path, *, model: str, method: str, epochs: int,
                         batch_size: int, image_size: int, num_workers: int, seed: int, steps: int | None,
                         transform_args: dict[str, Any] | None, method_args: dict[str, Any] | None
                         ) -> dict[str, Any]:
    """The ``lightly_train.pretrain`` arguments: explicit where a default could download or differ from ours.

    CPU, 32-bit, one device; ``transform_args`` extend ``{"image_size": (S, S)}`` (LightlyTrain's default is 224).

    Example:
        >>> kw = lightly_train_kwargs(Path("d"), Path("o"), model="torchvision/resnet18", method="simclr",
        ...                           epochs=1, batch_size=8, image_size=32, num_workers=0, seed=0, steps=3,
        ...                           transform_args=None, method_args=None)
        >>> kw["transform_args"], kw["trainer_args"], kw["model_args"]
        ({'image_size': [32, 32]}, {'max_steps': 3}, {'weights': None})
    """
    if method == "distillation" or method.startswith("dino"):
        raise ValueError(f"method={method!r} needs a pretrained teacher (LightlyTrain downloads DINOv2/v3): "
                         "use an SSL method such as 'simclr'")
    if not model.startswith("torchvision/"):
        raise ValueError(f"model must be a 'torchvision/<name>' spec (built from code, no download), got {model!r}")
    kwargs: dict[str, Any] = dict(
        out=str(out_dir / "run"), data=str(data_dir), model=model, method=method, epochs=int(epochs),
        batch_size=int(batch_size), num_workers=int(num_workers), seed=int(seed), overwrite=True,
        accelerator="cpu", devices=1, precision="32-true",
        transform_args={"image_size": [int(image_size), int(image_size)], **(transform_args or {})},
        # Random init, explicitly: torchvision's get_model would also default to no weights, but never download.
        model_args={"weights": None},
    )
    if method_args:
        kwargs["method_args"] = dict(method_args)
    if steps is not None:
        kwargs["trainer_args"] = {"max_steps": int(steps)}
    return kwargs


def pretrain_with_lightly_train(python: Path, data_dir: Path, out_dir: Path, *, model: str = "torchvision/resnet18",
                                method: str = "simclr", epochs: int, batch_size: int, image_size: int,
                                num_workers: int, seed: int = 0, steps: int | None = None,
                                transform_args: dict[str, Any] | None = None,
                                method_args: dict[str, Any] | None = None, timeout: float | None = None) -> dict:
    """Run ``lightly_train.pretrain`` in its venv (subprocess) on ``data_dir``; export the backbone to ``out_dir``.

    Returns ``{"wall_s", "images_per_s", "weights", ...}``: ``wall_s`` is the whole subprocess (interpreter
    start, imports, data scan, training, export); ``images_per_s`` is images trained / training-loop seconds
    (Lightning ``on_train_start`` -> ``on_train_end``, the same window warmstart's summary uses); ``weights`` is
    ``out_dir/backbone.safetensors`` (torchvision keys, no ``fc``). ``transform_args`` / ``method_args`` go to
    LightlyTrain unchanged (e.g. ``{"gaussian_blur": None}``, ``{"hidden_dim": 512}``). Logs are in
    ``out_dir/lightly_train.log``; a failed run raises with its tail.

    Example:
        >>> python = ensure_lightly_train_venv()  # doctest: +SKIP
        >>> r = pretrain_with_lightly_train(python, data, out, epochs=1, batch_size=32, image_size=32,
        ...                                 num_workers=0)  # doctest: +SKIP
        >>> sorted(r)[:3]  # doctest: +SKIP
        ['images', 'images_per_s', 'steps']
    """
    python, data_dir, out_dir = Path(python), Path(data_dir), Path(out_dir)
    if not python.exists():
        raise FileNotFoundError(f"{python} does not exist: create the venv with ensure_lightly_train_venv()")
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data_dir {data_dir} is not a folder of images")
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = lightly_train_kwargs(data_dir, out_dir, model=model, method=method, epochs=epochs,
                                  batch_size=batch_size, image_size=image_size, num_workers=num_workers, seed=seed,
                                  steps=steps, transform_args=transform_args, method_args=method_args)
    timing_file = out_dir / "lightly_train_timing.json"
    timing_file.unlink(missing_ok=True)
    env = {**os.environ, **lightly_train_env(out_dir)}
    env.pop("PYTHONPATH", None)  # nothing of the project's venv may leak into LightlyTrain's
    log = out_dir / "lightly_train.log"
    cmd = [str(python), "-c", _DRIVER, json.dumps({"kwargs": kwargs, "timing": str(timing_file)})]
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=out_dir, timeout=timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0 or not timing_file.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"LightlyTrain failed (exit {done.returncode}); log {log}:\n{tail}")
    timing = json.loads(timing_file.read_text())
    images = int(timing["steps"]) * int(batch_size)
    weights = export_lightly_train_backbone(Path(kwargs["out"]) / "exported_models" / "exported_last.pt",
                                            out_dir / "backbone.safetensors")
    return {"wall_s": wall, "images_per_s": images / timing["seconds"] if timing["seconds"] > 0 else None,
            "train_s": timing["seconds"], "call_s": timing["call_s"], "steps": int(timing["steps"]),
            "images": images, "weights": weights, "log": log}


def export_lightly_train_backbone(exported: Path, target: Path) -> Path:
    """Re-save LightlyTrain's torchvision ``state_dict`` without the classifier, as warmstart-loadable safetensors.

    Read with ``torch.load(weights_only=True)`` (a plain tensor dict; no LightlyTrain code is needed or run).

    Example:
        >>> import tempfile, torch, torchvision
        >>> d = Path(tempfile.mkdtemp())
        >>> torch.save(torchvision.models.resnet18().state_dict(), d / "exported_last.pt")
        >>> from warmstart.core.checkpoints import read_weights
        >>> "fc.weight" in read_weights(export_lightly_train_backbone(d / "exported_last.pt", d / "b.safetensors"))
        False
    """
    import torch

    from warmstart.core.checkpoints import save_weights

    if not exported.is_file():
        raise FileNotFoundError(f"LightlyTrain wrote no export at {exported}")
    state = torch.load(exported, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise ValueError(f"{exported} is not a torchvision ResNet state_dict (keys: {list(state)[:4]})")
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    return save_weights(backbone, target, metadata={"source": "lightly-train", "format": "torchvision-state-dict"})


if __name__ == "__main__":
    print(ensure_lightly_train_venv(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_VENV))
