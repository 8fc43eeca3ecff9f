"""Export at every precision, its numbers against transformers and fp32, bad input, and the quality gate."""
from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from training.export import ExportError, ExportOptions, export_onnx, size_report
from training.quant_recipes import DEFAULT_INT4
from training.quality_gate import (
    GateError,
    GateThresholds,
    Metrics,
    check_publishable,
    evaluate,
    judge,
    load_examples,
    select_precision,
)

quiet = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def exports(tiny_hf, tmp_path_factory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("precisions")
    return {p: export_onnx(tiny_hf, root / p, ExportOptions(p), **quiet) for p in ("fp32", "int8", "int4")}


@pytest.fixture(scope="module")
def examples():
    return load_examples()


def test_fp32_onnx_logits_equal_transformers(tiny_hf, exports):
    import onnxruntime_genai as og
    import torch
    from transformers import AutoModelForCausalLM

    model = og.Model(str(exports["fp32"]))
    ids = og.Tokenizer(model).encode("<|im_start|>user\nKestrel K2 error code E17?<|im_end|>\n")
    gp = og.GeneratorParams(model)
    gp.set_search_options(max_length=len(ids) + 1)
    g = og.Generator(model, gp)
    g.append_tokens(ids)
    onnx_logits = np.asarray(g.get_output("logits"))[0]
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(tiny_hf).eval()
        ref = hf(torch.tensor([ids.tolist()], dtype=torch.long)).logits[0].numpy()
    assert onnx_logits.shape == ref.shape
    assert np.abs(onnx_logits - ref).max() < 1e-4


def test_quantized_perplexity_stays_close_to_fp32(exports, examples):
    ppl = {p: evaluate(d, examples, max_new_tokens=4)[0].perplexity for p, d in exports.items()}
    assert ppl["int8"] <= ppl["fp32"] * 1.02, ppl
    assert ppl["int4"] <= ppl["fp32"] * 1.06, ppl


def test_quantized_exports_are_smaller(exports):
    rows = {r["precision"]: r for r in size_report(exports)}
    assert rows["int4"]["vs_fp32"] < rows["int8"]["vs_fp32"] < 1.0


def test_fp16_is_refused_for_cpu_but_exports_for_gpu_targets(tiny_hf, tmp_path):
    with pytest.raises(ExportError, match="fp16 does not run on the cpu execution provider"):
        ExportOptions("fp16", "cpu")
    for ep in ("cuda", "dml"):
        out = export_onnx(tiny_hf, tmp_path / ep, ExportOptions("fp16", ep), **quiet)
        cfg = json.loads((out / "genai_config.json").read_text())
        providers = cfg["model"]["decoder"]["session_options"]["provider_options"]
        assert any(ep in p for p in providers)
        assert json.loads((out / "export_info.json").read_text())["execution_provider"] == ep


@pytest.mark.parametrize("kwargs,match", [
    (dict(precision="int3"), "unsupported precision 'int3'"),
    (dict(execution_provider="tpu"), "unsupported execution provider 'tpu'"),
    (dict(int4_block_size=48), "block size 48"),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ExportError, match=match):
        ExportOptions(**kwargs)


def _leftovers(parent: pathlib.Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_missing_tokenizer_is_refused_and_nothing_is_written(tiny_hf, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_hf, src)
    (src / "tokenizer.json").unlink()
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    with pytest.raises(ExportError, match="no tokenizer.json"):
        export_onnx(src, out_parent / "m", ExportOptions("int4"), **quiet)
    assert _leftovers(out_parent) == []


def test_unsupported_architecture_is_named_and_nothing_is_left(tiny_hf, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    src = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=256, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_hf / name, src / name)
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    with pytest.raises(ExportError, match="GPT2LMHeadModel .* not supported"):
        export_onnx(src, out_parent / "m", ExportOptions("fp32"), **quiet)
    assert _leftovers(out_parent) == []


def test_existing_output_is_not_overwritten(tiny_hf, exports):
    with pytest.raises(ExportError, match="already exists"):
        export_onnx(tiny_hf, exports["int4"], ExportOptions("int4"), **quiet)


# ---- the gate ----------------------------------------------------------------------------------------
def test_judge_is_pure_and_names_each_failure():
    t = GateThresholds()
    ref = Metrics(perplexity=10.0, accuracy=0.8, greedy_agreement=1.0, examples=10)
    assert judge("int4", ref, Metrics(10.5, 0.8, 0.95, 10), t) == []
    reasons = judge("int8", ref, Metrics(10.5, 0.6, 0.5, 10), t)
    assert len(reasons) == 3 and "perplexity" in reasons[0] and "accuracy" in reasons[1] and "agreement" in reasons[2]
    assert judge("int4", ref, Metrics(float("nan"), 0.8, 1.0, 10), t)
    assert judge("fp32", ref, ref, t) == []


def test_thresholds_come_from_a_recipe_mapping_and_unknown_keys_are_refused():
    t = GateThresholds.from_mapping({"max_ppl_increase": {"int4": 0.1}, "min_greedy_agreement": 0.5})
    assert t.max_ppl_increase == {"int4": 0.1, "int8": 0.02, "fp16": 0.01} and t.min_greedy_agreement == 0.5
    with pytest.raises(ValueError, match="unknown keys: max_ppl"):
        GateThresholds.from_mapping({"max_ppl": 1})
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        GateThresholds(max_accuracy_drop=2)


def _damaged_copy(hf: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(hf, dest)
    model = AutoModelForCausalLM.from_pretrained(hf)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.add_(torch.randn_like(p) * p.std() * 0.5)
    model.save_pretrained(dest)
    return dest


def test_gate_rejects_a_damaged_int4_and_falls_back_to_int8(tiny_hf, tmp_path, examples):
    damaged = _damaged_copy(tiny_hf, tmp_path / "damaged-hf")

    def build(hf, dest, options, log):
        # int4 is built from deliberately damaged weights; everything else from the real model
        return export_onnx(damaged if options.precision == "int4" else hf, dest, options, log=log)

    report = select_precision(tiny_hf, tmp_path / "out", "int4", examples=examples[:10], build=build, **quiet)
    assert report["chosen"] == "int8"
    int4 = [t for t in report["tried"] if t["precision"] == "int4"]
    assert [t["recipe"] for t in int4] == list(DEFAULT_INT4)   # every int4 recipe, in order
    # gguf_exact is skipped with its reason (this folder was not made from a GGUF); the others failed
    assert [t["verdict"] for t in int4] == ["skipped"] + ["failed"] * (len(DEFAULT_INT4) - 1)
    assert all(t["reasons"] for t in int4)
    assert "int4 (rtn) failed" in report["why"] and "int8 is the first" in report["why"]
    verdict = check_publishable(tmp_path / "out")
    assert verdict["precision"] == "int8" and verdict["passed"]
    assert json.loads((tmp_path / "out" / "gate_report.json").read_text())["chosen"] == "int8"
    assert _leftovers(tmp_path) == ["damaged-hf", "out"]  # the failed int4 and the reference are gone


def test_publishing_needs_a_passing_verdict_for_these_very_files(tiny_hf, tmp_path, exports, examples):
    with pytest.raises(GateError, match="no gate.json"):
        check_publishable(exports["int4"])
    select_precision(tiny_hf, tmp_path / "ok", "int4", examples=examples[:4], **quiet)
    check_publishable(tmp_path / "ok")
    failed = tmp_path / "failed"
    shutil.copytree(tmp_path / "ok", failed)
    v = json.loads((failed / "gate.json").read_text())
    (failed / "gate.json").write_text(json.dumps({**v, "passed": False, "reasons": ["perplexity +9%"]}))
    with pytest.raises(GateError, match="failed the quality gate .*perplexity"):
        check_publishable(failed)
    data = tmp_path / "ok" / "model.onnx.data"
    data.write_bytes(bytes(b ^ 0xFF for b in data.read_bytes()[:64]) + data.read_bytes()[64:])
    with pytest.raises(GateError, match="model.onnx.data changed"):
        check_publishable(tmp_path / "ok")


def test_int4_options_reach_the_builder(tiny_hf, tmp_path):
    import onnx

    def q_shape(d):
        g = onnx.load(str(d / "model.onnx"), load_external_data=False).graph
        return next(list(i.dims) for i in g.initializer if i.name == "lm_head.MatMul.weight_Q4")

    b16 = export_onnx(tiny_hf, tmp_path / "b16", ExportOptions("int4", int4_block_size=16), **quiet)
    b64 = export_onnx(tiny_hf, tmp_path / "b64", ExportOptions("int4", int4_block_size=64), **quiet)
    assert q_shape(b16)[1:] == [4, 8] and q_shape(b64)[1:] == [1, 32]  # hidden 64: blocks x bytes per block


def test_gate_for_a_gpu_target_measures_cpu_twins_and_ships_the_target_build(tiny_hf, tmp_path, examples):
    out = tmp_path / "cuda"
    report = select_precision(tiny_hf, out, "fp16", ExportOptions("fp32", "cuda"), examples=examples[:3], **quiet)
    assert report["chosen"] == "fp32" and "fp16 failed (could not be evaluated on the CPU" in report["why"]
    verdict = check_publishable(out)
    assert verdict["evaluated_on"] == "cpu twin"
    assert json.loads((out / "export_info.json").read_text())["execution_provider"] == "cuda"
    report = select_precision(tiny_hf, tmp_path / "cuda-int4", "int4", ExportOptions("fp32", "cuda"),
                              examples=examples[:3], **quiet)
    assert report["chosen"] == "int4"
    cfg = json.loads((tmp_path / "cuda-int4" / "genai_config.json").read_text())
    assert "cuda" in json.dumps(cfg["model"]["decoder"]["session_options"]["provider_options"])
