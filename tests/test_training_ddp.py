"""The same recipe runs unchanged under torchrun with 2 CPU processes (DDP over gloo)."""
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_lora_recipe_under_torchrun_with_two_processes(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 processes on 2 cores: one thread each
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "training.cli", "run", "training/recipes/lora_tiny.yaml", "--output", str(out), "--no-progress",
           "--set", "train.max_steps=8", "--set", "train.eval_every=4", "--set", f"cache_dir={tmp_path / 'cache'}",
           "--set", "eval.latency_prompts=0"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    train = json.loads((out / "lineage.json").read_text())["metrics"]["train"]["default"]
    assert train["processes"] == 2 and train["steps"] == 8
    log = [json.loads(x) for x in (out / "train" / "default" / "loss_log.jsonl").read_text().splitlines()]
    assert len(log) == 8 and "val_loss" in log[3]  # one log, written by rank 0 alone
    assert (out / "model" / "model.safetensors").exists()
