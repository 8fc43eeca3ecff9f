"""The quality gate's search over int4 recipes (training/quant_recipes.py): tried in order, each attempt recorded,
the first that passes shipped, a bad or unbuildable recipe refused before any build, the search bounded, and
every recipe's export loads and decodes in onnxruntime-genai."""
from __future__ import annotations

import json

import pytest

from training.export import ExportError, ExportOptions, export_onnx
from training.quality_gate import GateError, GateThresholds, check_publishable, load_examples, select_precision
from training.quant_recipes import DEFAULT_INT4, RECIPES, check, plan

quiet = dict(log=lambda m: None)
# Measured on the tiny model, 4 held-out examples: perplexity vs fp32 rtn +0.68%, rtn_mixed +1.05%,
# k_quant_mixed -0.06%, int8 +0.09%. A +0.4% int4 limit fails the first two and passes the third.
PICKY = GateThresholds(max_ppl_increase={"int4": 0.004, "int8": 0.02, "fp16": 0.01})


@pytest.fixture(scope="module")
def examples():
    return load_examples(limit=4)


def test_plan_expands_int4_into_its_recipes_then_the_fallbacks_and_is_bounded():
    # a caller that has not looked at the source (no `skip`) gets no gguf_exact; cpu runs no fp16
    assert [r.name for r in plan("int4", "cpu")] == ["rtn", "rtn_mixed", "hqq_mixed", "int8", "fp32"]
    assert [r.name for r in plan("int4", "cpu", skip={})] == [*DEFAULT_INT4, "int8", "fp32"]
    # a recipe the source rules out stays in the order (the search records why) and takes no attempt
    assert [r.name for r in plan("int4", "cpu", max_attempts=2, skip={"gguf_exact": "no GGUF"})] == [
        "gguf_exact", "rtn", "rtn_mixed"]
    assert [r.name for r in plan("int4", "cuda", ("k_quant_mixed",))] == ["k_quant_mixed", "int8", "fp16", "fp32"]
    assert [r.name for r in plan("int8", "cpu")] == ["int8", "fp32"]
    assert [r.name for r in plan("int4", "cuda", skip={})] == ["rtn", "rtn_mixed", "int8", "fp16", "fp32"]   # cpu only
    assert [r.name for r in plan("int4", "cpu", max_attempts=2)] == ["rtn", "rtn_mixed"]
    with pytest.raises(ExportError, match="unknown int4 recipe 'bogus'"):
        plan("int4", "cpu", ("rtn", "bogus"))
    with pytest.raises(ExportError, match="int8 is not an int4 recipe"):
        plan("int4", "cpu", ("int8",))
    with pytest.raises(ExportError, match="max attempts 0"):
        plan("int4", "cpu", max_attempts=0)


@pytest.mark.parametrize("opts, tied, match", [
    (ExportOptions("int4", int4_algo="k_quant", extra={"op_types_to_quantize": "MatMul/Gather"}), False,
     "k-quant path leaves the embedding"),
    (ExportOptions("int4", int4_algo="k_quant_last", extra={"shared_embeddings": "true"}), False,
     "shared embedding needs the head at int4"),
    (ExportOptions("int4", int4_symmetric=False), True, "asymmetric int4 with a shared embedding"),
    (ExportOptions("int4", extra={"matmul_mixed_precision": "gather:int8"}), False, "int8 embedding"),
    (ExportOptions("int4", int4_algo="hqq", extra={"op_types_to_quantize": "MatMul/Gather"}), False,
     "hqq quantizes the MatMuls only"),
])
def test_a_setting_the_builder_cannot_honour_is_named(opts, tied, match):
    with pytest.raises(ExportError, match=f"int4 recipe 'mine' cannot be built as asked: .*{match}"):
        check("mine", opts, tied)
    check("mine", ExportOptions("int4", int4_symmetric=False), tied=False)   # fine when nothing is shared
    check("hqq", RECIPES["hqq"].options(ExportOptions("fp32", int4_symmetric=False)), tied=True)   # never shared
    with pytest.raises(ExportError, match="hqq is built and measured for the cpu target only"):
        ExportOptions("int4", "cuda", int4_algo="hqq")


def test_a_bad_recipe_is_refused_before_anything_is_built(tiny_hf, tmp_path, examples):
    built = []

    def build(hf, dest, options, log):
        built.append(options.precision)
        return export_onnx(hf, dest, options, log=log)

    with pytest.raises(ExportError, match="unknown int4 recipe 'bogus'"):
        select_precision(tiny_hf, tmp_path / "a", int4_recipes=("rtn", "bogus"), examples=examples, build=build,
                         **quiet)
    unbuildable = ExportOptions("fp32", int4_algo="k_quant_last", extra={"shared_embeddings": "true"})
    with pytest.raises(ExportError, match="int4 recipe 'options' cannot be built"):
        select_precision(tiny_hf, tmp_path / "b", options=unbuildable, int4_recipes=("options",),
                         examples=examples, build=build, **quiet)
    assert built == [] and sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_later_recipe_ships_when_the_first_fails_and_every_attempt_is_recorded(tiny_hf, tmp_path, examples):
    out = tmp_path / "out"
    report = select_precision(tiny_hf, out, "int4", thresholds=PICKY, examples=examples,
                              int4_recipes=("rtn", "rtn_mixed", "k_quant_mixed"), **quiet)
    tried = report["tried"]
    assert [t["recipe"] for t in tried] == ["rtn", "rtn_mixed", "k_quant_mixed"]   # stopped at the first pass
    assert [t["verdict"] for t in tried] == ["failed", "failed", "passed"]
    assert all("perplexity" in t["reasons"][0] and "(limit +0.4%)" in t["reasons"][0] for t in tried[:2])
    assert all(t["bytes"] and t["metrics"] and t["options"] for t in tried)
    assert report["chosen"] == "int4" and report["chosen_recipe"] == "k_quant_mixed"
    assert "int4 (rtn) failed" in report["why"] and "int4 (k_quant_mixed) is the first" in report["why"]
    verdict = check_publishable(out)
    assert verdict["recipe"] == "k_quant_mixed" and verdict["precision"] == "int4"
    assert json.loads((out / "gate_report.json").read_text()) == report
    assert "algo_config=k_quant_mixed" in json.loads((out / "export_info.json").read_text())["builder_options"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # the failed variants and the reference are gone


def test_the_search_stops_at_its_bound(tiny_hf, tmp_path, examples):
    with pytest.raises(GateError, match="nothing passed the quality gate in 2 attempts: int4 \\(rtn\\) failed"):
        select_precision(tiny_hf, tmp_path / "out", thresholds=PICKY, examples=examples, max_attempts=2, **quiet)
    assert list(tmp_path.iterdir()) == []


# gguf_exact needs a folder made from a GGUF: tests/test_gguf_import.py exports it from a tiny one
@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if r.precision == "int4" and n != "gguf_exact"])
def test_each_recipe_exports_a_model_that_loads_and_decodes(tiny_hf, tmp_path, name):
    import numpy as np
    import onnx
    import onnxruntime_genai as og

    d = export_onnx(tiny_hf, tmp_path / name, RECIPES[name].options(ExportOptions("fp32")), **quiet)
    g = onnx.load(str(d / "model.onnx"), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    head = {"rtn": "lm_head.MatMul.weight_Q4", "options": "lm_head.MatMul.weight_Q4",
            "rtn_mixed": "lm_head.MatMul.weight_Q8", "k_quant_mixed": "lm_head.MatMul.weight_Q8G32",
            "hqq": "lm_head.MatMul.weight_Q4", "hqq_mixed": "lm_head.MatMul.weight_Q8"}[name]
    assert head in inits   # the head at the bit width the recipe asks for
    if name.startswith("hqq"):   # HQQ's float zero points became uint8 0 + a min term (training/min_term.py),
        by_name = {i.name: i for i in g.initializer}   # and the fast CPU kernel is asked for
        nbits = [n for n in g.node if n.op_type == "MatMulNBits"]
        assert nbits and all(by_name[n.input[3]].data_type == onnx.TensorProto.UINT8 for n in nbits if len(n.input) > 3)
        assert all(a.i == 4 for n in nbits for a in n.attribute if a.name == "accuracy_level")
        four = [n for n in nbits if {a.name: a.i for a in n.attribute}["bits"] == 4]
        mins = [n for n in g.node if n.op_type == "MatMul" and n.name.endswith("Min")]
        assert four and len(mins) == len(four)   # one min term per 4-bit MatMul
        assert all(n.name.endswith("Min") for n in g.node if n.op_type == "MatMul")   # every MatMul quantized
    # a quantized embedding: rtn_mixed's int4 (the builder), the hqq ones' 8-bit blocks (training/q8_embedding.py)
    assert ("GatherBlockQuantized" in {n.op_type for n in g.node}) == (name in ("rtn_mixed", "hqq", "hqq_mixed"))
    model = og.Model(str(d))
    gp = og.GeneratorParams(model)
    gp.set_search_options(max_length=12, do_sample=False)
    gen = og.Generator(model, gp)
    gen.append_tokens(np.array(og.Tokenizer(model).encode("hello"), dtype=np.int32))
    steps = 0
    while not gen.is_done() and steps < 4:
        gen.generate_next_token()
        steps += 1
    assert steps >= 1 and np.isfinite(np.asarray(gen.get_output("logits"))).all()
