"""The worker stages export and gate run in-process on a tiny model (no control plane): for a cuda target the
gate measures CPU twins of the builds, as training/quality_gate.select_precision does, ships the target's own
build, and says so in the verdict; fp16 (no CPU twin) cannot pass there."""
from __future__ import annotations

import json
import pathlib

from control_plane.pipelines import stages
from control_plane.pipelines.recipe import parse

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_gate_of_a_cuda_target_measures_cpu_twins_and_records_it(tiny_hf, tmp_path):
    d = {"name": "gpu", "stages": [
        {"train": {"recipe": "training/recipes/lora_tiny.yaml"}},
        {"export": {"precisions": ["fp16", "int4"], "execution_provider": "cuda"}},
        {"gate": {"order": ["fp16", "int4", "fp32"], "max_examples": 2,
                  "thresholds": {"max_new_tokens": 4, "max_ppl_increase": {"int4": 10.0},
                                 "max_accuracy_drop": 1.0, "min_greedy_agreement": 0.0}}}]}
    p = parse(d, ROOT)
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
