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
    """The trained model on a held-out set. References: the records' own answers, or with `reference_model` that
    model's greedy answers to the same prompts (the teacher's, for a slice of captured traffic whose answers are
    only what the old version said). With `compare_model` (the version in service) that model is scored on the
    same set against the same references. Floors (min_task_accuracy, min_rouge_l, and against the compared
    model `against_compared`'s min_gain_over_compare or max_loss_vs_compare) fail the stage, so nothing after it
    (gate, publish) runs. The scored set is
    written to scored.jsonl and handed on (outputs `scored_sets`), so a gate with `sets: evaluated` measures on
    it too."""
    from training.dataset import Template, load_jsonl
    from training.evaluate import evaluate as run_eval
    from training.evaluate import write_report
    from training.loader import load_model

    template = Template.parse(inputs.get("template"))
    examples = load_jsonl(cfg["heldout"])
    examples = examples[:cfg["max_examples"]] if cfg["max_examples"] else examples
    references = "the records' answers"
    if cfg.get("reference_model"):
        examples = reference_answers(cfg["reference_model"], template, examples, cfg["max_new_tokens"], cache_dir)
        references = f"the answers of {cfg['reference_model']}"
        log(f"references: {references} to the {len(examples)} held-out prompts")
    out.mkdir(parents=True, exist_ok=True)
    scored = out / "scored.jsonl"
    scored.write_text("".join(json.dumps({"messages": list(ex.messages),
                                          **({"answer_key": ex.answer_key} if ex.answer_key else {})}) + "\n"
                              for ex in examples))
    model, tokenizer, _ = load_model({"source": "hf", "path": inputs["model_dir"]}, cache_dir)
    log(f"evaluating {inputs['model_dir']} on {len(examples)} held-out examples")
    r = run_eval("trained", model, tokenizer, template, examples, cfg["max_new_tokens"], latency_prompts=1)
    results = [r]
    metrics = {"task_accuracy": r.task_accuracy, "perplexity": r.perplexity, "rouge_l": r.rouge_l,
               "latency_ms": r.latency_ms, "tokens_per_s": r.tokens_per_s, "params": r.params, "examples": r.n,
               "heldout": cfg["heldout"], "references": references}
    log(f"task accuracy {r.task_accuracy}, perplexity {r.perplexity:.2f}, ROUGE-L {r.rouge_l:.3f}")
    if cfg.get("compare_model"):
        cm, ct, _ = load_model({"source": "hf", "path": cfg["compare_model"]}, cache_dir)
        c = run_eval("compared", cm, ct, template, examples, cfg["max_new_tokens"], latency_prompts=0)
        results.append(c)
        metrics["compared"] = {"model": cfg["compare_model"], "task_accuracy": c.task_accuracy,
                               "perplexity": c.perplexity, "rouge_l": c.rouge_l}
        metrics["rouge_l_gain"] = r.rouge_l - c.rouge_l
        log(f"compared model {cfg['compare_model']}: task accuracy {c.task_accuracy}, perplexity "
            f"{c.perplexity:.2f}, ROUGE-L {c.rouge_l:.3f} (gain {r.rouge_l - c.rouge_l:+.3f})")
    write_report(out, results, [("trained", "compared")] if len(results) > 1 else [])
    if cfg["min_task_accuracy"] and (r.task_accuracy or 0.0) < cfg["min_task_accuracy"]:
        raise StageFailed(f"task accuracy {r.task_accuracy or 0.0:.1%} is below min_task_accuracy "
                          f"{cfg['min_task_accuracy']:.1%}")
    if cfg.get("min_rouge_l") and r.rouge_l < cfg["min_rouge_l"]:
        raise StageFailed(f"ROUGE-L {r.rouge_l:.3f} against {references} is below min_rouge_l {cfg['min_rouge_l']}")
    if "compared" in metrics:
        refused = against_compared(cfg, r.rouge_l, metrics["compared"]["rouge_l"], references)
        metrics["compare_floor"] = {k: cfg[k] for k in COMPARE_FLOORS if k in cfg} | {"passed": refused is None}
        if refused:
            raise StageFailed(refused)
    sets = {**(inputs.get("scored_sets") or {}), cfg["heldout"]: str(scored)}
    return {"model_dir": inputs["model_dir"], "template": inputs.get("template"), "scored_sets": sets}, metrics


COMPARE_FLOORS = ("min_gain_over_compare", "max_loss_vs_compare")


def against_compared(cfg: dict, trained: float, compared: float, references: str) -> str | None:
    """Why the trained model is refused next to the compared one (the version in service) on this evaluate
    stage's set, or None. ROUGE-L, one floor per set: `min_gain_over_compare` (at least this much above it: the
    set the new model is for) or `max_loss_vs_compare` (at most this much below it: a set the old model knew,
    so the new one may not forget it)."""
    where = f"on {cfg['heldout']}: ROUGE-L {trained:.3f} against {references}"
    theirs = f"the compared model's ({cfg['compare_model']}) {compared:.3f}"
    if "min_gain_over_compare" in cfg and trained - compared < cfg["min_gain_over_compare"]:
        return f"{where} is not {cfg['min_gain_over_compare']} above {theirs}"
    if "max_loss_vs_compare" in cfg and compared - trained > cfg["max_loss_vs_compare"]:
        return (f"forgetting {where} is {compared - trained:.3f} below {theirs}, more than max_loss_vs_compare "
                f"{cfg['max_loss_vs_compare']} allows")
    return None


def reference_answers(model_dir: str, template, examples: list, max_new_tokens: int, cache_dir: str) -> list:
    """`examples` with their answers replaced by `model_dir`'s greedy answers to the same prompts (answer keys
    kept); an empty answer is dropped (nothing to score against)."""
    from training.dataset import Example
    from training.generation import generate
    from training.loader import load_model

    model, tokenizer, _ = load_model({"source": "hf", "path": model_dir}, cache_dir)
    answers = generate(model, tokenizer, [template.prompt(ex) for ex in examples], max_new_tokens=max_new_tokens)
    out = []
    for ex, a in zip(examples, answers):
        if a.text.strip():
            msgs = ex.messages[:-1] + ({"role": "assistant", "content": a.text.strip()},)
            out.append(Example(msgs, {**ex.fields, "output": a.text.strip()}, ex.source))
    if not out:
        raise StageFailed(f"the reference model {model_dir} gave no answer to any held-out prompt")
    return out


def export(cfg: dict, inputs: dict, out: pathlib.Path, log, cache_dir: str) -> tuple[dict, dict]:
    """One build per name of `precisions` (int4 recipes and precisions, training/quant_recipes.py; fp32, the
    gate's reference, among them) for the target; for a cuda/dml target also a CPU twin of each the CPU runs (same
    weights and quantization, CPU graph): the gate measures those, as quality_gate.select_precision does, since
    the gate runs on the CPU. Every recipe's options are made, and one the builder cannot honour for this model
    (its tied embedding and head) refused, before anything is built. A recipe the trained model rules out
    (gguf_exact: trained weights are off the GGUF's grid, quant_recipes.unavailable) is not built; outputs
    `skipped` names it with the reason and the gate records it as skipped."""
    from training import quant_recipes
    from training.export import RUNNABLE, ExportError, ExportOptions, dir_size, export_onnx

    ep, model_dir = cfg["execution_provider"], pathlib.Path(inputs["model_dir"])
    base = ExportOptions(precision="fp32", execution_provider=ep, **cfg["options"])
    tied = quant_recipes.ties_embeddings(model_dir)
    try:
        options = {n: quant_recipes.named(n).options(base, tied) for n in cfg["precisions"]}
    except ExportError as e:
        raise StageFailed(f"{e} (for {model_dir}, which {'ties' if tied else 'does not tie'} its embedding and "
                          f"head)") from e
    skipped = quant_recipes.unavailable(model_dir, tuple(options))
    for name, why in skipped.items():
        log(f"export: {name} skipped: {why}")
    variants, twins, sizes = {}, {}, {}
    for name, opts in options.items():
        if name in skipped:
            continue
        variants[name] = str(export_onnx(model_dir, out / name, opts, log=log))
        sizes[name] = dir_size(pathlib.Path(variants[name]))
        if ep != "cpu" and opts.precision in RUNNABLE["cpu"]:
            twin = ExportOptions(**{**opts.__dict__, "execution_provider": "cpu"})
            twins[name] = str(export_onnx(model_dir, out / f"{name}-cpu-twin", twin, log=log))
    outputs = {"variants": variants, "execution_provider": ep}
    if skipped:   # absent otherwise, so the outputs of stages that skipped nothing stay as they were
        outputs["skipped"] = skipped
    if ep != "cpu":
        outputs["cpu_twins"] = twins
        log(f"export: CPU twins for the gate: {', '.join(twins) or 'none'}")
    return outputs, {"bytes": sizes}


def gate(cfg: dict, inputs: dict, out: pathlib.Path, log, cache_dir: str) -> tuple[dict, dict]:
    """fp32 is the reference; the first of `order` (int4 recipes and precisions the export stage built, smallest
    first) within the thresholds on every eval set is copied to bundle/ with its gate.json, and gate_report.json
    records every attempt (recipe, precision, builder options, bytes, metrics, verdict, reasons) as
    quality_gate.select_precision's does: both run quality_gate.search. The eval set is the original held-out
    set, or with `sets: evaluated` every set the evaluate stages scored (scored.jsonl: their records with the
    references they were scored against, e.g. the teacher's answers to a held-out slice of captured traffic),
    each judged apart. Everything is measured on the CPU: for a cpu target the shipped builds themselves, for
    cuda/dml their CPU twins (fp16 has none, so it cannot pass here), and the verdict says so (evaluated_on)."""
    from training import quality_gate as qg
    from training import quant_recipes
    from training.export import read_export_info

    t = qg.GateThresholds(**cfg["thresholds"])
    sets = {str(qg.HELDOUT): qg.HELDOUT}
    if cfg.get("sets") == "evaluated":
        sets = {name: pathlib.Path(f) for name, f in (inputs.get("scored_sets") or {}).items()}
        if not sets:
            raise StageFailed("gate sets: evaluated, but no evaluate stage before it scored a set")
    examples = {name: qg.load_examples(path, limit=t.max_examples) for name, path in sets.items()}
    target = inputs.get("execution_provider", "cpu")
    variants = {n: pathlib.Path(d) for n, d in inputs["variants"].items()}
    measured = variants if target == "cpu" else {n: pathlib.Path(d) for n, d in inputs["cpu_twins"].items()}
    evaluated_on = "cpu" if target == "cpu" else "cpu twin"
    order = tuple(quant_recipes.named(n) for n in cfg["order"])
    found = qg.search(order, measured["fp32"], examples, t, lambda r: measured[r.name],
                      {n: read_export_info(d)["builder_options"] for n, d in variants.items()}, log=log,
                      evaluated_on=evaluated_on, skip=inputs.get("skipped"))
    for attempt in found.tried:
        attempt["evaluated"] = str(measured[attempt["recipe"]]) if attempt["recipe"] in measured else None
    if found.chosen is None:
        raise StageFailed("nothing passed the quality gate: "
                          + "; ".join(f"{x['recipe']}: {', '.join(x['reasons'])}" for x in found.tried))
    chosen = found.chosen
    bundle = out / "bundle"
    shutil.copytree(variants[chosen.name], bundle)   # the target's build is what ships
    verdict = found.write_verdict(bundle, evaluated_on)
    report = found.report(quant_recipes.named(cfg["order"][0]).precision, list(cfg["order"]),
                          execution_provider=target, evaluated_on=evaluated_on,
                          sets={name: {"file": str(path), "reference": asdict(found.reference[name])}
                                for name, path in sets.items()})
    (out / "gate_report.json").write_text(json.dumps(report, indent=1))
    return ({"bundle_dir": str(bundle), "precision": chosen.precision, "recipe": chosen.name,
             "execution_provider": target},
            {"chosen": chosen.precision, "chosen_recipe": chosen.name, "execution_provider": target,
             "evaluated_on": evaluated_on, "reference": report["reference"], "tried": found.tried,
             "metrics": verdict["metrics"], "sets": list(sets), "why": report["why"]})


RUN = {"train": train, "evaluate": evaluate, "export": export, "gate": gate}
