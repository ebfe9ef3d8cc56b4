"""Does SSL pretraining of the YOLO backbone help detection? Pretrained vs scratch on the same budget.

1. Generate a YOLO-format shapes dataset (``warmstart.testing.make_shapes_dataset``).
2. SSL-pretrain the yolov8n backbone (layers through SPPF) on its *training images only*, labels unused, with
   ``warmstart.pretrain(..., model="ultralytics/yolov8n.yaml")``.
3. Fine-tune ``wrap(YOLO("yolov8n.yaml"), backbone_weights=<export>)`` and train ``YOLO("yolov8n.yaml")`` from
   scratch with identical Ultralytics arguments (epochs, imgsz, batch, seed).
4. Report mAP50-95 / mAP50 on the validation split and wall time for each, as a table and ``results.json``.

Run: ``python benchmarks/yolo_transfer.py --out /tmp/yolo_transfer`` (CPU, offline; ~10 min with the defaults on
2 cores). Everything is generated locally; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: no update checks or telemetry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/warmstart_yolo_transfer", help="work folder (overwritten)")
    p.add_argument("--n-train", type=int, default=128, help="training images (also the SSL pretraining set)")
    p.add_argument("--n-val", type=int, default=64)
    p.add_argument("--imgsz", type=int, default=64)
    p.add_argument("--ssl-method", default="simclr")
    p.add_argument("--ssl-epochs", type=int, default=20)
    p.add_argument("--ssl-batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=15, help="detection epochs, same for both arms")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Ultralytics train() override for BOTH arms, e.g. optimizer=AdamW (repeatable)")
    return p.parse_args(argv)


def _value(text: str):
    try:
        return float(text) if "." in text or "e" in text.lower() else int(text)
    except ValueError:
        return text


def train_detector(yolo, data: Path, out: Path, name: str, args: argparse.Namespace) -> dict:
    extra = {k: _value(v) for k, v in (a.split("=", 1) for a in args.train_arg)}
    start = time.perf_counter()
    metrics = yolo.train(data=str(data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, workers=0,
                         device="cpu", plots=False, amp=False, seed=args.seed, project=str(out), name=name,
                         exist_ok=True, verbose=False, **extra)
    return {"map50_95": round(float(metrics.box.map), 4), "map50": round(float(metrics.box.map50), 4),
            "train_time_s": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from ultralytics import YOLO

    import warmstart
    from warmstart.testing import make_shapes_dataset
    from warmstart.yolo_integration import wrap

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    data = make_shapes_dataset(out / "data", n_train=args.n_train, n_val=args.n_val, size=args.imgsz,
                               seed=args.seed)

    start = time.perf_counter()
    summary = warmstart.pretrain(out / "ssl", data.parent / "images" / "train", "ultralytics/yolov8n.yaml",
                                 method=args.ssl_method, epochs=args.ssl_epochs, batch_size=args.ssl_batch,
                                 image_size=args.imgsz, accelerator="cpu", devices=1, seed=args.seed,
                                 progress=False, overwrite=True)
    ssl_time = round(time.perf_counter() - start, 1)
    weights = summary["exported"]["safetensors"]

    pretrained = wrap(YOLO("yolov8n.yaml", verbose=False), backbone_weights=weights)
    results = {
        "config": vars(args),
        "ssl": {"method": args.ssl_method, "epochs": args.ssl_epochs, "wall_time_s": ssl_time,
                "transfer": pretrained.warmstart_report.summary()},
        "ssl_pretrained": train_detector(pretrained, data, out / "runs", "pretrained", args),
        "scratch": train_detector(YOLO("yolov8n.yaml", verbose=False), data, out / "runs", "scratch", args),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nSSL pretraining ({args.ssl_method}, {args.ssl_epochs} epochs, {args.n_train} images): {ssl_time} s; "
          f"{results['ssl']['transfer']}")
    print(f"{'arm':<16}{'mAP50-95':>10}{'mAP50':>10}{'train s':>10}")
    for arm in ("scratch", "ssl_pretrained"):
        r = results[arm]
        print(f"{arm:<16}{r['map50_95']:>10.4f}{r['map50']:>10.4f}{r['train_time_s']:>10.1f}")
    print(f"results: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
