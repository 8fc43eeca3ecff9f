"""Pipeline recipes and the runner's pure decisions: every error listed with its location, stage keys that change
only with their inputs, the job state table, the CLI's rollout override. No processes, no training."""
from __future__ import annotations

import pathlib

import pytest
import yaml

from control_plane.pipelines import plan
from cli.pipeline import with_rollout
from control_plane.pipelines.recipe import PipelineInvalid, loads, parse

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "training" / "recipes" / "pipeline_tiny.yaml"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def errors_of(d: dict, base=ROOT) -> list[str]:
    with pytest.raises(PipelineInvalid) as e:
        parse(d, base)
    return e.value.errors


def test_the_shipped_example_is_valid_and_starts_with_its_command():
    text = EXAMPLE.read_text()
    assert text.startswith("# slmops pipeline submit training/recipes/pipeline_tiny.yaml")
    p = loads(text, ROOT)
    assert [s.kind for s in p.stages] == ["train", "evaluate", "export", "gate", "publish", "rollout"]
    assert p.stage("export").config["precisions"] == ["fp32", "int4"]   # fp32 added: the gate's reference
    assert p.stage("train").data_files == (str(ROOT / "training/data/support_train.jsonl"),)


def test_every_error_is_listed_with_its_location(tmp_path):
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_text('{"input": "q"}\nnot json\n')
    d = {"name": "", "owner": "me", "stages": [
        {"train": {"recipe": {"method": "search", "base": "tiny", "data": {"train": str(bad_data)}},
                   "executor": {"kind": "ray", "nproc_per_node": 0}, "resources": {"memory_mb": -1}}},
        {"export": {"precisions": ["int3", "fp16"], "int4_block_size": 7}},
        {"gate": {"order": ["int8"], "thresholds": {"max_accuracy_drop": 2, "bogus": 1}}},
        {"publish": {"name": "a b", "version": "{when}"}},
        {"rollout": {"strategy": "waves", "selector": {}, "waves": [{"percent": 50}, {"percent": 10}],
                     "gate": {"max_error_rate": -1}}},
        {"evaluate": {}},
        {"deploy": {}},
        "train"]}
    errs = errors_of(d)
    expected = [
        "owner: unknown key",
        "name: '' must be a non-empty string",
        "stages[0].train.recipe.method: method 'search' does not leave one model",
        "stages[0].train.recipe.data.train: 2 bad record(s)",
        "stages[0].train.resources.memory_mb: -1 must be an integer",
        "stages[0].train.executor.kind: 'ray' is not one of local, torchrun",
        "stages[0].train.executor.nproc_per_node: 0 must be an integer",
        "stages[1].export.precisions[0]: 'int3' is not one of",
        "stages[1].export.precisions[1]:",
        "stages[2].gate.order[0]: 'int8' is not exported",
        "stages[2].gate.thresholds.bogus: unknown key",
        "stages[2].gate.thresholds: max_accuracy_drop=2",
        "stages[3].publish.name: 'a b' must be",
        "stages[3].publish.version: '{when}': only {hash} and {job}",
        "stages[4].rollout.selector: is empty",
        "stages[4].rollout.gate.max_error_rate: -1 must be a number >= 0",
        "stages[5].evaluate: comes after rollout",
        "stages[6]: unknown stage kind 'deploy'",
        "stages[7]: must be a mapping with exactly one key",
    ]
    for want in expected:
        assert any(e.startswith(want) for e in errs), (want, errs)
    assert len(errs) >= len(expected)


def test_missing_files_and_missing_stages_before_are_named():
    errs = errors_of({"name": "x", "stages": [{"train": {"recipe": "no/such.yaml"}}, {"gate": {}},
                                              {"rollout": {"selector": {"all_devices": True}}}]})
    assert f"stages[0].train.recipe: no file at {ROOT / 'no/such.yaml'}" in errs
    assert "stages[1].gate: needs a export stage before it" in errs
    assert "stages[2].rollout: needs a publish stage before it" in errs


def test_the_fleets_own_rollout_checks_apply_before_anything_runs():
    d = example()
    d["stages"][-1]["rollout"] = {"strategy": "waves", "selector": {"labels": {"site": "berlin"}},
                                  "waves": [{"percent": 50}, {"percent": 10}]}
    errs = errors_of(d)
    assert errs == ["stages[5].rollout: wave percentages must grow: [50.0, 10.0, 100]"] or \
        any(e.startswith("stages[5].rollout: wave percentages must grow") for e in errs), errs


def test_stage_keys_change_with_settings_and_data_and_chain_forward():
    p = loads(EXAMPLE.read_text(), ROOT)
    files = {f: "a" for s in p.stages for f in s.data_files}
    keys = plan.stage_keys(p, files.__getitem__, "pl_1")
    assert keys == plan.stage_keys(p, files.__getitem__, "pl_1")
    other_job = plan.stage_keys(p, files.__getitem__, "pl_2")
    assert other_job[:-1] == keys[:-1] and other_job[-1] != keys[-1], "only the rollout is per job"
    new_data = plan.stage_keys(p, lambda f: "b" if f.endswith("support_heldout.jsonl") else "a", "pl_1")
    assert new_data[0] == keys[0] and all(a != b for a, b in zip(new_data[1:], keys[1:])), \
        "a new held-out file re-runs evaluate and everything after it, not train"
    d = example()
    d["stages"][2]["export"]["int4_block_size"] = 64
    changed = plan.stage_keys(parse(d, ROOT), files.__getitem__, "pl_1")
    assert changed[:2] == keys[:2] and changed[2] != keys[2]


def test_job_state_table():
    assert plan.next_status(plan.QUEUED, plan.START) == plan.RUNNING
    assert plan.next_status(plan.QUEUED, plan.CANCEL) == plan.CANCELLED
    assert plan.next_status(plan.RUNNING, plan.CANCEL) == plan.CANCELLING
    assert plan.next_status(plan.CANCELLING, plan.STOPPED) == plan.CANCELLED
    for done in plan.TERMINAL:
        with pytest.raises(plan.TransitionRefused):
            plan.next_status(done, plan.CANCEL)
    assert plan.on_restart(plan.RUNNING, 0) == plan.QUEUED
    assert plan.on_restart(plan.RUNNING, plan.MAX_RESUMES) == plan.FAILED
    assert plan.on_restart(plan.CANCELLING, 0) == plan.CANCELLED


def test_exit_reasons_name_the_cause():
    assert "SIGKILL" in plan.exit_reason(-9, 0) and "out of memory" in plan.exit_reason(-9, 0)
    assert plan.exit_reason(1, 300) == "the worker exited with status 1 (memory limit 300 MB)"
    assert plan.version_for("v-{hash}", "abcdef0123456789", "pl_9") == "v-abcdef0123"


def test_cli_rollout_option_replaces_the_recipes_rollout_stage():
    d = with_rollout(example(), "canary", {"site": "berlin"}, False, "10%", "", 30)
    assert [next(iter(s)) for s in d["stages"]][-1] == "rollout" and sum("rollout" in s for s in d["stages"]) == 1
    r = d["stages"][-1]["rollout"]
    assert r == {"strategy": "canary", "selector": {"labels": {"site": "berlin"}, "all_devices": False},
                 "canary": {"percent": 10.0}, "gate": {"min_soak_seconds": 30}}
    parse(d, ROOT)   # still a valid recipe


# ---- chained train stages ------------------------------------------------------------------------------------
def chain(*trains: dict, after=("export", "gate", "publish")) -> dict:
    d = example()
    rest = [s for s in d["stages"] if next(iter(s)) in after]
    return {"name": "chain", "stages": [{"train": t} for t in trains] + rest}


FULL = {"recipe": "training/recipes/full_tiny_text_template.yaml", "set": ["train.max_steps=2"]}
DISTILL = {"recipe": "training/recipes/distill_tiny.yaml", "set": ["train.max_steps=2", "distill.keep_layers=1"]}
LORA = {"recipe": "training/recipes/lora_tiny.yaml", "set": ["train.max_steps=2"]}


def test_train_stages_chain_each_later_one_starting_from_the_model_before():
    d = chain(FULL, DISTILL, LORA)
    d["stages"].insert(2, {"evaluate": {"max_examples": 2}})   # evaluate may sit anywhere in the chain
    p = parse(d, ROOT)
    assert [s.kind for s in p.stages] == ["train", "train", "evaluate", "train", "export", "gate", "publish"]
    first, distill, lora = (s for s in p.stages if s.kind == "train")
    assert "base" not in first.config and first.config["recipe"]["base"]["source"] == "tiny"
    for s in (distill, lora):
        assert s.config["base"] == "previous" and "base" not in s.config["recipe"]
        assert s.config["recipe_base_replaced"]["source"] == "tiny"   # named, so the replacement is visible
    files = {f: "a" for s in p.stages for f in s.data_files}
    keys = plan.stage_keys(p, files.__getitem__, "pl_1")
    d2 = chain({**FULL, "set": ["train.max_steps=3"]}, DISTILL, LORA)
    d2["stages"].insert(2, {"evaluate": {"max_examples": 2}})
    keys2 = plan.stage_keys(parse(d2, ROOT), files.__getitem__, "pl_1")
    assert all(a != b for a, b in zip(keys, keys2)), "a changed first stage re-runs the whole chain after it"
    d3 = chain(FULL, DISTILL, {**LORA, "set": ["train.max_steps=3"]})
    d3["stages"].insert(2, {"evaluate": {"max_examples": 2}})
    keys3 = plan.stage_keys(parse(d3, ROOT), files.__getitem__, "pl_1")
    assert keys3[:3] == keys[:3] and keys3[3] != keys[3], "only the changed stage and what follows re-run"


def test_a_chain_is_checked_whole_before_anything_runs():
    d = chain(FULL, {"recipe": "training/recipes/search_tiny.yaml"},
              {"recipe": "training/recipes/lora_tiny.yaml", "set": ["lora.rank=0"]},
              {"recipe": "no/such.yaml"})
    d["stages"].append({"train": FULL})
    d["stages"].append({"evaluate": {}})
    d["stages"].insert(1, {"export": {}})
    errs = errors_of(d)
    for want in ("stages[2].train: comes after export",
                 "stages[2].train.recipe.method: method 'search' does not leave one model",
                 "stages[3].train.recipe: ",
                 f"stages[4].train.recipe: no file at {ROOT / 'no/such.yaml'}",
                 "stages[5].export: a second export stage; only train and evaluate stages may repeat",
                 "stages[8].train: comes after publish"):
        assert any(e.startswith(want) for e in errs), (want, errs)


def test_the_gate_of_a_gpu_target_needs_a_precision_with_a_cpu_twin():
    d = example()
    d["stages"][2]["export"] = {"precisions": ["fp16"], "execution_provider": "cuda"}
    d["stages"][3]["gate"] = {"order": ["fp16"]}
    errs = errors_of(d)
    assert any(e.startswith("stages[3].gate.order: none of ['fp16'] can pass") for e in errs), errs
    d["stages"][3]["gate"] = {"order": ["fp16", "fp32"]}
    p = parse(d, ROOT)
    assert p.stage("export").config["cpu_twins"] is True


def test_the_shipped_chain_example_is_valid():
    text = (ROOT / "training" / "recipes" / "pipeline_chain_tiny.yaml").read_text()
    assert text.startswith("# slmops pipeline submit training/recipes/pipeline_chain_tiny.yaml")
    p = loads(text, ROOT)
    kinds = [s.kind for s in p.stages]
    assert kinds.count("train") == 3 and kinds[-1] in ("publish", "rollout")
    assert [s.config["method"] for s in p.stages if s.kind == "train"] == ["full", "distill", "lora"]


def test_the_export_stage_names_int4_recipes_and_defaults_to_the_gates_search():
    d = example()
    d["stages"][2]["export"] = {"execution_provider": "cpu"}      # no list: the search of `slmops export`
    d["stages"][3]["gate"] = {}
    p = parse(d, ROOT)
    assert p.stage("export").config["precisions"] == ["fp32", "int8", "rtn", "rtn_mixed", "hqq_mixed"]
    assert p.stage("gate").config["order"] == ["rtn", "rtn_mixed", "hqq_mixed", "int8", "fp32"]
    d["stages"][2]["export"] = {"execution_provider": "cuda"}     # hqq is built for the cpu target only
    assert parse(d, ROOT).stage("gate").config["order"] == ["rtn", "rtn_mixed", "int8", "fp16", "fp32"]
    d["stages"][2]["export"] = {"int4_algo": "k_quant_mixed"}     # the stage's own int4 setting: recipe options
    assert parse(d, ROOT).stage("gate").config["order"] == ["options", "int8", "fp32"]
    d["stages"][2]["export"] = {"precisions": ["int8", "int4"]}   # the older spelling: int4 as the options say
    p = parse(d, ROOT)
    assert p.stage("export").config == {"precisions": ["fp32", "int8", "int4"], "execution_provider": "cpu",
                                        "options": {}}
    assert p.stage("gate").config["order"] == ["int4", "int8", "fp32"]


def test_an_unknown_or_unbuildable_recipe_is_refused_before_anything_runs(tmp_path):
    d = example()
    d["stages"][2]["export"] = {"recipes": ["rtn", "bogus", "rtn", "hqq_mixed"], "execution_provider": "cuda"}
    d["stages"][3]["gate"] = {"order": ["rtn", "k_quant_mixed"]}
    errs = errors_of(d)
    for want in ("stages[2].export.recipes[1]: 'bogus' is not one of fp32, fp16, int8, int4 or the int4 recipes rtn",
                 "stages[2].export.recipes[2]: 'rtn' is listed twice",
                 "stages[2].export.recipes[3]: int4 algorithm hqq_mixed is built and measured for the cpu target",
                 "stages[3].gate.order[1]: 'k_quant_mixed' is not exported by the export stage (fp32, rtn)"):
        assert any(e.startswith(want) for e in errs), (want, errs)
    # asymmetric int4 on a model that ties embedding and head: the builder shares them at int4, and that graph
    # fails to load; int8 in the head (rtn_mixed) unshares them, hqq never shares
    tied = tmp_path / "tied"
    tied.mkdir()
    (tied / "config.json").write_text('{"model_type": "llama", "tie_word_embeddings": true}')
    d = example()
    d["stages"][0]["train"]["set"] += ["base.source=hf", f"base.path={tied}"]
    d["stages"][2]["export"] = {"recipes": ["rtn", "rtn_mixed", "hqq", "int8"], "int4_symmetric": False}
    d["stages"][3]["gate"] = {}
    errs = errors_of(d)
    assert [e for e in errs if e.startswith("stages[2]")] == [
        "stages[2].export.recipes[0]: int4 recipe 'rtn' cannot be built as asked: asymmetric int4 with a shared "
        "embedding builds a graph that fails to load (uint8 Reshape) (the trained model ties its embedding and head)"]
    d["stages"][0]["train"]["set"][-1] = "base.source=tiny"   # training/tiny.py: not tied, so rtn builds
    d["stages"][0]["train"]["set"].pop(-2)
    assert parse(d, ROOT).stage("export").config["precisions"] == ["fp32", "int8", "rtn", "rtn_mixed", "hqq"]
    d["stages"][2]["export"] = {"recipes": ["rtn"], "precisions": ["int4"]}
    assert "stages[2].export.recipes: give recipes or precisions (its older name), not both" in errors_of(d)


def test_the_recipe_in_docs_pipelines_is_valid_as_written():
    import re

    text = (ROOT / "docs" / "PIPELINES.md").read_text()
    block = next(b for b in re.findall(r"^```yaml\n(.*?)^```", text, flags=re.S | re.M)
                 if b.startswith("# slmops pipeline submit training/recipes/pipeline_tiny.yaml"))
    p = loads(block, ROOT)
    assert p.stage("export").config["precisions"] == ["fp32", "int8", "rtn", "rtn_mixed", "hqq_mixed"]
    assert p.stage("export").config["options"] == {"int4_block_size": 32}
    assert p.stage("gate").config["order"] == ["rtn", "rtn_mixed", "hqq_mixed", "int8", "fp32"]
    assert [s.kind for s in p.stages] == ["train", "evaluate", "export", "gate", "publish", "rollout"]
