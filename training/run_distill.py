"""Recipe: distil a teacher (the recipe's base) into a smaller student.

Stage 1 writes teacher/train.jsonl and teacher/validation.jsonl ({input, teacher_output}) plus
teacher/check.json (kept / dropped by reason); a rerun reuses them. Stage 2 trains the student on them with
CE + KL (KL only when the vocabularies match). Output: model/ (the student), eval_report.*, lineage.json.
"""
from __future__ import annotations

import json
import pathlib

from slmops.errors import ConfigError
from training import lineage
from training.dataset import Template, load_jsonl, split_train_val, tokenize
from training.distill import (
    as_examples,
    check_answers,
    choose_layers,
    distill_loss,
    student_from_config,
    student_from_teacher,
    teacher_answers,
    vocabularies_match,
    write_jsonl,
)
from training.distributed import DistEnv
from training.evaluate import evaluate, write_report
from training.loader import load_model
from training.run_finetune import heldout_examples, save_model
from training.trainer import train


def splits(recipe, template: Template):
    """The records' own (train, validation) examples: the split is seeded by train.seed."""
    d, s = recipe.data, recipe.train
    examples = load_jsonl(d.train)
    if d.validation:
        train_ex, val_ex = examples, load_jsonl(d.validation)
    else:
        train_ex, val_ex = split_train_val(examples, d.val_fraction, s.seed)
    template.check(train_ex + val_ex)
    return train_ex, val_ex


def source_order(source: str) -> tuple[str, int]:
    """("file", line) of an example's "file:line" source, for a stable file order."""
    path, _, line = source.rpartition(":")
    return (path, int(line)) if line.isdigit() else (source, 0)


def stage1(recipe, teacher, tokenizer, template: Template, log) -> dict:
    """Teacher answers for the train and validation inputs, checked; skipped when already written."""
    folder = pathlib.Path(recipe.output) / "teacher"
    check = folder / "check.json"
    if check.exists():
        log(f"stage 1: reusing {folder}")
        return json.loads(check.read_text())
    s = recipe.train
    train_ex, val_ex = splits(recipe, template)
    # one pass in file order: the teacher's answers do not depend on how the seed split the records
    everything = sorted(train_ex + val_ex, key=lambda ex: source_order(ex.source))
    answers = dict(zip(map(id, everything), teacher_answers(teacher, tokenizer, template, everything,
                                                           recipe.distill, seed=s.seed)))
    counts = {}
    for split, exs in (("train", train_ex), ("validation", val_ex)):
        kept, c = check_answers(exs, [answers[id(ex)] for ex in exs])
        write_jsonl(folder / f"{split}.jsonl", kept)
        counts[split] = c
        log(f"stage 1 {split}: kept {c['kept']} of {c['total']} teacher answers, dropped {c['dropped'] or 'none'}")
    check.write_text(json.dumps(counts, indent=1))  # written last: its presence means stage 1 is complete
    return counts


def read_teacher(folder: pathlib.Path, split: str):
    path = folder / f"{split}.jsonl"
    records = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return as_examples(records, str(path))


def with_gold(teacher_ex: list, gold_ex: list) -> tuple[list, int]:
    """The teacher's answers, where one misses its record's answer_key the record's own answer instead, and the
    record's own answer for every input the teacher has no answer to (dropped in stage 1). Also the count replaced
    or added."""
    gold = {ex.messages[-2]["content"]: ex for ex in gold_ex}
    out, changed = [], 0
    for ex in teacher_ex:
        g = gold.pop(ex.messages[-2]["content"], None)
        key = ex.answer_key
        if g is not None and key and key.lower() not in ex.target.lower():
            ex, changed = g, changed + 1
        out.append(ex)
    return out + list(gold.values()), changed + len(gold)


def run(recipe, progress: bool = True, log=print) -> dict:
    import torch

    out = pathlib.Path(recipe.output)
    template = Template.parse(recipe.data.template)
    s, d = recipe.train, recipe.distill
    teacher, tokenizer, _ = load_model(recipe.base, recipe.cache_dir)
    env = DistEnv.from_environ()  # after loading: see run_finetune.run
    teacher.requires_grad_(False)
    heldout = heldout_examples(recipe, template)
    counts = stage1(recipe, teacher, tokenizer, template, log) if env.is_main else None
    env.barrier()  # the other processes read what rank 0 wrote
    train_ex, val_ex = read_teacher(out / "teacher", "train"), read_teacher(out / "teacher", "validation")
    if len(train_ex) < s.batch_size:
        raise ConfigError(f"only {len(train_ex)} teacher answers survived the check; need at least "
                          f"batch_size={s.batch_size}")
    n_gold = 0
    if d.gold_answers:
        train_ex, n_gold = with_gold(train_ex, splits(recipe, template)[0])
    rows = tokenize(train_ex, template, tokenizer, s.max_length)
    val_rows = tokenize(val_ex, template, tokenizer, s.max_length)
    torch.manual_seed(s.seed)  # a student from a config starts from seeded random weights
    kept = None
    if d.keep_layers is not None:
        kept = choose_layers(teacher, d, rows, tokenizer.pad_token_id)
        student, kept = student_from_teacher(teacher, kept)
        origin = f"teacher layers {kept} ({'as listed' if d.layers else d.layer_choice})"
    else:
        student, origin = student_from_config(teacher, d.student_config), f"config {d.student_config}"
    kl_weight = d.kl_weight
    if kl_weight and not vocabularies_match(teacher, student):
        log("logit distillation off: teacher and student vocabularies differ; sequence-level only")
        kl_weight = 0.0
    t_params, s_params = (sum(p.numel() for p in m.parameters()) for m in (teacher, student))
    log(f"student from {origin}: {s_params:,} parameters ({s_params / t_params:.0%} of the teacher), "
        f"kl_weight {kl_weight}, temperature {d.temperature}, hidden_weight {d.hidden_weight}; "
        f"{len(rows) - n_gold} teacher answers + {n_gold} of the records' own")
    r = train(student, rows, val_rows, s, out / "train" / "student", tokenizer.pad_token_id,
              loss_fn=distill_loss(teacher, kl_weight, d.temperature, d.hidden_weight, kept),
              progress=progress, log=log)
    result = {"steps": r.steps, "first_loss": r.first_loss, "last_loss": r.last_loss, "best_val_loss": r.best_val_loss,
              "tokens_per_s": round(r.tokens_per_s, 1), "seconds": round(r.seconds, 1), "resumed_from": r.resumed_from,
              "processes": r.world}
    if not env.is_main:
        return {"train": result}
    log(f"student: loss {r.first_loss:.3f} -> {r.last_loss:.3f} in {r.steps} steps, {r.tokens_per_s:.0f} tokens/s")
    folders = [out, save_model(student, tokenizer, out / "model")]
    results = []
    if heldout:
        ev = recipe.eval
        results = [evaluate(name, m, tokenizer, template, heldout, ev.max_new_tokens, ev.latency_prompts, s.max_length)
                   for name, m in (("teacher", teacher), ("student", student))]
    report = write_report(out, results, [("student", "teacher")]) if results else {}
    metrics = {"train": result, "teacher_outputs": counts, "kl_weight": kl_weight, "student_origin": origin,
               "student_layers": kept, "train_records": {"teacher": len(rows) - n_gold, "gold": n_gold},
               "params": {"teacher": t_params, "student": s_params},
               "eval": {x.name: {"task_accuracy": x.task_accuracy, "perplexity": x.perplexity, "rouge_l": x.rouge_l}
                        for x in results}}
    data_files = [recipe.data.train] + ([recipe.data.validation] if recipe.data.validation else [])
    # every stochastic step takes train.seed: the train/validation split, teacher sampling (when
    # gen_temperature > 0), a config student's initial weights, the data order and dropout (training.trainer)
    seeds = {"seed": s.seed, "uses": ["train/validation split", "teacher sampling", "student init", "data order",
                                      "dropout"], "torch_threads": torch.get_num_threads()}
    lineage.write(folders, lineage.lineage(recipe, data_files, metrics,
                                           {"teacher": recipe.base.describe(), "seeds": seeds}))
    return {"output": str(out), "train": result, "report": report, "teacher_outputs": counts}
