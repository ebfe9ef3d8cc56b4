"""Does SSL pretraining of the YOLO backbone help detection? Three arms that differ in one thing each.

1. Generate a YOLO-format shapes dataset (``warmstart.testing.make_shapes_dataset``).
2. SSL-pretrain the yolov8n backbone (layers through SPPF) on its *training images only*, labels unused, with
   ``warmstart.pretrain(..., model="ultralytics/yolov8n.yaml")`` (once, shared by every seed).
3. Per seed, three detection runs with identical Ultralytics arguments (epochs, imgsz, batch, seed), interleaved
   with the order rotating per seed:
   - ``ultralytics``: ``YOLO("yolov8n.yaml")`` from scratch with Ultralytics' own trainer and optimizer;
   - ``warmstart_scratch``: ``wrap(YOLO("yolov8n.yaml"), plan={"layer_decay": 1.0})`` without weights:
     warmstart's trainer and optimizer construction (explicit per-group lr, no bias-warmup group), random init;
   - ``warmstart_ssl``: the same plus ``backbone_weights=<export>``: the same trainer and optimizer, SSL weights.
   ``warmstart_ssl`` minus ``warmstart_scratch`` is the effect of the weights alone; ``warmstart_scratch`` minus
   ``ultralytics`` is the effect of the trainer alone. Differences are paired by seed.
4. mAP50-95 / mAP50 on the validation split and train() wall time per run, every run kept, written to
   ``benchmarks/results/yolo_transfer.json``.

Run: ``python benchmarks/yolo_transfer.py [--seeds 0,1] [--epochs 15]`` (CPU, offline). Everything is generated
locally; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: no update checks or telemetry
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import Recorder, spread  # noqa: E402

ARMS = {"ultralytics": ("Ultralytics", "random init"), "warmstart_scratch": ("warmstart", "random init"),
        "warmstart_ssl": ("warmstart", "SSL backbone")}
EFFECTS = {"weights alone: warmstart_ssl - warmstart_scratch": ("warmstart_ssl", "warmstart_scratch"),
           "trainer alone: warmstart_scratch - ultralytics": ("warmstart_scratch", "ultralytics")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/warmstart_yolo_transfer", help="work folder (overwritten)")
    p.add_argument("--n-train", type=int, default=128, help="training images (also the SSL pretraining set)")
    p.add_argument("--n-val", type=int, default=64)
    p.add_argument("--imgsz", type=int, default=64)
    p.add_argument("--ssl-method", default="simclr")
    p.add_argument("--ssl-epochs", type=int, default=20)
    p.add_argument("--ssl-batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=15, help="detection epochs, same for every arm")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seeds", default="0", help="comma-separated detection seeds (data and SSL use seed 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


def train_detector(yolo, data: Path, out: Path, name: str, args: argparse.Namespace, seed: int) -> dict:
    """One whole ``train()`` call (every hook inside the timed window) and its final validation metrics."""
    start = time.perf_counter()
    metrics = yolo.train(data=str(data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, workers=0,
                         device="cpu", plots=False, amp=False, seed=seed, deterministic=True, project=str(out),
                         name=name, exist_ok=True, verbose=False)
    return {"map50_95": round(float(metrics.box.map), 4), "map50": round(float(metrics.box.map50), 4),
            "train_s": round(time.perf_counter() - start, 1)}


def summarize(runs: list[dict], config: dict) -> dict:
    """One row per arm (median (min..max) over seeds), then the two effects as paired differences by seed.

    Example:
        >>> runs = [{"arm": a, "seed": 0, "map50_95": m, "map50": m, "train_s": 1.0}
        ...         for a, m in (("ultralytics", 0.1), ("warmstart_scratch", 0.12), ("warmstart_ssl", 0.3))]
        >>> summarize(runs, {"epochs": 15, "n_train": 8, "n_val": 4, "imgsz": 64, "ssl_epochs": 1})["rows"][3][3]
        '+0.180 (+0.180..+0.180, n=1)'
    """
    det = [r for r in runs if r.get("arm") in ARMS]
    rows = []
    for arm, (trainer, weights) in ARMS.items():
        cell = [r for r in det if r["arm"] == arm]
        if cell:
            rows.append([arm, trainer, weights, spread([r["map50_95"] for r in cell]),
                         spread([r["map50"] for r in cell]), spread([r["train_s"] for r in cell], "{:.0f}")])
    for label, (a, b) in EFFECTS.items():
        by = {(r["arm"], r["seed"]): r for r in det}
        seeds = sorted(s for (arm, s) in by if arm == a and (b, s) in by)
        if seeds:
            d95 = [by[(a, s)]["map50_95"] - by[(b, s)]["map50_95"] for s in seeds]
            d50 = [by[(a, s)]["map50"] - by[(b, s)]["map50"] for s in seeds]
            rows.append([label, "paired by seed", "", spread(d95, "{:+.3f}"), spread(d50, "{:+.3f}"), ""])
    ssl = next((r for r in runs if r.get("arm") == "ssl_pretraining"), None)
    # "transferred 162/162 backbone tensors (... missing in model: <the head's names>)": the count is what matters
    ssl_text = f", SSL pretraining {ssl['wall_s']:.0f} s ({ssl['transfer'].split(' (')[0]})" if ssl else ""
    return {"title": f"YOLO yolov8n on generated shapes ({config['n_train']} train / {config['n_val']} val images, "
                     f"{config['imgsz']} px), {config['epochs']} detection epochs, {config['ssl_epochs']} SSL "
                     f"epochs{ssl_text}; mAP on the val split",
            "columns": ["arm", "trainer", "weights", "mAP50-95, median (min..max)", "mAP50, median (min..max)",
                        "train s"],
            "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        raise SystemExit("--seeds needs at least one seed, e.g. --seeds 0,1")
    import torch
    from ultralytics import YOLO

    import warmstart
    from warmstart.testing import make_shapes_dataset
    from warmstart.yolo_integration import wrap

    if args.threads:
        torch.set_num_threads(args.threads)
    config = {k: v for k, v in vars(args).items() if k != "out"} | {"seeds": seeds}
    recorder = Recorder("yolo_transfer", config)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    data = make_shapes_dataset(out / "data", n_train=args.n_train, n_val=args.n_val, size=args.imgsz, seed=0)

    start = time.perf_counter()
    summary = warmstart.pretrain(out / "ssl", data.parent / "images" / "train", "ultralytics/yolov8n.yaml",
                                 method=args.ssl_method, epochs=args.ssl_epochs, batch_size=args.ssl_batch,
                                 image_size=args.imgsz, accelerator="cpu", devices=1, seed=0, progress=False,
                                 overwrite=True)
    weights = summary["exported"]["safetensors"]
    transfer = wrap(YOLO("yolov8n.yaml", verbose=False), backbone_weights=weights).warmstart_report.summary()
    runs: list[dict] = [{"arm": "ssl_pretraining", "wall_s": round(time.perf_counter() - start, 1),
                         "transfer": transfer}]
    print(f"SSL pretraining: {runs[0]}", flush=True)
    # Both warmstart arms get the same non-empty plan (layer decay 1.0: every group at Ultralytics' lr0), so both
    # build their optimizer through warmstart; with an empty plan and no weights the trainer would hand back
    # Ultralytics' own optimizer, and the two warmstart arms would differ in more than the weights.
    plan = {"layer_decay": 1.0}
    builders = {"ultralytics": lambda: YOLO("yolov8n.yaml", verbose=False),
                "warmstart_scratch": lambda: wrap(YOLO("yolov8n.yaml", verbose=False), plan=plan),
                "warmstart_ssl": lambda: wrap(YOLO("yolov8n.yaml", verbose=False), plan=plan,
                                              backbone_weights=weights)}
    names = list(ARMS)
    for i, seed in enumerate(seeds):
        order = names[i % 3:] + names[:i % 3]  # rotate which arm goes first
        for position, arm in enumerate(order):
            result = train_detector(builders[arm](), data, out / "runs", f"{arm}_s{seed}", args, seed)
            runs.append({"arm": arm, "seed": seed, "order": position, **result})
            print(f"seed {seed} {arm}: {result}", flush=True)
            recorder.write(runs, summarize)  # partial results survive a kill
    table = summarize(runs, config)
    for row in table["rows"]:
        print(" | ".join(row))
    recorder.write(runs, summarize)
    return {"runs": runs, "table": table, "median_map50_95": {
        arm: statistics.median(r["map50_95"] for r in runs if r.get("arm") == arm) for arm in ARMS}}


if __name__ == "__main__":
    main()
