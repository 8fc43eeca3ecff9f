"""Distillation on SmolLM2-135M: the shipped recipe (or it with --set overrides) run for several seeds against one
LoRA teacher, with the teacher's and the student's held-out task accuracy, the share retained and the time.

    .venv/bin/python bench/bench_distill.py --workdir /tmp/h3 --seeds 0 1 2 [--set distill.hidden_weight=0 ...]

The teacher is the slow test's: training/recipes/lora_smollm2.yaml with eval.latency_prompts=1, trained once into
WORKDIR/lora (about 3 min quiet, much longer on a busy machine) and reused. Each seed runs
training/recipes/distill_smollm2.yaml into WORKDIR/runs/LABEL-sSEED. With --reuse-answers the teacher's greedy
answers (stage 1: one pass over every record in file order, so the same for every seed) are taken from
WORKDIR/answers.json when an earlier run wrote it, split and checked as the recipe does; only the generation is
skipped. One line per run is appended to WORKDIR/results.jsonl (seed, accuracies, retained, seconds, load).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def teacher(work: pathlib.Path) -> pathlib.Path:
    from training.recipe import load
    from training.runner import run_recipe

    model = work / "lora" / "model"
    if not (model / "config.json").exists():
        r = load(ROOT / "training/recipes/lora_smollm2.yaml", [f"cache_dir={work / 'cache'}",
                                                                "eval.latency_prompts=1"], output=str(work / "lora"))
        run_recipe(r, progress=False)
    return model


def reuse_answers(recipe, out: pathlib.Path, answers: dict) -> None:
    from training.dataset import Template
    from training.distill import check_answers, write_jsonl
    from training.run_distill import splits

    counts = {}
    for split, exs in zip(("train", "validation"), splits(recipe, Template.parse(recipe.data.template))):
        kept, c = check_answers(exs, [answers[ex.messages[-2]["content"]] for ex in exs])
        write_jsonl(out / "teacher" / f"{split}.jsonl", kept)
        counts[split] = c
    (out / "teacher" / "check.json").write_text(json.dumps(counts, indent=1))


def run_one(work: pathlib.Path, label: str, seed: int, sets: list[str], reuse: bool) -> dict:
    from training.recipe import load
    from training.runner import run_recipe

    out = work / "runs" / f"{label}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    r = load(ROOT / "training/recipes/distill_smollm2.yaml",
             [f"base.path={teacher(work)}", f"cache_dir={work / 'cache'}", "eval.latency_prompts=1",
              f"train.seed={seed}", *sets], output=str(out))
    cache = work / "answers.json"
    reused = reuse and cache.exists() and r.distill.gen_temperature == 0
    if reused:
        reuse_answers(r, out, json.loads(cache.read_text()))
    load_before = os.getloadavg()[0]
    t0 = time.time()
    run_recipe(r, progress=False, log=lambda *a, **k: print(*a, flush=True))
    wall = time.time() - t0
    if not cache.exists() and r.distill.gen_temperature == 0:
        answers = {}
        for split in ("train", "validation"):
            for ln in (out / "teacher" / f"{split}.jsonl").read_text().splitlines():
                rec = json.loads(ln)
                answers[rec["input"]] = rec["teacher_output"]
        cache.write_text(json.dumps(answers))
    acc = {m["name"]: m["task_accuracy"] for m in json.loads((out / "eval_report.json").read_text())["models"]}
    lin = json.loads((out / "lineage.json").read_text())
    return {"label": label, "sets": sets, "seed": seed, "teacher": acc["teacher"], "student": acc["student"],
            "retained": round(acc["student"] / acc["teacher"], 3) if acc["teacher"] else None,
            "wall_s": round(wall, 1), "train_s": lin["metrics"]["train"]["seconds"], "stage1_reused": reused,
            "layers": lin["metrics"].get("student_layers"), "best_val_loss": lin["metrics"]["train"]["best_val_loss"],
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=pathlib.Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override, e.g. train.lr=2e-4")
    ap.add_argument("--label", default="recipe")
    ap.add_argument("--reuse-answers", action="store_true")
    a = ap.parse_args()
    os.chdir(ROOT)  # the recipes' data paths are relative to the repository root
    a.workdir.mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        res = run_one(a.workdir.resolve(), a.label, seed, a.sets, a.reuse_answers)
        print("RESULT", json.dumps(res), flush=True)
        with open(a.workdir / "results.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
