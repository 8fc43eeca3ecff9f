"""Distillation components. Stage 1: the teacher answers the training and validation inputs, a check drops
empty and degenerate answers (counted by reason), and the rest is written as JSONL {input, teacher_output}.
Stage 2: the student learns those answers (sequence level) plus, when the vocabularies match, the teacher's
token distributions (KL at a temperature, mixed with cross-entropy).
"""
from __future__ import annotations

import json
import pathlib
from collections import Counter
from dataclasses import dataclass

from slmops.errors import ConfigError
from training.dataset import Example, Template
from training.generation import generate


@dataclass(frozen=True)
class DistillSettings:
    kl_weight: float = 0.5  # loss = (1 - kl_weight) * CE(teacher answer) + kl_weight * T^2 * KL
    temperature: float = 2.0  # softens both distributions for the KL term
    gen_temperature: float = 0.0  # teacher sampling; 0 = greedy
    max_new_tokens: int = 48
    keep_layers: int | None = None  # student = teacher with this many evenly spaced layers
    student_config: dict | None = None  # or: teacher's config with these fields changed, fresh weights

    def __post_init__(self) -> None:
        if not 0.0 <= self.kl_weight <= 1.0:
            raise ConfigError(f"distill kl_weight={self.kl_weight} must be in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError(f"distill temperature={self.temperature} must be positive")
        if (self.keep_layers is None) == (self.student_config is None):
            raise ConfigError("distill needs exactly one of keep_layers (drop teacher layers) or student_config")
        if self.keep_layers is not None and self.keep_layers < 1:
            raise ConfigError(f"distill keep_layers={self.keep_layers} must be at least 1")

    @classmethod
    def from_dict(cls, d: dict) -> DistillSettings:
        known = set(cls.__dataclass_fields__)
        if set(d) - known:
            raise ConfigError(f"unknown distill field(s) {sorted(set(d) - known)}; expected {sorted(known)}")
        return cls(**d)


def degenerate_reason(text: str) -> str | None:
    """Why a teacher answer is unfit to learn from, or None when it is fine."""
    words = text.split()
    if not words:
        return "empty"
    if len(words) >= 8:
        trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        if len(set(trigrams)) / len(trigrams) < 0.5:
            return "repetitive"
    if len(text) >= 12 and max(Counter(text).values()) / len(text) > 0.5:
        return "repetitive"  # one character over and over ("!!!!!!!", "......")
    return None


def teacher_outputs(teacher, tokenizer, template: Template, examples: list[Example], s: DistillSettings,
                    seed: int = 0) -> tuple[list[dict], dict]:
    """Stage 1: [{input, teacher_output, ...}] of the kept answers, and counts {kept, dropped: {reason: n}}."""
    prompts = [template.prompt(ex) for ex in examples]
    answers = generate(teacher, tokenizer, prompts, max_new_tokens=s.max_new_tokens,
                       temperature=s.gen_temperature, seed=seed)
    kept, dropped = [], Counter()
    for ex, g in zip(examples, answers):
        reason = degenerate_reason(g.text)
        if reason:
            dropped[reason] += 1
            continue
        rec = {"input": ex.messages[-2]["content"], "teacher_output": g.text}
        if ex.answer_key:
            rec["answer_key"] = ex.answer_key
        kept.append(rec)
    return kept, {"kept": len(kept), "dropped": dict(dropped), "total": len(examples)}


def write_jsonl(path: pathlib.Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)


def as_examples(records: list[dict], source: str) -> list[Example]:
    """Teacher JSONL records as training examples (the teacher's answer is the target)."""
    return [Example(({"role": "user", "content": r["input"]}, {"role": "assistant", "content": r["teacher_output"]}),
                    {**r, "output": r["teacher_output"]}, f"{source}:{i + 1}") for i, r in enumerate(records)]


def evenly_spaced(n: int, k: int) -> list[int]:
    """k of n layer indices, first and last included (they matter most for the input and output spaces)."""
    if k >= n:
        raise ConfigError(f"keep_layers={k} must be fewer than the teacher's {n} layers")
    if k == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def student_from_teacher(teacher, keep_layers: int):
    """A copy of the teacher with only `keep_layers` of its decoder layers, renumbered, built from a config
    (so it saves and reloads like any model)."""
    import torch
    from transformers import AutoModelForCausalLM

    n = teacher.config.num_hidden_layers
    keep = evenly_spaced(n, keep_layers)
    cfg = teacher.config.__class__.from_dict(teacher.config.to_dict())
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [teacher.config.layer_types[i] for i in keep]
    student = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    remap = {f"model.layers.{old}.": f"model.layers.{new}." for new, old in enumerate(keep)}
    state = {}
    for name, t in teacher.state_dict().items():
        if name.startswith("model.layers."):
            prefix = ".".join(name.split(".")[:3]) + "."
            if prefix not in remap:
                continue
            name = remap[prefix] + name[len(prefix):]
        state[name] = t.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    if [m for m in missing if "lm_head" not in m] or unexpected:
        raise ConfigError(f"cannot build the student: missing {missing}, unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        student.tie_weights()
    return student, keep


def student_from_config(teacher, overrides: dict):
    """Fresh weights in the teacher's architecture with fields changed (same tokenizer, so KL applies)."""
    import torch
    from transformers import AutoModelForCausalLM

    d = teacher.config.to_dict()
    unknown = [k for k in overrides if k not in d]
    if unknown:
        raise ConfigError(f"student_config field(s) {unknown} are not in the teacher's config")
    d.update(overrides)
    d.pop("layer_types", None)
    cfg = teacher.config.__class__.from_dict(d)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def vocabularies_match(teacher, student) -> bool:
    return teacher.get_output_embeddings().weight.shape[0] == student.get_output_embeddings().weight.shape[0]


def distill_loss(teacher, kl_weight: float, temperature: float):
    """loss_fn for training.trainer.train: CE on the teacher's answer mixed with KL to the teacher's logits."""
    import torch
    import torch.nn.functional as F

    teacher.eval()

    def loss_fn(model, batch):
        out = model(**batch)
        if kl_weight == 0:
            return out.loss, {"ce": out.loss.item()}
        with torch.no_grad():
            t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mask = batch["labels"][:, 1:] != -100  # only answer tokens: the prompt is given, not learned
        s = out.logits[:, :-1][mask] / temperature
        t = t_logits[:, :-1][mask] / temperature
        kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
        kl = kl * temperature ** 2  # keeps the gradient scale independent of T (Hinton et al.)
        loss = (1 - kl_weight) * out.loss + kl_weight * kl
        return loss, {"ce": out.loss.item(), "kl": kl.item()}

    return loss_fn
