"""Accuracy per stage of the main job, as JSON for bench/make_plots.py, from the files `slmops demo --workdir DIR`
leaves in DIR (the demo itself prints its results and writes no result file):

    .venv/bin/slmops demo --workdir /tmp/demo-real                # the main job (see docs/BENCHMARKS.md)
    .venv/bin/python bench/collect_demo.py /tmp/demo-real             # -> bench/results/demo.json

Read: lora/eval_report.json and distill/eval_report.json (held-out task accuracy of base, tuned and student in
fp32 with transformers, 26 questions) and onnx-{base,tuned,student}/gate_report.json (the precision the quality
gate shipped, its accuracy on the gate's examples, sizes), or for a tuned model shipped as its LoRA adapter on the
base, onnx-tuned-adapter/gate_report.json. The accuracy measured through the fleet's OpenAI API
before/after the rollout is only printed by the demo today; when the demo writes DIR/demo_result.json with
{"fleet": {"acc_before": 0.0, "acc_after": 0.615, "questions": 26, "load_ok": 608, "load_failed": 0}} (the
values run_demo already returns), it is copied into `fleet` and plotted; until then `fleet` stays null.
"""
from __future__ import annotations

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import machine, write_result  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from control_plane.demo import shipped  # noqa: E402


def demo_bundles(workdir: pathlib.Path) -> dict:
    """{stage: bundle} as control_plane/demo.py's export_and_gate made them: the tuned stage is the gated adapter
    on the base when that passed (onnx-tuned-adapter), or on the base with fp32 activations, which then ships for
    the base stage too (onnx-tuned-adapter-fp32-activations), else the merged model's export (onnx-tuned)."""
    def model(name: str) -> dict:
        d = workdir / f"onnx-{name}"
        return {"kind": "model", "dir": d, "gate": json.loads((d / "gate_report.json").read_text())}
    out = {"base": model("base"), "student": model("student")}
    for folder, base in (("onnx-tuned-adapter", "base"), ("onnx-tuned-adapter-fp32-activations",
                                                          "base-fp32-activations")):
        adapter = workdir / folder / "gate_report.json"
        report = json.loads(adapter.read_text()) if adapter.exists() else None
        if report and report["passed"]:
            out["base"] = model(base)
            out["tuned"] = {"kind": "adapter", "dir": adapter.parent, "gate": report, "base": out["base"]}
            return out
    out["tuned"] = model("tuned")
    return out


def collect(workdir: pathlib.Path) -> dict:
    evals = {}
    for f in ("lora/eval_report.json", "distill/eval_report.json"):
        path = workdir / f
        if not path.exists():
            raise SystemExit(f"{path} is missing: is {workdir} a finished `slmops demo --workdir` folder?")
        evals |= {m["name"]: m for m in json.loads(path.read_text())["models"]}
    stages = []
    bundles = demo_bundles(workdir)
    for name, label in (("base", "base"), ("tuned", "+ LoRA"), ("student", "distilled student")):
        bundle, e = bundles[name], evals[name]
        shipped_as, accuracy, size, ref = shipped(bundle)
        gate = bundle["gate"] if bundle["kind"] == "model" else bundle["base"]["gate"]
        stage = {"stage": name, "label": label, "params": e["params"],
                 "fp32_accuracy": e["task_accuracy"], "fp32_examples": e["n"],
                 "shipped_precision": shipped_as, "shipped_accuracy": accuracy,
                 "shipped_mb": round(size / 1e6, 1), "fp32_mb": round(ref / 1e6, 1)}
        if bundle["kind"] == "adapter":   # the adapter on the base, gated against the fp32 merged model
            stage |= {"gate_examples": bundle["gate"]["candidate"]["examples"],
                      "gate_reference_accuracy": bundle["gate"]["reference"]["accuracy"], "tried": []}
        else:
            chosen = next(t for t in gate["tried"] if t["passed"])
            stage |= {"gate_examples": chosen["metrics"]["examples"],
                      "gate_reference_accuracy": gate["reference"]["accuracy"],
                      "tried": [{"precision": t["precision"], "passed": t["passed"],
                                 "accuracy": t["metrics"]["accuracy"], "mb": round(t["bytes"] / 1e6, 1)}
                                for t in gate["tried"] if t["verdict"] != "skipped"]}
        stages.append(stage)
    fleet = None
    if (workdir / "demo_result.json").exists():
        fleet = json.loads((workdir / "demo_result.json").read_text()).get("fleet")
    return {"bench": "demo", "workdir": str(workdir), "stages": stages, "fleet": fleet}


def main() -> None:
    import argparse
    import time

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=pathlib.Path, help="the folder `slmops demo --workdir` used")
    args = ap.parse_args()
    started, m0 = time.monotonic(), machine()
    res = collect(args.workdir)
    for s in res["stages"]:
        print(f"{s['label']:20s} fp32 {100 * s['fp32_accuracy']:5.1f}% ({s['fp32_examples']})  shipped "
              f"{s['shipped_precision']} {100 * s['shipped_accuracy']:5.1f}% ({s['gate_examples']})  "
              f"{s['shipped_mb']:.1f} MB")
    write_result("demo", res, started, m0)


if __name__ == "__main__":
    main()
