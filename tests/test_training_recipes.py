"""Recipes: parsing and validation before training, shipped examples, and whole runs through `slmops train` on
tiny models (output folder, lineage, eval report)."""
import json
import pathlib

import pytest
import yaml
from typer.testing import CliRunner

from slmops.errors import ConfigError
from training import recipe as rcp
from training.loader import ModelSpec
from training.model_sources import ModelSourceError

ROOT = pathlib.Path(__file__).resolve().parents[1]
# training recipes (other tools keep their own files in this folder too)
RECIPES = sorted(p for p in (ROOT / "training" / "recipes").glob("*.yaml") if "\nmethod:" in p.read_text())
TINY = {"source": "tiny", "tiny": {"hidden": 64, "layers": 2, "steps": 5}}


def base_recipe(tmp_path, **over):
    d = {"method": "lora", "base": TINY, "data": {"train": str(ROOT / "training/data/support_train.jsonl")},
         "train": {"max_steps": 2, "batch_size": 8}, "output": str(tmp_path / "out"),
         "cache_dir": str(tmp_path / "cache")}
    d.update(over)
    return d


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_start_with_their_command_and_parse(path):
    first = path.read_text().splitlines()[0]
    assert first == f"# slmops train training/recipes/{path.name}"
    r = rcp.load(path)
    assert r.method in rcp.METHODS and r.text.startswith("# slmops train")


@pytest.mark.parametrize("over, words", [
    ({"method": "prune"}, "unknown method"),
    ({"epochz": 3}, "unknown recipe key"),
    ({"train": {"lr": 1e-3}}, "epochs or max_steps"),
    ({"train": {"max_steps": 2, "learning_rate": 1}}, "unknown train field"),
    ({"lora": {"rank": 8, "targets": ["q_proj"]}}, "unknown lora field"),
    ({"data": {"train": "x.jsonl", "template": "Q: {input}"}}, "two placeholders"),
    ({"data": {"train": "x.jsonl", "val_fraction": 0.9}}, "val_fraction"),
    ({"method": "distill"}, "distill section"),
    ({"method": "full", "adapters": [{"name": "a", "data": {"train": "x"}}]}, "adapters are LoRA"),
])
def test_bad_recipes_fail_on_reading(tmp_path, over, words):
    with pytest.raises(ConfigError, match=words):
        rcp.from_dict(base_recipe(tmp_path, **over))


def test_overrides_and_missing_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("# slmops train r.yaml\n" + yaml.safe_dump(base_recipe(tmp_path)))
    r = rcp.load(p, ["train.max_steps=7", "lora.rank=4"], output=str(tmp_path / "o2"))
    assert r.train.max_steps == 7 and r.lora.rank == 4 and r.output == str(tmp_path / "o2")
    assert "override: train.max_steps=7" in r.text
    with pytest.raises(ConfigError, match="no recipe"):
        rcp.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("method: [lora\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        rcp.load(tmp_path / "bad.yaml")


def test_exponent_numbers_are_numbers_in_recipes_and_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    text = yaml.safe_dump(base_recipe(tmp_path)).replace("train:\n", "train:\n  lr: 7e-4\n")
    assert "lr: 7e-4" in text and yaml.safe_load(text)["train"]["lr"] == "7e-4"   # PyYAML alone: a string
    p.write_text("# slmops train r.yaml\n" + text)
    assert rcp.load(p).train.lr == 7e-4
    r = rcp.load(p, ["train.lr=3e-3", "train.max_steps=1E1", "data.val_fraction=.25"])
    assert (r.train.lr, r.train.max_steps, r.data.val_fraction) == (3e-3, 10.0, 0.25)
    assert rcp.load(p, ["output=1e3x"]).output == "1e3x"         # not a number: stays text


def test_toml_recipes_work_too(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('# slmops train r.toml\nmethod = "full"\nbase = "tiny"\noutput = "o"\n'
                 '[data]\ntrain = "t.jsonl"\n[train]\nmax_steps = 3\n')
    r = rcp.load(p)
    assert r.method == "full" and r.train.max_steps == 3 and r.base == ModelSpec(source="tiny")


def test_model_source_errors(tmp_path):
    from training.loader import load_model

    with pytest.raises(ModelSourceError, match="no model folder"):
        load_model({"source": "hf", "path": str(tmp_path / "missing")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelSourceError, match="'bert' is not supported"):
        load_model(str(tmp_path / "bert"))
    with pytest.raises(ModelSourceError, match="no GGUF file"):
        load_model(str(tmp_path / "x.gguf"), tmp_path)
    with pytest.raises(ModelSourceError, match="unknown model source"):
        ModelSpec(source="hub")
    with pytest.raises(ModelSourceError, match="bad tiny config"):
        load_model({"source": "tiny", "tiny": {"hidden": 50}}, tmp_path)


def run_cli(*args):
    from cli.main import app

    r = CliRunner().invoke(app, ["train", *args])
    return r


def write_recipe(tmp_path, d) -> pathlib.Path:
    p = tmp_path / "recipe.yaml"
    p.write_text("# slmops train recipe.yaml\n" + yaml.safe_dump(d))
    return p


def test_lora_recipe_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # relative data paths in recipes are relative to the working directory
    r = run_cli(str(ROOT / "training/recipes/lora_tiny.yaml"), "--output", str(tmp_path / "out"), "--no-progress",
                "--set", "train.max_steps=6", "--set", f"cache_dir={tmp_path / 'cache'}",
                "--set", "eval.latency_prompts=1")
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    for folder in (out, out / "model", out / "adapters" / "default"):
        lin = json.loads((folder / "lineage.json").read_text())
        assert lin["method"] == "lora" and lin["base"].startswith("tiny:")
        assert lin["data"][0]["sha256"] and lin["recipe"]["text"].startswith("# slmops train")
        assert "eval" in lin["metrics"]
    report = json.loads((out / "eval_report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["base", "tuned"]
    assert report["comparisons"][0]["reference"] == "base"
    assert "held-out evaluation" in (out / "eval_report.txt").read_text()
    assert (out / "model" / "config.json").exists() and (out / "train" / "default" / "loss_log.jsonl").exists()


def test_full_fine_tuning_with_text_template_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    r = run_cli(str(ROOT / "training/recipes/full_tiny_text_template.yaml"), "--output", str(tmp_path / "out"),
                "--no-progress", "--set", "train.epochs=1", "--set", f"cache_dir={tmp_path / 'cache'}",
                "--set", "eval.latency_prompts=0")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "out" / "lineage.json").read_text())["method"] == "full"
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()


def test_several_adapters_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    r = run_cli(str(ROOT / "training/recipes/adapters_tiny.yaml"), "--output", str(tmp_path / "out"),
                "--no-progress", "--set", "train.max_steps=3", "--set", f"cache_dir={tmp_path / 'cache'}")
    assert r.exit_code == 0, r.output
    for name in ("support", "support_text"):
        assert (tmp_path / "out" / "adapters" / name / "adapter_model.safetensors").exists()
        assert (tmp_path / "out" / "adapters" / name / "lineage.json").exists()
    names = [m["name"] for m in json.loads((tmp_path / "out" / "eval_report.json").read_text())["models"]]
    assert names == ["base", "lora:support", "lora:support_text"]


def test_search_recipe_picks_the_lowest_validation_loss(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    r = run_cli(str(ROOT / "training/recipes/search_tiny.yaml"), "--output", str(tmp_path / "out"),
                "--no-progress", "--set", "train.max_steps=4", "--set", "train.eval_every=2",
                "--set", f"cache_dir={tmp_path / 'cache'}")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "out" / "search.json").read_text())
    assert len(s["trials"]) == 3 and len({(t["lr"], t["rank"]) for t in s["trials"]}) == 3
    assert s["best"]["val_loss"] == min(t["val_loss"] for t in s["trials"])
    assert (tmp_path / "out" / "adapters" / "best" / "adapter_model.safetensors").exists()


def test_distill_recipe_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = [str(ROOT / "training/recipes/distill_tiny.yaml"), "--output", str(tmp_path / "out"), "--no-progress",
            "--set", "train.max_steps=4", "--set", "train.eval_every=2", "--set", f"cache_dir={tmp_path / 'cache'}",
            "--set", "distill.max_new_tokens=12", "--set", "eval.latency_prompts=0"]
    r = run_cli(*args)
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    check = json.loads((out / "teacher" / "check.json").read_text())
    assert check["train"]["total"] > check["validation"]["total"] > 0
    rec = json.loads((out / "teacher" / "train.jsonl").read_text().splitlines()[0])
    assert set(rec) >= {"input", "teacher_output"}
    lin = json.loads((out / "model" / "lineage.json").read_text())
    assert lin["metrics"]["params"]["student"] < lin["metrics"]["params"]["teacher"]
    report = json.loads((out / "eval_report.json").read_text())
    assert report["comparisons"][0]["candidate"] == "student" and report["comparisons"][0]["reference"] == "teacher"


def test_bad_input_fails_before_training(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "q", "output": "a"}\n{"input": "q"}\n')
    r = run_cli(str(write_recipe(tmp_path, base_recipe(tmp_path, data={"train": str(bad)}))), "--no-progress")
    assert r.exit_code == 1 and "bad.jsonl:2" in r.output
    assert not (tmp_path / "out" / "train").exists()
    r = run_cli(str(write_recipe(tmp_path, base_recipe(tmp_path, lora={"rank": 4, "target_modules": ["wq"]}))),
                "--no-progress")
    assert r.exit_code == 1 and "['wq'] are not linear layers" in r.output
    assert not (tmp_path / "out" / "train").exists()


def test_qlora_recipe_on_cpu_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only refusal")
    r = run_cli(str(write_recipe(tmp_path, base_recipe(tmp_path, method="qlora"))), "--no-progress")
    assert r.exit_code == 1 and "QLoRA needs a CUDA GPU" in r.output and "method: lora" in r.output
