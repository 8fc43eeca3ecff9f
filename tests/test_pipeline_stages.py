"""The worker stages export and gate run in-process on a tiny model (no control plane): for a cuda target the
gate measures CPU twins of the builds, as training/quality_gate.select_precision does, ships the target's own
build, and says so in the verdict; fp16 (no CPU twin) cannot pass there."""
from __future__ import annotations

import json
import pathlib
import re

from control_plane.pipelines import stages
from control_plane.pipelines.recipe import parse

ROOT = pathlib.Path(__file__).resolve().parent.parent


def cuda_pipeline(name: str, export: dict, order: list[str]) -> dict:
    """A tiny train -> export (cuda target) -> gate pipeline whose lax thresholds any CPU-measurable build passes."""
    return {"name": name, "stages": [
        {"train": {"recipe": "training/recipes/lora_tiny.yaml"}},
        {"export": {**export, "execution_provider": "cuda"}},
        {"gate": {"order": order, "max_examples": 2,
                  "thresholds": {"max_new_tokens": 4, "max_ppl_increase": {"int4": 10.0},
                                 "max_accuracy_drop": 1.0, "min_greedy_agreement": 0.0}}}]}


def test_gate_of_a_cuda_target_measures_cpu_twins_and_records_it(tiny_hf, tmp_path):
    p = parse(cuda_pipeline("gpu", {"precisions": ["fp16", "int4"]}, ["fp16", "int4", "fp32"]), ROOT)
    export_cfg, gate_cfg = p.stages[1].config, p.stages[2].config
    lines = []
    out, _ = stages.export(export_cfg, {"model_dir": str(tiny_hf)}, tmp_path / "export", lines.append, "")
    assert set(out["variants"]) == {"fp32", "fp16", "int4"} and set(out["cpu_twins"]) == {"fp32", "int4"}
    for p_, twin in out["cpu_twins"].items():
        info = json.loads((pathlib.Path(twin) / "export_info.json").read_text())
        assert info["execution_provider"] == "cpu" and info["precision"] == p_
    got, metrics = stages.gate(gate_cfg, out, tmp_path / "gate", lines.append, "")
    assert got["precision"] == "int4" and got["execution_provider"] == "cuda"
    fp16, int4 = metrics["tried"][:2]
    assert not fp16["passed"] and "no CPU twin" in fp16["reasons"][0] and fp16["metrics"] is None
    assert int4["passed"] and int4["evaluated"] == out["cpu_twins"]["int4"] and int4["evaluated_on"] == "cpu twin"
    assert metrics["evaluated_on"] == "cpu twin"
    bundle = pathlib.Path(got["bundle_dir"])
    verdict = json.loads((bundle / "gate.json").read_text())
    assert verdict["passed"] and verdict["evaluated_on"] == "cpu twin"
    assert json.loads((bundle / "export_info.json").read_text())["execution_provider"] == "cuda", \
        "the target's own build ships, not the twin"


def test_gate_of_a_cpu_target_measures_the_shipped_builds(tiny_hf, tmp_path):
    d = {"name": "cpu", "stages": [
        {"train": {"recipe": "training/recipes/lora_tiny.yaml"}},
        {"export": {"precisions": ["int4"]}},
        {"gate": {"order": ["int4", "fp32"], "max_examples": 2, "thresholds": {"max_new_tokens": 4}}}]}
    p = parse(d, ROOT)
    out, _ = stages.export(p.stages[1].config, {"model_dir": str(tiny_hf)}, tmp_path / "export", print, "")
    assert "cpu_twins" not in out
    got, metrics = stages.gate(p.stages[2].config, out, tmp_path / "gate", print, "")
    assert metrics["evaluated_on"] == "cpu" and all(t["evaluated_on"] == "cpu" for t in metrics["tried"])
    assert metrics["tried"][0]["evaluated"] == out["variants"]["int4"]
    assert json.loads((pathlib.Path(got["bundle_dir"]) / "gate.json").read_text())["evaluated_on"] == "cpu"


# ---- a held-out slice of captured traffic: scored against a reference model's answers, compared, gated ---------
def random_model(like: pathlib.Path, out: pathlib.Path, seed: int) -> pathlib.Path:
    """A model of the same shape with other (random) weights: answers nothing like `like`."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(LlamaConfig.from_pretrained(like)).save_pretrained(out)
    for n in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(like / n, out / n)
    return out


def captured_slice(path: pathlib.Path) -> pathlib.Path:
    """Chat records as `dataset from-captures` writes them: the answer is only what the old version said."""
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "v1 said this"}],
             "provenance": {"device_id": "d", "seq": i}}
            for i, q in enumerate(["Kestrel K2 error code E17?", "How do I reset the filter?", "What is E42?"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluate_scores_against_the_reference_models_answers_compares_and_the_gate_measures_both_sets(
        tiny_hf, tmp_path):
    other = random_model(tiny_hf, tmp_path / "other-hf", seed=3)
    heldout = captured_slice(tmp_path / "heldout.jsonl")
    d = {"name": "loop", "stages": [
        {"train": {"recipe": "training/recipes/lora_tiny.yaml"}},
        {"evaluate": {"heldout": str(heldout), "reference_model": str(tiny_hf), "compare_model": str(other),
                      "min_gain_over_compare": 0.2, "min_rouge_l": 0.5, "max_new_tokens": 8}},
        {"evaluate": {"max_examples": 2, "max_new_tokens": 8}},
        {"export": {"precisions": ["int4"]}},
        {"gate": {"order": ["int4", "fp32"], "max_examples": 2, "sets": "evaluated",
                  "thresholds": {"max_new_tokens": 4, "max_ppl_increase": {"int4": 10.0},
                                 "max_accuracy_drop": 1.0, "min_greedy_agreement": 0.0}}}]}
    p = parse(d, ROOT)
    assert str(tiny_hf / "model.safetensors") in p.stages[1].data_files   # the reference's weights key the stage
    inputs = {"model_dir": str(tiny_hf), "template": "chatml"}
    out, m = stages.evaluate(p.stages[1].config, inputs, tmp_path / "eval-captured", print, "")
    assert m["references"] == f"the answers of {tiny_hf}" and m["examples"] == 3
    scored = [json.loads(ln) for ln in (tmp_path / "eval-captured" / "scored.jsonl").read_text().splitlines()]
    assert all(r["messages"][-1]["content"] != "v1 said this" for r in scored)   # the reference's, not v1's
    assert m["rouge_l"] > 0.9                               # the model scored is the reference model itself
    assert m["compared"]["model"] == str(other) and m["rouge_l_gain"] == m["rouge_l"] - m["compared"]["rouge_l"] > 0.2
    out, _ = stages.evaluate(p.stages[2].config, out, tmp_path / "eval-original", print, "")
    assert list(out["scored_sets"]) == [str(heldout), p.stages[2].config["heldout"]]

    exported, _ = stages.export(p.stages[3].config, out, tmp_path / "export", print, "")
    got, gm = stages.gate(p.stages[4].config, {**out, **exported}, tmp_path / "gate", print, "")
    assert gm["sets"] == list(out["scored_sets"]) and got["precision"] == "int4"
    assert set(gm["tried"][0]["sets"]) == set(out["scored_sets"])
    report = json.loads((tmp_path / "gate" / "gate_report.json").read_text())
    assert set(report["sets"]) == set(out["scored_sets"])


def test_evaluate_refuses_a_model_no_better_than_the_one_it_replaces(tiny_hf, tmp_path):
    from control_plane.pipelines.recipe import PipelineInvalid

    worse = random_model(tiny_hf, tmp_path / "worse-hf", seed=4)
    heldout = captured_slice(tmp_path / "heldout.jsonl")
    d = {"name": "loop", "stages": [
        {"train": {"recipe": "training/recipes/lora_tiny.yaml"}},
        {"evaluate": {"heldout": str(heldout), "reference_model": str(tiny_hf), "compare_model": str(tiny_hf),
                      "min_gain_over_compare": 0.05, "max_new_tokens": 8}}]}
    cfg = parse(d, ROOT).stages[1].config
    import pytest

    with pytest.raises(stages.StageFailed, match=r"ROUGE-L 0\.\d+ against the answers of .* is not 0.05 above the "
                                                 r"compared model's"):
        stages.evaluate(cfg, {"model_dir": str(worse), "template": "chatml"}, tmp_path / "e", print, "")
    bad = {"name": "x", "stages": [
        {"train": {"recipe": "training/recipes/lora_tiny.yaml"}},
        {"evaluate": {"heldout": str(heldout), "reference_model": str(tmp_path / "nope"),
                      "min_gain_over_compare": 0.1}},
        {"export": {}}, {"gate": {"sets": "sometimes"}}]}
    with pytest.raises(PipelineInvalid) as e:
        parse(bad, ROOT)
    text = str(e.value)
    assert "stages[1].evaluate.reference_model: no Hugging Face model at" in text
    assert "stages[1].evaluate.min_gain_over_compare: needs compare_model" in text
    assert "stages[3].gate.sets: 'sometimes' must be original" in text
    with pytest.raises(PipelineInvalid, match="no evaluate stage comes before the gate"):
        parse({"name": "y", "stages": [{"train": {"recipe": "training/recipes/lora_tiny.yaml"}}, {"export": {}},
                                       {"gate": {"sets": "evaluated"}}]}, ROOT)


def test_a_model_that_forgot_the_original_set_is_refused_by_the_no_forgetting_floor(tiny_hf, tmp_path):
    from control_plane.pipelines.recipe import PipelineInvalid

    original = ROOT / "training/data/support_heldout.jsonl"
    forgot = random_model(tiny_hf, tmp_path / "forgot-hf", seed=5)   # v2 that knows nothing v1 knew
    d = {"name": "loop", "stages": [
        {"train": {"recipe": "training/recipes/lora_tiny.yaml"}},
        {"evaluate": {"heldout": str(original), "compare_model": str(tiny_hf), "max_loss_vs_compare": 0.05,
                      "max_examples": 6, "max_new_tokens": 16}}]}
    cfg = parse(d, ROOT).stages[1].config
    assert cfg["max_loss_vs_compare"] == 0.05
    import pytest

    with pytest.raises(stages.StageFailed, match=rf"forgetting on {original}: ROUGE-L (0\.\d+) against the "
                                                 rf"records' answers is 0\.\d+ below the compared model's "
                                                 rf"\({tiny_hf}\) (0\.\d+), more than max_loss_vs_compare 0.05") as e:
        stages.evaluate(cfg, {"model_dir": str(forgot), "template": "chatml"}, tmp_path / "e", print, "")
    mine, theirs = (float(x) for x in re.search(r"ROUGE-L (0\.\d+) .*\) (0\.\d+)", str(e.value)).groups())
    assert theirs - mine > 0.05
    # v1 itself is within the margin of v1: the floor lets a model that kept what it knew through
    _, m = stages.evaluate(cfg, {"model_dir": str(tiny_hf), "template": "chatml"}, tmp_path / "same", print, "")
    assert m["compare_floor"] == {"max_loss_vs_compare": 0.05, "passed": True} and m["rouge_l_gain"] == 0

    def errors(body: dict) -> str:
        with pytest.raises(PipelineInvalid) as e:
            parse({"name": "x", "stages": [{"train": {"recipe": "training/recipes/lora_tiny.yaml"}},
                                           {"evaluate": {"heldout": str(original), **body}}]}, ROOT)
        return str(e.value)
    assert "stages[1].evaluate.max_loss_vs_compare: needs compare_model" in errors({"max_loss_vs_compare": 0.1})
    assert "give one of min_gain_over_compare" in errors({"compare_model": str(tiny_hf), "max_loss_vs_compare": 0.1,
                                                          "min_gain_over_compare": 0.1})
    assert "max_loss_vs_compare: -0.1 must be a number in [0.0, 1.0]" in errors(
        {"compare_model": str(tiny_hf), "max_loss_vs_compare": -0.1})


def test_against_compared_holds_each_set_to_its_one_floor():
    new = {"heldout": "new.jsonl", "compare_model": "v1", "min_gain_over_compare": 0.05}
    old = {"heldout": "old.jsonl", "compare_model": "v1", "max_loss_vs_compare": 0.05}
    assert stages.against_compared(new, 0.80, 0.10, "refs") is None
    assert "on new.jsonl: ROUGE-L 0.120 against refs is not 0.05 above the compared model's (v1) 0.100" in \
        stages.against_compared(new, 0.12, 0.10, "refs")
    assert stages.against_compared(old, 0.37, 0.41, "refs") is None      # 0.04 below: within the margin
    assert stages.against_compared(old, 0.50, 0.41, "refs") is None      # better is fine
    assert stages.against_compared(old, 0.19, 0.41, "refs") == (
        "forgetting on old.jsonl: ROUGE-L 0.190 against refs is 0.220 below the compared model's (v1) 0.410, "
        "more than max_loss_vs_compare 0.05 allows")


# ---- the gate's search over int4 recipes (training/quant_recipes.py), as `slmops export --precision int4` -------
def test_a_pipeline_searches_its_int4_recipes_and_the_report_keeps_every_attempt(tiny_hf, tmp_path):
    # perplexity vs fp32 on 4 held-out examples of the tiny model (tests/test_int4_search.py): rtn +0.68%,
    # k_quant_mixed -0.06%, int8 +0.09%; a +0.4% int4 limit fails rtn and passes k_quant_mixed
    d = {"name": "search", "stages": [
        {"train": {"recipe": "training/recipes/lora_tiny.yaml"}},
        {"export": {"recipes": ["rtn", "k_quant_mixed", "int8"]}},
        {"gate": {"max_examples": 4, "thresholds": {"max_ppl_increase": {"int4": 0.004}}}}]}
    p = parse(d, ROOT)
    assert p.stages[1].config["precisions"] == ["fp32", "int8", "rtn", "k_quant_mixed"]   # fp32: the reference
    assert p.stages[2].config["order"] == ["rtn", "k_quant_mixed", "int8", "fp32"]       # int4 ones first, as given
    out, m = stages.export(p.stages[1].config, {"model_dir": str(tiny_hf)}, tmp_path / "export", print, "")
    assert set(out["variants"]) == {"fp32", "int8", "rtn", "k_quant_mixed"} and m["bytes"]["rtn"] > 0
    got, gm = stages.gate(p.stages[2].config, out, tmp_path / "gate", print, "")
    assert got["precision"] == "int4" and got["recipe"] == "k_quant_mixed" and gm["chosen_recipe"] == "k_quant_mixed"
    report = json.loads((tmp_path / "gate" / "gate_report.json").read_text())
    rtn, kq = report["tried"]          # stopped at the first that passed; int8 was not measured
    assert (rtn["recipe"], rtn["verdict"], kq["recipe"], kq["verdict"]) == ("rtn", "failed", "k_quant_mixed", "passed")
    assert "perplexity" in rtn["reasons"][0] and "(limit +0.4%)" in rtn["reasons"][0] and kq["reasons"] == []
    assert "algo_config=k_quant_mixed" in kq["options"] and not any("algo_config" in o for o in rtn["options"])
    assert all(t["metrics"] and t["bytes"] and t["evaluated"] == out["variants"][t["recipe"]] for t in (rtn, kq))
    assert report["order"] == p.stages[2].config["order"] and report["chosen_recipe"] == "k_quant_mixed"
    assert "int4 (rtn) failed" in report["why"] and "int4 (k_quant_mixed) is the first" in report["why"]
    verdict = json.loads((pathlib.Path(got["bundle_dir"]) / "gate.json").read_text())
    assert verdict["passed"] and verdict["recipe"] == "k_quant_mixed" and verdict["precision"] == "int4"


def test_a_cuda_targets_recipe_is_measured_on_a_cpu_twin_of_the_same_recipe(tiny_hf, tmp_path):
    p = parse(cuda_pipeline("gpu-search", {"recipes": ["rtn_mixed", "fp16"]}, ["fp16", "rtn_mixed", "fp32"]), ROOT)
    out, _ = stages.export(p.stages[1].config, {"model_dir": str(tiny_hf)}, tmp_path / "export", print, "")
    assert set(out["cpu_twins"]) == {"fp32", "rtn_mixed"}
    target, twin = (json.loads((pathlib.Path(x["rtn_mixed"]) / "export_info.json").read_text())
                    for x in (out["variants"], out["cpu_twins"]))
    assert (target["execution_provider"], twin["execution_provider"]) == ("cuda", "cpu")
    assert twin["builder_options"] == target["builder_options"] and any(
        "matmul_mixed_precision" in o for o in twin["builder_options"])   # the same quantization, CPU graph
    got, gm = stages.gate(p.stages[2].config, out, tmp_path / "gate", print, "")
    fp16, mixed = gm["tried"]
    assert "no CPU twin" in fp16["reasons"][0] and fp16["verdict"] == "error"
    assert mixed["recipe"] == "rtn_mixed" and mixed["evaluated"] == out["cpu_twins"]["rtn_mixed"]
    assert got["recipe"] == "rtn_mixed" and got["execution_provider"] == "cuda"
    bundle = pathlib.Path(got["bundle_dir"])
    assert json.loads((bundle / "export_info.json").read_text())["execution_provider"] == "cuda"
    assert json.loads((bundle / "gate.json").read_text())["evaluated_on"] == "cpu twin"


def test_the_export_stage_rechecks_its_recipes_against_the_trained_model_before_any_build(tmp_path):
    import pytest

    tied = tmp_path / "model"   # what a train stage left: a model that ties embedding and head (as SmolLM2 does)
    tied.mkdir()
    (tied / "config.json").write_text('{"model_type": "llama", "tie_word_embeddings": true}')
    cfg = {"precisions": ["fp32", "rtn"], "execution_provider": "cpu", "options": {"int4_symmetric": False}}
    with pytest.raises(stages.StageFailed, match=rf"int4 recipe 'rtn' cannot be built as asked: asymmetric .* "
                                                 rf"\(for {tied}, which ties its embedding and head\)"):
        stages.export(cfg, {"model_dir": str(tied)}, tmp_path / "export", print, "")
    assert not (tmp_path / "export").exists()


def test_a_recipe_the_trained_model_rules_out_is_skipped_not_built_and_the_gate_says_why(tiny_hf, tmp_path):
    # gguf_exact needs a folder gguf_to_hf made whose weights are still the GGUF's; a trained model is neither
    d = {"name": "exact", "stages": [
        {"train": {"recipe": "training/recipes/lora_tiny.yaml"}},
        {"export": {"recipes": ["gguf_exact", "int8"]}},
        {"gate": {"max_examples": 2, "thresholds": {"max_new_tokens": 4}}}]}
    p = parse(d, ROOT)
    assert p.stages[2].config["order"] == ["gguf_exact", "int8", "fp32"]
    lines = []
    out, m = stages.export(p.stages[1].config, {"model_dir": str(tiny_hf)}, tmp_path / "export", lines.append, "")
    assert set(out["variants"]) == {"fp32", "int8"} and "gguf_exact" not in m["bytes"]
    assert "gguf_source.json" in out["skipped"]["gguf_exact"] and not (tmp_path / "export" / "gguf_exact").exists()
    assert any(line.startswith("export: gguf_exact skipped: gguf_exact needs a GGUF source") for line in lines)
    got, gm = stages.gate(p.stages[2].config, out, tmp_path / "gate", print, "")
    exact, int8 = gm["tried"]
    assert (exact["verdict"], exact["reasons"], exact["metrics"]) == ("skipped", [out["skipped"]["gguf_exact"]], None)
    assert int8["recipe"] == "int8" and int8["passed"] and got["recipe"] == "int8"
    report = json.loads((tmp_path / "gate" / "gate_report.json").read_text())
    assert "skipped: int4 (gguf_exact)" in report["why"], report["why"]
