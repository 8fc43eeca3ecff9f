"""Recipe: fine-tune a base model, fully or with LoRA / QLoRA adapters (one or several on one base), optionally
merged into a plain model. Everything is loaded and validated before the first step.

Output folder:  model/ (full or merged weights + tokenizer, ready for `slmops export`)  adapters/<name>/
train/<name>/loss_log.jsonl + checkpoints/   eval_report.json/.txt   lineage.json (also in model/ and adapters/)
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass

from slmops.errors import ConfigError
from training import lineage
from training.dataset import Template, load_jsonl, split_train_val, tokenize
from training.distributed import DistEnv
from training.evaluate import evaluate, write_report
from training.loader import load_model, materialise
from training.lora import (
    LoraSettings,
    adapter_bytes,
    add_lora,
    check_fits,
    load_4bit,
    qlora_unavailable_reason,
)
from training.trainer import train


@dataclass
class Prepared:
    name: str
    train_rows: list
    val_rows: list
    files: list
    lora: LoraSettings | None


def prepare_data(data, template: Template, tokenizer, max_length: int, seed: int) -> tuple[list, list, list]:
    """(train rows, validation rows, data files) with every record and the template checked."""
    examples = load_jsonl(data.train)
    files = [data.train]
    if data.validation:
        val = load_jsonl(data.validation)
        files.append(data.validation)
        train_ex = examples
    else:
        train_ex, val = split_train_val(examples, data.val_fraction, seed)
    template.check(train_ex + val)
    return tokenize(train_ex, template, tokenizer, max_length), tokenize(val, template, tokenizer, max_length), files


def heldout_examples(recipe, template: Template):
    if not recipe.eval.heldout:
        return None
    ex = load_jsonl(recipe.eval.heldout)
    template.check(ex)
    return ex


def save_model(model, tokenizer, folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(recipe, progress: bool = True, log=print) -> dict:
    if recipe.method == "qlora":
        reason = qlora_unavailable_reason()
        if reason:
            raise ConfigError(reason)
    out = pathlib.Path(recipe.output)
    template = Template.parse(recipe.data.template)
    s = recipe.train
    if recipe.method == "qlora":
        model = load_4bit(materialise(recipe.base, pathlib.Path(recipe.cache_dir)))
        _, tokenizer, _ = load_model(recipe.base, recipe.cache_dir)
    else:
        model, tokenizer, _ = load_model(recipe.base, recipe.cache_dir)
    # the process group starts after loading: transformers' save_pretrained writes nothing on non-main ranks,
    # which would leave a half-built cached model; before it, every process builds its own and one rename wins
    env = DistEnv.from_environ()
    jobs = [(a.name, a.data, a.lora) for a in recipe.adapters] or \
        [("default", recipe.data, recipe.lora if recipe.method != "full" else None)]
    prepared = []
    for name, data, lora in jobs:  # all checks first: a bad adapter must not waste the others' training
        tr, va, files = prepare_data(data, template, tokenizer, s.max_length, s.seed)
        if lora:
            check_fits(model, lora)
        prepared.append(Prepared(name, tr, va, files, lora))
    heldout = heldout_examples(recipe, template)
    pad = tokenizer.pad_token_id
    results = []
    if env.is_main and heldout and recipe.eval.compare_base:
        results.append(evaluate("base", model, tokenizer, template, heldout, recipe.eval.max_new_tokens,
                                recipe.eval.latency_prompts, s.max_length))
        log(f"base: task accuracy {results[-1].task_accuracy}, perplexity {results[-1].perplexity:.2f}")
    train_results = {}
    for job in prepared:
        if job.lora:
            model = add_lora(model, job.lora, job.name)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            log(f"adapter {job.name}: rank {job.lora.rank}, {trainable:,} trainable parameters")
        if env.is_main:
            log(f"training {job.name}: {len(job.train_rows)} train / {len(job.val_rows)} validation records")
        r = train(model, job.train_rows, job.val_rows, s, out / "train" / job.name, pad, progress=progress, log=log)
        train_results[job.name] = {"steps": r.steps, "first_loss": r.first_loss, "last_loss": r.last_loss,
                                   "best_val_loss": r.best_val_loss, "stopped_early": r.stopped_early,
                                   "tokens_per_s": round(r.tokens_per_s, 1), "seconds": round(r.seconds, 1),
                                   "resumed_from": r.resumed_from, "processes": r.world}
        if env.is_main:
            log(f"{job.name}: loss {r.first_loss:.3f} -> {r.last_loss:.3f} in {r.steps} steps, "
                f"{r.tokens_per_s:.0f} tokens/s")
    if not env.is_main:
        return {"train": train_results}
    folders = [out]
    adapter_sizes = {}
    if recipe.method != "full":
        for job in prepared:
            target = out / "adapters" / job.name
            model.save_pretrained(target if job.name == "default" else out / "adapters", selected_adapters=[job.name])
            adapter_sizes[job.name] = adapter_bytes(target)
            folders.append(target)
    eval_model = model
    if recipe.method == "full":
        folders.append(save_model(model, tokenizer, out / "model"))
    elif recipe.merge:
        eval_model = model.merge_and_unload()
        folders.append(save_model(eval_model, tokenizer, out / "model"))
    if heldout:
        if recipe.method != "full" and not recipe.merge:
            for job in prepared:
                model.set_adapter(job.name)
                results.append(evaluate(f"lora:{job.name}", model, tokenizer, template, heldout,
                                        recipe.eval.max_new_tokens, recipe.eval.latency_prompts, s.max_length))
        else:
            results.append(evaluate("tuned", eval_model, tokenizer, template, heldout, recipe.eval.max_new_tokens,
                                    recipe.eval.latency_prompts, s.max_length))
    report = write_report(out, results, [(r.name, "base") for r in results if r.name != "base"]
                          if any(r.name == "base" for r in results) else []) if results else {}
    metrics = {"train": train_results, "adapter_bytes": adapter_sizes,
               "eval": {r.name: {"task_accuracy": r.task_accuracy, "perplexity": r.perplexity, "rouge_l": r.rouge_l}
                        for r in results}}
    lineage.write(folders, lineage.lineage(recipe, [f for p in prepared for f in p.files], metrics))
    return {"output": str(out), "train": train_results, "adapter_bytes": adapter_sizes, "report": report}
