"""What each worker stage does, inside a worker process (torch and onnxruntime are imported here, never in the
control plane process). Each takes (settings, inputs from the stages before, its own output folder, log) and
returns (outputs, metrics); outputs name folders under its output folder.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from dataclasses import asdict


class StageFailed(Exception):
    """The stage ran but its result is refused (a quality threshold not met); the message says which."""


def train(cfg: dict, inputs: dict, out: pathlib.Path, log, cache_dir: str) -> tuple[dict, dict]:
    import yaml

    from training import recipe as tr
    from training.runner import run_recipe

    d = json.loads(json.dumps(cfg["recipe"]))
    d["output"] = str(out)
    if cfg.get("base") == "previous":   # a chained stage: the model the train stage before it left
        d["base"] = {"source": "hf", "path": inputs["model_dir"]}
        log(f"base: {inputs['model_dir']} (the model of the train stage before"
            + (", the teacher)" if cfg["method"] == "distill" else ")"))
    d.setdefault("cache_dir", cache_dir)
    r = tr.from_dict(d, "# run by a control plane pipeline\n" + yaml.safe_dump(d, sort_keys=False))
    summary = run_recipe(r, progress=False, log=log)
    if int(os.environ.get("RANK", "0")) != 0:
        return {}, {}
    metrics = {k: v for k, v in summary.items() if k in ("train", "adapter_bytes", "teacher_outputs")}
    report = summary.get("report") or {}
    metrics["eval"] = {m["name"]: {"task_accuracy": m["task_accuracy"], "perplexity": m["perplexity"]}
                       for m in report.get("models", [])}
    return {"model_dir": str(out / "model"), "template": cfg["template"]}, metrics


def evaluate(cfg: dict, inputs: dict, out: pathlib.Path, log, cache_dir: str) -> tuple[dict, dict]:
    from training.dataset import Template, load_jsonl
    from training.evaluate import evaluate as run_eval
    from training.evaluate import write_report
    from training.loader import load_model

    model, tokenizer, _ = load_model({"source": "hf", "path": inputs["model_dir"]}, cache_dir)
    template = Template.parse(inputs.get("template"))
    examples = load_jsonl(cfg["heldout"])
    examples = examples[:cfg["max_examples"]] if cfg["max_examples"] else examples
    log(f"evaluating {inputs['model_dir']} on {len(examples)} held-out examples")
    r = run_eval("trained", model, tokenizer, template, examples, cfg["max_new_tokens"], latency_prompts=1)
    write_report(out, [r])
    metrics = {"task_accuracy": r.task_accuracy, "perplexity": r.perplexity, "rouge_l": r.rouge_l,
               "latency_ms": r.latency_ms, "tokens_per_s": r.tokens_per_s, "params": r.params, "examples": r.n}
    log(f"task accuracy {r.task_accuracy}, perplexity {r.perplexity:.2f}, ROUGE-L {r.rouge_l:.3f}")
    if cfg["min_task_accuracy"] and (r.task_accuracy or 0.0) < cfg["min_task_accuracy"]:
        raise StageFailed(f"task accuracy {r.task_accuracy or 0.0:.1%} is below min_task_accuracy "
                          f"{cfg['min_task_accuracy']:.1%}")
    return {"model_dir": inputs["model_dir"], "template": inputs.get("template")}, metrics


def export(cfg: dict, inputs: dict, out: pathlib.Path, log, cache_dir: str) -> tuple[dict, dict]:
    """One build per precision for the target; for a cuda/dml target also a CPU twin of each precision the CPU
    runs (same weights and quantization, CPU graph): the gate measures those, as quality_gate.select_precision
    does, since the gate runs on the CPU."""
    from training.export import RUNNABLE, ExportOptions, dir_size, export_onnx

    ep = cfg["execution_provider"]
    variants, twins, sizes = {}, {}, {}
    for p in cfg["precisions"]:
        opts = ExportOptions(precision=p, execution_provider=ep, **cfg["options"])
        variants[p] = str(export_onnx(pathlib.Path(inputs["model_dir"]), out / p, opts, log=log))
        sizes[p] = dir_size(pathlib.Path(variants[p]))
        if ep != "cpu" and p in RUNNABLE["cpu"]:
            opts = ExportOptions(precision=p, execution_provider="cpu", **cfg["options"])
            twins[p] = str(export_onnx(pathlib.Path(inputs["model_dir"]), out / f"{p}-cpu-twin", opts, log=log))
    outputs = {"variants": variants, "execution_provider": ep}
    if ep != "cpu":
        outputs["cpu_twins"] = twins
        log(f"export: CPU twins for the gate: {', '.join(twins) or 'none'}")
    return outputs, {"bytes": sizes}


def gate(cfg: dict, inputs: dict, out: pathlib.Path, log, cache_dir: str) -> tuple[dict, dict]:
    """fp32 is the reference; the first precision of `order` within the thresholds is copied to bundle/ with its
    gate.json. Everything is measured on the CPU: for a cpu target the shipped builds themselves, for cuda/dml
    their CPU twins (fp16 has none, so it cannot pass here), and the verdict says so (evaluated_on)."""
    from training import quality_gate as qg

    t = qg.GateThresholds(**cfg["thresholds"])
    examples = qg.load_examples(limit=t.max_examples)
    target = inputs.get("execution_provider", "cpu")
    variants = {p: pathlib.Path(d) for p, d in inputs["variants"].items()}
    measured = variants if target == "cpu" else {p: pathlib.Path(d) for p, d in inputs["cpu_twins"].items()}
    evaluated_on = "cpu" if target == "cpu" else "cpu twin"
    log(f"gate: measuring the fp32 reference on {len(examples)} examples"
        + ("" if target == "cpu" else f" (CPU twins of the {target} builds)"))
    ref, ref_greedy = qg.evaluate(measured["fp32"], examples, t.max_new_tokens)
    tried = []
    for p in cfg["order"]:
        got = None
        if p not in measured:
            reasons = [f"{p} has no CPU twin, so it cannot be evaluated on the CPU where the gate runs"]
        else:
            got = ref if p == "fp32" else qg.evaluate(measured[p], examples, t.max_new_tokens, ref_greedy)[0]
            reasons = qg.judge(p, ref, got, t)
        tried.append({"precision": p, "passed": not reasons, "reasons": reasons,
                      "metrics": asdict(got) if got else None, "evaluated_on": evaluated_on,
                      "evaluated": str(measured[p]) if p in measured else None})
        log(f"gate: {p} {'PASSED' if not reasons else 'failed: ' + '; '.join(reasons)} ({evaluated_on})")
        if not reasons:
            bundle = out / "bundle"
            shutil.copytree(variants[p], bundle)   # the target's build is what ships
            verdict = qg.write_verdict(bundle, p, True, ["fp32 is the reference"] if p == "fp32" else [], got,
                                       ref, t, evaluated_on=evaluated_on)
            report = {"chosen": p, "execution_provider": target, "evaluated_on": evaluated_on, "tried": tried}
            (out / "gate_report.json").write_text(json.dumps(report, indent=1))
            return ({"bundle_dir": str(bundle), "precision": p, "execution_provider": target},
                    {"chosen": p, "execution_provider": target, "evaluated_on": evaluated_on,
                     "reference": asdict(ref), "tried": tried, "metrics": verdict["metrics"]})
    raise StageFailed("no precision passed the quality gate: "
                      + "; ".join(f"{x['precision']}: {', '.join(x['reasons'])}" for x in tried))


RUN = {"train": train, "evaluate": evaluate, "export": export, "gate": gate}
