"""apply_lora for HF models: targets, what trains, Trainer.save_model -> PeftModel.from_pretrained, merge."""

from __future__ import annotations

import pytest
import torch
from hf_helpers import ImageDataset, TokenDataset, tiny_bert, tiny_vit_config, training_args

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from warmstart.hf_integration import apply_lora, llrd_optimizer  # noqa: E402

BERT_LINEARS = {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense"}


def test_bert_lora_trains_adapters_and_head_round_trips_and_merges(tmp_path):
    base = tiny_bert()
    base.save_pretrained(tmp_path / "base")  # peft injects into `base`: keep the original for the reload
    model = apply_lora(base, r=4, alpha=8)
    assert isinstance(model, peft.PeftModelForSequenceClassification)
    cfg = model.peft_config["default"]
    assert {t.split(".", 4)[-1] for t in cfg.target_modules} == BERT_LINEARS
    assert len(cfg.target_modules) == 2 * len(BERT_LINEARS)
    assert {"classifier", "bert.pooler.dense"} <= set(cfg.modules_to_save)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path / "run", max_steps=4),
                                   train_dataset=TokenDataset(32))
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert any("lora_B" in n for n in changed) and any("classifier.modules_to_save" in n for n in changed)
    assert changed <= trainable  # base weights untouched

    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    batch = TokenDataset(8, seed=1)[:8]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
        fresh = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
        reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
        torch.testing.assert_close(reloaded(**inputs).logits, expected)
        merged = model.merge_and_unload().eval()
        assert type(merged) is transformers.BertForSequenceClassification
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(**inputs).logits, expected, rtol=1e-5, atol=1e-5)


def test_vit_lora_targets_attention_and_mlp_and_trains_in_trainer(tmp_path):
    model = apply_lora(transformers.ViTForImageClassification(tiny_vit_config()), r=2)
    assert type(model) is peft.PeftModel  # no peft task type for image classification: the generic wrapper
    names = {t.rsplit(".", 1)[-1] for t in model.peft_config["default"].target_modules}
    assert names in ({"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"},  # transformers 5 module names
                     {"query", "key", "value", "dense"})                     # 4.x: attention.output.dense, ...
    assert "classifier" in model.peft_config["default"].modules_to_save
    query = next(n for n, _ in model.named_parameters()
                 if ".0." in n and ("q_proj" in n or "query" in n) and n.endswith("base_layer.weight"))
    base_before = dict(model.named_parameters())[query].detach().clone()
    # LoRA composes with layer-wise LR decay: adapters in lower layers get smaller lrs
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path, max_steps=2),
                                   train_dataset=ImageDataset(16),
                                   optimizer_cls_and_kwargs=llrd_optimizer(model, lr=1e-3, layer_decay=0.5))
    assert trainer.train().training_loss > 0
    lrs = {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups}
    layer0 = next(name for name in lrs if name.endswith(".0/decay"))  # vit.layers.0 (5.x), vit.encoder.layer.0
    assert lrs[layer0] == pytest.approx(lrs["head/decay"] / 4)
    assert torch.equal(dict(model.named_parameters())[query], base_before)


def test_bad_input():
    with pytest.raises(ValueError, match="already a PeftModel"):
        apply_lora(apply_lora(tiny_bert(), r=2))
    with pytest.raises(ValueError, match="match no"):
        apply_lora(tiny_bert(), targets=["not_a_layer"])
    with pytest.raises(ValueError, match="r must be >= 1"):
        apply_lora(tiny_bert(), r=0)
    with pytest.raises(ValueError, match=r"head=\[\.\.\.\]"):
        apply_lora(tiny_bert(), modules_to_save=["classifier"])


def test_cnn_lora_trains_saves_and_merges_batchnorm(tmp_path):
    torch.manual_seed(0)
    base = transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3))
    base.save_pretrained(tmp_path / "base")
    bns = [n for n, m in base.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model = apply_lora(base, r=2)
    assert set(bns) <= set(model.peft_config["default"].modules_to_save)  # BN adapts to the new domain too
    stem_bn = "resnet.embedder.embedder.normalization"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(stem_bn in n and "modules_to_save" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    transformers.Trainer(model=model, args=training_args(tmp_path / "run", max_steps=3),
                         train_dataset=ImageDataset(16)).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert any(stem_bn in n for n in changed) and changed <= trainable

    model.save_pretrained(tmp_path / "adapter")
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=x).logits
        fresh = transformers.ResNetForImageClassification.from_pretrained(tmp_path / "base")
        reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
        torch.testing.assert_close(reloaded(pixel_values=x).logits, expected)  # trained BN stats came back too
        merged = model.merge_and_unload().eval()
        assert type(merged) is transformers.ResNetForImageClassification
        torch.testing.assert_close(merged(pixel_values=x).logits, expected, rtol=1e-5, atol=1e-5)
