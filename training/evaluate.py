"""Evaluation on a held-out split: perplexity, task accuracy (the answer contains the record's answer_key,
case-insensitive), ROUGE-L against the reference answer, latency, tokens/s, parameters and memory; and a
report that puts models side by side (JSON + a table).
"""
from __future__ import annotations

import json
import math
import pathlib
import resource
from dataclasses import asdict, dataclass

from training.dataset import Example, Template, tokenize
from training.generation import generate, timed_single
from training.trainer import validation_loss


@dataclass
class EvalResult:
    name: str
    perplexity: float
    task_accuracy: float | None  # None when no record has an answer_key
    rouge_l: float
    latency_ms: float
    tokens_per_s: float
    params: int
    weights_mb: float
    peak_rss_mb: float  # the process's high-water mark so far (covers everything this process ran)
    n: int
    samples: list

    def as_dict(self) -> dict:
        return asdict(self)


def lcs_len(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased whitespace tokens."""
    c, r = candidate.lower().split(), reference.lower().split()
    if not c or not r:
        return 0.0
    lcs = lcs_len(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


def is_correct(answer: str, key: str) -> bool:
    return key.lower() in answer.lower()


def evaluate(name: str, model, tokenizer, template: Template, examples: list[Example], max_new_tokens: int = 48,
             latency_prompts: int = 3, max_length: int = 256) -> EvalResult:
    rows = tokenize(examples, template, tokenizer, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ppl = math.exp(min(50.0, validation_loss(model, rows, pad)))
    prompts = [template.prompt(ex) for ex in examples]
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    keyed = [(ex, a) for ex, a in zip(examples, answers) if ex.answer_key]
    acc = sum(is_correct(a.text, ex.answer_key) for ex, a in keyed) / len(keyed) if keyed else None
    rl = sum(rouge_l(a.text, ex.target) for ex, a in zip(examples, answers)) / len(examples)
    timing = timed_single(model, tokenizer, prompts[:latency_prompts], max_new_tokens) if latency_prompts else \
        {"latency_ms": 0.0, "tokens_per_s": 0.0}
    params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())
    samples = [{"input": ex.messages[-2]["content"], "answer": a.text, "key": ex.answer_key,
                "correct": is_correct(a.text, ex.answer_key) if ex.answer_key else None}
               for ex, a in list(zip(examples, answers))[:5]]
    return EvalResult(name=name, perplexity=ppl, task_accuracy=acc, rouge_l=rl, **timing, params=params,
                      weights_mb=weights / 1e6, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      n=len(examples), samples=samples)


def comparison(results: list[EvalResult], pairs: list[tuple[str, str]] = ()) -> dict:
    """The report: every result, and for each (candidate, reference) pair the deltas and the retained share."""
    by = {r.name: r for r in results}
    out = {"models": [r.as_dict() for r in results], "comparisons": []}
    for cand, ref in pairs:
        c, r = by[cand], by[ref]
        cmp = {"candidate": cand, "reference": ref,
               "accuracy_delta_points": None if c.task_accuracy is None or r.task_accuracy is None
               else round(100 * (c.task_accuracy - r.task_accuracy), 1),
               "accuracy_retained": None if not r.task_accuracy or c.task_accuracy is None
               else round(c.task_accuracy / r.task_accuracy, 3),
               "params_ratio": round(c.params / r.params, 3),
               "latency_ratio": round(c.latency_ms / r.latency_ms, 3) if r.latency_ms else None,
               "perplexity_ratio": round(c.perplexity / r.perplexity, 3)}
        out["comparisons"].append(cmp)
    return out


def table(results: list[EvalResult]):
    from rich.table import Table

    t = Table("model", "task acc", "ROUGE-L", "perplexity", "latency ms", "tok/s", "params", "weights MB", "peak RSS MB",
              title="held-out evaluation")
    for r in results:
        acc = "-" if r.task_accuracy is None else f"{100 * r.task_accuracy:.1f}%"
        t.add_row(r.name, acc, f"{r.rouge_l:.3f}", f"{r.perplexity:.2f}", f"{r.latency_ms:.0f}",
                  f"{r.tokens_per_s:.1f}", f"{r.params / 1e6:.2f}M", f"{r.weights_mb:.1f}", f"{r.peak_rss_mb:.0f}")
    return t


def write_report(out_dir: pathlib.Path, results: list[EvalResult], pairs: list[tuple[str, str]] = ()) -> dict:
    from rich.console import Console

    report = comparison(results, pairs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval_report.json").write_text(json.dumps(report, indent=1))
    console = Console(record=True, width=140)
    console.print(table(results))
    for c in report["comparisons"]:
        delta = "n/a" if c["accuracy_delta_points"] is None else f"{c['accuracy_delta_points']:+.1f} points"
        kept = c["accuracy_retained"]
        kept = f"keeps {kept:.0%} of its accuracy" if kept is not None else "reference accuracy 0: no share to keep"
        console.print(f"{c['candidate']} vs {c['reference']}: accuracy {delta} ({kept}), "
                      f"params x{c['params_ratio']}, latency x{c['latency_ratio']}")
    (out_dir / "eval_report.txt").write_text(console.export_text())
    return report
