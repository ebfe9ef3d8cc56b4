"""SSL pretraining throughput, side by side: warmstart vs LightlyTrain vs a bare torch+lightly loop vs the model alone.

Every arm trains the same thing on the same images: torchvision resnet18 (random init), SimCLR, 32 px views, the
same batch and epochs, the same augmentation strength (warmstart's small-image SimCLR defaults: crops from 20% of
the image, colour jitter x0.5, no blur) and the same projection head (512-512-128, BN). Arms:

- ``warmstart``: ``warmstart pretrain`` (the CLI, defaults otherwise: views made in batches from the RAM cache, so
  ``num_workers="auto"`` resolves to 0 and is recorded per run; epoch-end checkpoints, CSV + TensorBoard logs,
  export).
- ``lightly_train``: ``lightly_train.pretrain`` run in its own venv as a subprocess (AGPL: never imported here;
  see ``lightly_train_arm.py``); its defaults otherwise (SGD, its checkpoints, logs and export).
- ``bare_loop``: the loop a lightly user writes by hand (``SimCLRTransform`` + ``NTXentLoss`` + a ``DataLoader``
  over the PNG files, torch's default AdamW), no logging, no checkpoint: the floor of framework overhead.
- ``model_only``: forward + backward + optimizer step (fused AdamW, channels_last convolutions: what warmstart
  uses on the CPU) of the same backbone and head on ready-made view tensors, no data path at all: the limit any
  pipeline can reach on this machine.
- ``warmstart_contiguous`` (only with ``--arms``): the ``warmstart`` arm with ``--memory-format contiguous``, for
  the layout's effect on a whole run.

Each arm is its own process; one round runs every arm once, the order rotating from round to round so machine
load falls on all arms alike. Two numbers per run: the process wall clock (start-up, data scan, training, export)
and training images/s (the training loop only; for the Lightning arms ``on_train_start`` -> ``on_train_end``, so
worker start-up and epoch-end checkpoints count). Ratios are per round, then median (min..max) over rounds.

    python benchmarks/ssl_vs_lightly_train.py              # 3 rounds, 2048 digits PNGs, batch 64, 2 epochs
    python benchmarks/ssl_vs_lightly_train.py --quick      # smoke run (tiny; JSON to a temp folder)
    python benchmarks/ssl_vs_lightly_train.py --images 512 --name ssl_vs_lightly_train_512   # 8 steps per epoch
    python benchmarks/ssl_vs_lightly_train.py --arms warmstart,lightly_train,warmstart_contiguous \
        --name ssl_layout_whole_run      # the channels_last layout's effect on whole warmstart runs

The LightlyTrain venv (``.venv-lightly-train``) is created on first use; files identical to the project venv's
(its torch build) are hard-linked, leaving ~1 GB of its own. Writes ``benchmarks/results/<--name>.json``
(default ``ssl_vs_lightly_train.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results_io import Recorder, spread  # noqa: E402

ARMS = ("warmstart", "lightly_train", "bare_loop", "model_only")
# Not run by default (--arms): warmstart in torch's default layout, for the layout's effect on a whole run.
OPTIONAL_ARMS = ("warmstart_contiguous",)
LABELS = {"warmstart": "warmstart", "lightly_train": "LightlyTrain", "bare_loop": "bare torch+lightly loop",
          "model_only": "model only (no data path)",
          "warmstart_contiguous": "warmstart, default layout (--memory-format contiguous)"}
# Goals of issue 12 for warmstart's training images/s relative to each arm.
GOALS = {"lightly_train": 1.2, "bare_loop": 0.95, "model_only": 0.8}
MODEL, METHOD = "torchvision/resnet18", "simclr"
# warmstart's SimCLR defaults at <= 96 px (core/ssl/simclr.py); every arm is set to the same.
MIN_SCALE, CJ_STRENGTH, TEMPERATURE, HEAD = 0.2, 0.5, 0.2, (512, 512, 128)


def write_digits(root: Path, n: int, size: int = 32) -> Path:
    """``n`` real scikit-learn digit scans (8x8, repeated past 1797) upscaled to ``size`` px RGB PNGs in ``root``.

    Example:
        >>> import tempfile
        >>> folder = write_digits(Path(tempfile.mkdtemp()), 3)
        >>> len(list(folder.glob("*.png")))
        3
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from warmstart.testing import write_image_folder

    digits = load_digits()
    images = [np.asarray(Image.fromarray((digits.images[i % len(digits.images)] / 16 * 255).astype(np.uint8))
                         .resize((size, size), Image.BILINEAR).convert("RGB")) for i in range(n)]
    return write_image_folder(np.stack(images), None, root)


# ---- arms run in child processes (this script with --arm) --------------------------------------------------------
def _head_and_loss():
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    return SimCLRProjectionHead(*HEAD), NTXentLoss(temperature=TEMPERATURE)


def _backbone():
    import torchvision
    from torch import nn

    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    return net


def bare_loop(data: Path, batch_size: int, epochs: int, image_size: int, num_workers: int, *,
              fused: bool = False, memory_format: str = "contiguous") -> dict:
    """The loop a lightly user writes by hand; returns images trained and training seconds.

    ``fused=True`` uses the fused CPU AdamW kernel exactly when warmstart's SSLModule does, and
    ``memory_format="auto"`` the layout SSLModule's default picks (channels_last on the CPU) (``ssl_throughput.py``
    compares the framework alone); the defaults are torch's plain AdamW and layout, as a user writes them.

    Example:
        >>> import tempfile
        >>> r = bare_loop(write_digits(Path(tempfile.mkdtemp()), 4), 2, 1, 32, 0)  # doctest: +SKIP
        >>> r["images"]  # doctest: +SKIP
        4
    """
    import torch
    from lightly.transforms import SimCLRTransform
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    class Files(Dataset):
        def __init__(self, files: list[Path], transform) -> None:
            self.files, self.transform = files, transform

        def __len__(self) -> int:
            return len(self.files)

        def __getitem__(self, i: int):
            return self.transform(Image.open(self.files[i]).convert("RGB"))

    torch.manual_seed(0)
    backbone, (head, criterion) = _backbone(), _head_and_loss()
    transform = SimCLRTransform(input_size=image_size, min_scale=MIN_SCALE, cj_strength=CJ_STRENGTH,
                                gaussian_blur=0.0)
    loader = DataLoader(Files(sorted(data.rglob("*.png")), transform), batch_size=batch_size, shuffle=True,
                        drop_last=True, num_workers=num_workers, persistent_workers=num_workers > 0)
    if memory_format != "contiguous":
        from warmstart.pretraining.memory_format import apply_memory_format, resolve_memory_format

        apply_memory_format(backbone, resolve_memory_format(memory_format, backbone, "cpu"))
    params = [*backbone.parameters(), *head.parameters()]
    if fused:
        from warmstart.pretraining.ssl_module import fused_kernels_fit

        fused = fused_kernels_fit(params)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, fused=fused or None)
    backbone.train()
    head.train()
    images, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x0, x1 in loader:
            z0, z1 = head(backbone(torch.cat([x0, x1]))).chunk(2)
            loss = criterion(z0, z1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            images += x0.shape[0]
    return {"images": images, "train_s": time.perf_counter() - start, "final_loss": float(loss)}


def model_only(batch_size: int, steps: int, image_size: int) -> dict:
    """Forward + backward + AdamW step of resnet18 + head on the same two ready-made view tensors, ``steps`` times.

    Example:
        >>> model_only(2, 1, 32)["images"]  # doctest: +SKIP
        2
    """
    import torch

    torch.manual_seed(0)
    backbone, (head, criterion) = _backbone(), _head_and_loss()
    views = torch.randn(2 * batch_size, 3, image_size, image_size)
    # The fastest step torch offers on the CPU, as warmstart trains: fused AdamW and channels_last convolutions
    # (the step 1.17x faster than in the default layout: memory_layout.py): a limit, not a typical loop.
    backbone.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=1e-3, weight_decay=1e-4, fused=True)
    backbone.train()
    head.train()
    start = time.perf_counter()
    for _ in range(steps):
        z0, z1 = head(backbone(views)).chunk(2)
        loss = criterion(z0, z1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"images": steps * batch_size, "train_s": time.perf_counter() - start, "final_loss": float(loss)}


# ---- the parent: one run of an arm, timed as a whole process -----------------------------------------------------
def run_arm(arm: str, data: Path, out: Path, cfg: dict, lt_python: Path | None) -> dict:
    """Run one arm in its own process; return its wall clock, CPU seconds, training images/s and what it reported.

    ``cpu_s`` is the user + system time of the arm's process tree (its DataLoader workers included): unlike the
    wall clock it barely grows when other jobs share the cores, so it is kept as a second, load-robust measure.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = _run_arm(arm, data, out, cfg, lt_python)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {**res, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def _run_arm(arm: str, data: Path, out: Path, cfg: dict, lt_python: Path | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    batch, epochs, size, workers = cfg["batch_size"], cfg["epochs"], cfg["image_size"], cfg["num_workers"]
    if arm == "lightly_train":
        from lightly_train_arm import pretrain_with_lightly_train

        res = pretrain_with_lightly_train(
            lt_python, data, out, model=MODEL, method=METHOD, epochs=epochs, batch_size=batch, image_size=size,
            num_workers=workers, seed=0, timeout=cfg["timeout_s"],
            transform_args={"random_resize": {"min_scale": MIN_SCALE},
                            "color_jitter": {"strength": CJ_STRENGTH}, "gaussian_blur": None},
            method_args={"hidden_dim": HEAD[1], "output_dim": HEAD[2], "temperature": TEMPERATURE})
        return {"wall_s": res["wall_s"], "train_s": res["train_s"], "images": res["images"],
                "images_per_s": res["images_per_s"]}
    if arm in ("warmstart", "warmstart_contiguous"):
        cli = Path(sys.executable).parent / "warmstart"
        cmd = [str(cli), "pretrain", "--data", str(data), "--model", MODEL, "--method", METHOD,
               "--out", str(out / "run"), "--epochs", str(epochs), "--batch-size", str(batch),
               "--image-size", str(size), "--accelerator", "cpu",
               "--devices", "1", "--seed", "0", "--no-progress", "--overwrite"]
        if arm == "warmstart_contiguous":
            cmd += ["--memory-format", "contiguous"]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--arm", arm, "--data", str(data),
               "--child-out", str(out / "result.json"), "--batch-size", str(batch), "--epochs", str(epochs),
               "--image-size", str(size), "--num-workers", str(workers), "--steps", str(cfg["steps"])]
    log = out / "log.txt"
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=cfg["timeout_s"])
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"arm {arm} failed (exit {done.returncode}), log {log}:\n{tail}")
    if arm in ("warmstart", "warmstart_contiguous"):
        summary = json.loads((out / "run" / "summary.json").read_text())
        return {"wall_s": wall, "train_s": summary["train_time_s"], "images": summary["images_seen"],
                "images_per_s": summary["images_per_s"], "data_wait_fraction": summary["data_wait_fraction"],
                "cache": summary["cache"]["mode"], "views": summary["views"], "num_workers": summary["num_workers"],
                "memory_format": summary.get("memory_format")}
    res = json.loads((out / "result.json").read_text())
    return {"wall_s": wall, "train_s": res["train_s"], "images": res["images"],
            "images_per_s": res["images"] / res["train_s"]}


def rotation(round_index: int, arms: tuple[str, ...] | list[str]) -> list[str]:
    """The arms' order in a round: rotated by one position per round, so each arm runs early and late.

    Example:
        >>> rotation(0, ["a", "b", "c"]), rotation(1, ["a", "b", "c"])
        (['a', 'b', 'c'], ['b', 'c', 'a'])
    """
    k = round_index % len(arms)
    return [*arms[k:], *arms[:k]]


def summarize(runs: list[dict], config: dict) -> dict:
    """The table: each arm's training images/s and wall clock, and warmstart's per-round ratios to the others.

    Training ratio = warmstart images/s / other images/s; whole-run ratios = other wall (or CPU seconds) /
    warmstart's (> 1: warmstart's whole run was faster or used less CPU). Median (min..max, n) over the rounds that
    have both arms.

    Example:
        >>> runs = [{"round": 0, "arm": "warmstart", "images_per_s": 30.0, "wall_s": 40.0, "cpu_s": 60.0},
        ...         {"round": 0, "arm": "bare_loop", "images_per_s": 30.0, "wall_s": 20.0, "cpu_s": 30.0}]
        >>> summarize(runs, {"arms": ["warmstart", "bare_loop"]})["rows"][-1][1:4]
        ['1.000 (1.000..1.000, n=1)', '0.500 (0.500..0.500, n=1)', '0.500 (0.500..0.500, n=1)']
    """
    arms = [a for a in config.get("arms", ARMS) if any(r["arm"] == a for r in runs)]
    by = {(r["round"], r["arm"]): r for r in runs}
    rounds = sorted({r["round"] for r in runs})
    rows = []
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        rows.append([LABELS[arm], spread([r["images_per_s"] for r in mine], "{:.1f}"),
                     spread([r["wall_s"] for r in mine], "{:.1f}") + " s",
                     spread([r["cpu_s"] for r in mine if "cpu_s" in r], "{:.1f}") + " s", "",
                     ", ".join(f"{r['images_per_s']:.1f}" for r in mine)])
    for other in [a for a in arms if a != "warmstart"]:
        pairs = [(by[k, "warmstart"], by[k, other]) for k in rounds if (k, "warmstart") in by and (k, other) in by]
        train = [w["images_per_s"] / o["images_per_s"] for w, o in pairs]
        whole = [o["wall_s"] / w["wall_s"] for w, o in pairs]
        cpu = [o["cpu_s"] / w["cpu_s"] for w, o in pairs if "cpu_s" in w and "cpu_s" in o]
        goal = GOALS.get(other)
        verdict = ""
        if goal is not None and train:
            # "met" only when every round meets it: a median over a spread that crosses the goal proves nothing.
            if min(train) >= goal:
                verdict = f">= {goal}: met in every round"
            elif statistics.median(train) >= goal:
                verdict = f">= {goal}: median only, not in every round (not established)"
            else:
                verdict = f">= {goal}: not met"
        rows.append([f"warmstart / {LABELS[other]}", spread(train), spread(whole), spread(cpu), verdict,
                     ", ".join(f"{v:.3f}" for v in train)])
    title = (f"SSL pretraining throughput: resnet18 simclr {config.get('image_size')} px, batch "
             f"{config.get('batch_size')}, {config.get('epochs')} epochs on {config.get('images')} images, "
             f"DataLoader workers {config.get('num_workers')} (warmstart: its default, 0), CPU; {len(rounds)} "
             "interleaved rounds")
    return {"title": title,
            "columns": ["arm / ratio", "training images/s (ratio)", "whole run wall (ratio: other / warmstart)",
                        "whole run CPU time (ratio: other / warmstart)", "goal (training images/s)",
                        "per-round training values"],
            "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each runs every arm once)")
    # 32 steps per epoch by default: at 512 images (8 steps) the per-epoch fixed costs every real run pays once per
    # hundreds of steps (warmstart's epoch-end checkpoint of resnet18 + AdamW, ~0.2 s) were ~9% of the window.
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=1,
                        help="DataLoader workers of the LightlyTrain and bare-loop arms (warmstart: its default)")
    parser.add_argument("--arms", default=",".join(ARMS),
                        help=f"comma-separated subset of {','.join(ARMS + OPTIONAL_ARMS)} (the last: not by default)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run; the JSON goes to a temp folder")
    parser.add_argument("--name", default="ssl_vs_lightly_train",
                        help="results file stem (benchmarks/results/<name>.json), e.g. for a second size")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed first run of each arm")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before one run is killed")
    # Child-process arms (internal).
    parser.add_argument("--arm", choices=("bare_loop", "model_only"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm:
        res = (bare_loop(args.data, args.batch_size, args.epochs, args.image_size, args.num_workers)
               if args.arm == "bare_loop" else model_only(args.batch_size, args.steps, args.image_size))
        args.child_out.write_text(json.dumps(res))
        return
    if args.quick:
        args.rounds, args.images, args.batch_size, args.epochs = 1, 64, 16, 1
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    unknown = sorted(set(arms) - set(ARMS + OPTIONAL_ARMS))
    if unknown or "warmstart" not in arms:
        parser.error(f"--arms must include warmstart and only {', '.join(ARMS + OPTIONAL_ARMS)}; got {args.arms!r}")
    if args.images < args.batch_size:
        parser.error(f"--images ({args.images}) must be at least --batch-size ({args.batch_size})")
    config = {"model": MODEL, "method": METHOD, "images": args.images, "data": "sklearn digits upscaled (PNG)",
              "batch_size": args.batch_size, "epochs": args.epochs, "image_size": args.image_size,
              "num_workers": args.num_workers, "rounds": args.rounds, "arms": list(arms),
              "steps": args.images // args.batch_size * args.epochs, "timeout_s": args.timeout,
              "augmentation": {"min_scale": MIN_SCALE, "cj_strength": CJ_STRENGTH, "blur": 0.0},
              "projection_head": list(HEAD), "temperature": TEMPERATURE, "torch_threads": _threads()}
    results_dir = Path(tempfile.mkdtemp(prefix="ssl_vs_lt_quick_")) if args.quick else None
    recorder = Recorder(args.name, config, **({"results_dir": results_dir} if results_dir else {}))
    lt_python = None
    if "lightly_train" in arms:
        from lightly_train_arm import ensure_lightly_train_venv

        lt_python = ensure_lightly_train_venv()
        config["lightly_train_version"] = subprocess.run(
            [str(lt_python), "-c", "from importlib.metadata import version; print(version('lightly-train'))"],
            capture_output=True, text=True).stdout.strip()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ssl_vs_lt_") as tmp:
        work = Path(tmp)
        data = write_digits(work / "data", args.images, args.image_size)
        # One untimed pass per arm: page cache and bytecode warm for every arm alike.
        if not (args.quick or args.no_warmup):
            warm = write_digits(work / "warm", args.batch_size, args.image_size)
            for arm in arms:
                run_arm(arm, warm, work / "warm_out" / arm, {**config, "epochs": 1, "steps": 1}, lt_python)
                shutil.rmtree(work / "warm_out" / arm)
        for rnd in range(args.rounds):
            for pos, arm in enumerate(rotation(rnd, arms)):
                load = round(os.getloadavg()[0], 2)
                res = run_arm(arm, data, work / f"r{rnd}" / arm, config, lt_python)
                shutil.rmtree(work / f"r{rnd}" / arm)  # checkpoints + exports: ~0.3 GB per run
                runs.append({"round": rnd, "position": pos, "arm": arm, "loadavg_1m": load,
                             **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}})
                print(f"round {rnd} {arm:>13}: {res['images_per_s']:.1f} images/s training, "
                      f"{res['wall_s']:.1f} s wall (load {load})", flush=True)
            path = recorder.write(runs, summarize)  # after every round: a cut-short run keeps what it measured
    table = json.loads(path.read_text())["table"]
    print(table["title"])
    for row in table["rows"]:
        print(" | ".join(row))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
