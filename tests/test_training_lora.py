"""LoRA on a tiny model: checks before training, loss goes down, merge equals the PeftModel, adapter size,
several adapters on one base, QLoRA's plain refusal on a CPU."""

import pytest
import torch

from slmops.errors import ConfigError
from training.dataset import Template, load_jsonl, tokenize
from training.loader import load_model
from training.lora import LoraSettings, adapter_bytes, add_lora, check_fits, merge, qlora_unavailable_reason
from training.tiny import DATA_DIR
from training.trainer import TrainSettings, train

FAST = TrainSettings(lr=1e-2, max_steps=12, batch_size=8, seed=0)
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def weak(tmp_path_factory):
    """A tiny model pre-trained on the ChatML form of the data; the adapters learn a text template instead."""
    cache = tmp_path_factory.mktemp("cache")
    return lambda: load_model({"source": "tiny", "tiny": {"hidden": 64, "layers": 2, "steps": 40}}, cache)


@pytest.fixture(scope="module")
def rows(weak):
    _, tok, _ = weak()
    template = Template.parse("### Question: {input}\n### Answer: {output}")
    return tokenize(load_jsonl(DATA_DIR / "support_train.jsonl"), template, tok, 256)


def test_unknown_target_module_is_refused_before_training(weak):
    model, _, _ = weak()
    with pytest.raises(ConfigError, match=r"\['qkv'\] are not linear layers.*q_proj"):
        check_fits(model, LoraSettings(target_modules=("q_proj", "qkv")))


def test_rank_larger_than_the_layer_is_refused(weak):
    model, _, _ = weak()
    with pytest.raises(ConfigError, match=r"rank 48 is larger than layer k_proj \(64 -> 32\)"):
        add_lora(model, LoraSettings(rank=48, target_modules=("q_proj", "k_proj")))


@pytest.mark.parametrize("kw, words", [({"rank": 0}, "rank"), ({"alpha": 0}, "alpha"), ({"dropout": 1.0}, "dropout"),
                                       ({"target_modules": ()}, "target_modules")])
def test_bad_lora_settings(kw, words):
    with pytest.raises(ConfigError, match=words):
        LoraSettings(**kw)


def test_lora_loss_goes_down_and_base_stays_frozen(weak, rows, tmp_path):
    model, tok, _ = weak()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pm = add_lora(model, LoraSettings(rank=8, alpha=16, dropout=0.0, target_modules=ALL))
    r = train(pm, rows, rows[:8], FAST, tmp_path, tok.pad_token_id, progress=False, log=lambda *a: None)
    assert r.last_loss < r.first_loss * 0.8, r.losses
    base = pm.get_base_model()
    for n, p in base.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, before[n.replace("base_layer.", "")]), n


def test_merged_logits_equal_the_peft_model_and_adapter_is_small(weak, rows, tmp_path):
    model, tok, _ = weak()
    pm = add_lora(model, LoraSettings(rank=8, alpha=16, dropout=0.0, target_modules=("q_proj", "k_proj", "v_proj")))
    train(pm, rows, [], FAST, tmp_path / "run", tok.pad_token_id, progress=False, log=lambda *a: None)
    pm.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([rows[0]["input_ids"], rows[1]["input_ids"][:len(rows[0]["input_ids"])]])
    with torch.no_grad():
        peft_logits = pm(input_ids=ids).logits
        merged = merge(pm)
        merged_logits = merged(input_ids=ids).logits
    assert (peft_logits - merged_logits).abs().max().item() < 1e-4
    merged.save_pretrained(tmp_path / "merged")
    model_bytes = (tmp_path / "merged" / "model.safetensors").stat().st_size
    assert adapter_bytes(tmp_path / "adapter") < 0.1 * model_bytes


def test_two_adapters_on_one_base(weak, rows, tmp_path):
    model, tok, _ = weak()
    pm = add_lora(model, LoraSettings(rank=8, alpha=16, dropout=0.0, target_modules=("q_proj", "v_proj")), "a")
    train(pm, rows, [], FAST, tmp_path / "a", tok.pad_token_id, progress=False, log=lambda *a: None)
    a_weights = {n: p.detach().clone() for n, p in pm.named_parameters() if ".a." in n}
    add_lora(pm, LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules=("o_proj",)), "b")
    assert all(".b." in n for n, p in pm.named_parameters() if p.requires_grad)  # only the new one trains
    train(pm, rows, [], FAST, tmp_path / "b", tok.pad_token_id, progress=False, log=lambda *a: None)
    for n, p in pm.named_parameters():
        if n in a_weights:
            assert torch.equal(p, a_weights[n]), n  # training b left a untouched
    ids = torch.tensor([rows[0]["input_ids"]])
    outs = {}
    with torch.no_grad():
        for name in ("a", "b"):
            pm.set_adapter(name)
            outs[name] = pm(input_ids=ids).logits
        with pm.disable_adapter():
            outs["base"] = pm(input_ids=ids).logits
    assert not torch.allclose(outs["a"], outs["b"]) and not torch.allclose(outs["a"], outs["base"])
    pm.save_pretrained(tmp_path / "adapters")
    assert (tmp_path / "adapters" / "a" / "adapter_model.safetensors").exists()
    assert (tmp_path / "adapters" / "b" / "adapter_model.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this checks the CPU-only refusal")
def test_qlora_on_a_cpu_says_so_and_offers_lora():
    reason = qlora_unavailable_reason()
    assert "CUDA" in reason and "method: lora" in reason
