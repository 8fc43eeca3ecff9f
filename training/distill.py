"""Distillation components. Stage 1: the teacher answers the training and validation inputs, a check drops
empty and degenerate answers (counted by reason), and the rest is written as JSONL {input, teacher_output}.
Stage 2: the student learns those answers (sequence level) plus, when the vocabularies match, the teacher's
token distributions (KL at a temperature, mixed with cross-entropy) and, for a student made of teacher layers,
the teacher's hidden states at the layers it kept (hidden_weight).
"""
from __future__ import annotations

import json
import pathlib
from collections import Counter
from dataclasses import dataclass

from slmops.errors import ConfigError
from training.dataset import Example, Template
from training.generation import generate


LAYER_CHOICES = ("even", "influence", "first")


@dataclass(frozen=True)
class DistillSettings:
    kl_weight: float = 0.5  # loss = (1 - kl_weight) * CE(teacher answer) + kl_weight * T^2 * KL
    temperature: float = 2.0  # softens both distributions for the KL term
    gen_temperature: float = 0.0  # teacher sampling; 0 = greedy
    max_new_tokens: int = 48
    keep_layers: int | None = None  # student = teacher with this many of its layers (chosen by layer_choice)
    student_config: dict | None = None  # or: teacher's config with these fields changed, fresh weights
    layer_choice: str = "even"  # which layers: "even" (spread, first and last kept) | "influence" | "first"
    layers: tuple[int, ...] | None = None  # or exactly these teacher layer indices (keep_layers = their count)
    hidden_weight: float = 0.0  # + hidden_weight * normalised MSE of the kept layers' outputs to the teacher's
    gold_answers: bool = False  # a teacher answer that misses its record's answer_key: learn the record's own

    def __post_init__(self) -> None:
        if self.layers is not None:
            layers = tuple(int(i) for i in self.layers)
            if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0:
                raise ConfigError(f"distill layers={list(self.layers)} must be increasing, distinct layer indices")
            if self.keep_layers is not None and self.keep_layers != len(layers):
                raise ConfigError(f"distill keep_layers={self.keep_layers} but layers names {len(layers)}")
            object.__setattr__(self, "layers", layers)
            object.__setattr__(self, "keep_layers", len(layers))
        if self.layer_choice not in LAYER_CHOICES:
            raise ConfigError(f"distill layer_choice={self.layer_choice!r}; choose one of {', '.join(LAYER_CHOICES)}")
        if self.hidden_weight < 0:
            raise ConfigError(f"distill hidden_weight={self.hidden_weight} must not be negative")
        if not 0.0 <= self.kl_weight <= 1.0:
            raise ConfigError(f"distill kl_weight={self.kl_weight} must be in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError(f"distill temperature={self.temperature} must be positive")
        if (self.keep_layers is None) == (self.student_config is None):
            raise ConfigError("distill needs exactly one of keep_layers (drop teacher layers) or student_config")
        if self.keep_layers is not None and self.keep_layers < 1:
            raise ConfigError(f"distill keep_layers={self.keep_layers} must be at least 1")
        if self.student_config is not None and self.hidden_weight:
            raise ConfigError("distill hidden_weight needs a student made of teacher layers (keep_layers)")

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
    return check_answers(examples, teacher_answers(teacher, tokenizer, template, examples, s, seed))


def teacher_answers(teacher, tokenizer, template: Template, examples: list[Example], s: DistillSettings,
                    seed: int = 0) -> list[str]:
    """The teacher's answer to each example's prompt (greedy, or sampled at gen_temperature with `seed`)."""
    prompts = [template.prompt(ex) for ex in examples]
    return [g.text for g in generate(teacher, tokenizer, prompts, max_new_tokens=s.max_new_tokens,
                                     temperature=s.gen_temperature, seed=seed)]


def check_answers(examples: list[Example], answers: list[str]) -> tuple[list[dict], dict]:
    """The answers fit to learn from as records, and counts {kept, dropped: {reason: n}, total}."""
    kept, dropped = [], Counter()
    for ex, text in zip(examples, answers):
        reason = degenerate_reason(text)
        if reason:
            dropped[reason] += 1
            continue
        rec = {"input": ex.messages[-2]["content"], "teacher_output": text}
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


def first_and_last(n: int, k: int) -> list[int]:
    """The first k - 1 layers and the last one (the later middle layers go)."""
    if k >= n:
        raise ConfigError(f"keep_layers={k} must be fewer than the teacher's {n} layers")
    return list(range(k - 1)) + [n - 1]


def layer_influence(teacher, rows: list[dict], pad_id: int, batch_size: int = 16) -> list[float]:
    """Per layer, 1 - cosine(input, output) of its hidden states, averaged over the rows' tokens (ShortGPT's block
    influence): how much the layer changes what flows through it. Low means the layer is close to an identity."""
    import torch
    import torch.nn.functional as F

    from training.dataset import collate

    n = teacher.config.num_hidden_layers
    total, count = torch.zeros(n, dtype=torch.float64), 0
    teacher.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            b = collate(rows[i:i + batch_size], pad_id)
            hs = teacher.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                               output_hidden_states=True).hidden_states
            outputs = list(hs[1:n]) + [None]
            mask = b["attention_mask"].bool()
            for j in range(n):
                if outputs[j] is None:  # the last entry is after the final norm: take the last layer's own output
                    continue
                cos = F.cosine_similarity(hs[j][mask].double(), outputs[j][mask].double(), dim=-1)
                total[j] += (1 - cos).sum()
            count += int(mask.sum())
    infl = (total / max(1, count)).tolist()
    infl[n - 1] = float("inf")  # its output is what the head reads: always kept
    return infl


def by_influence(influence: list[float], k: int) -> list[int]:
    """The first layer, the last, and the k - 2 others that change their input most."""
    n = len(influence)
    if k >= n:
        raise ConfigError(f"keep_layers={k} must be fewer than the teacher's {n} layers")
    if k == 1:
        return [n - 1]
    rest = sorted(range(1, n - 1), key=lambda i: (-influence[i], i))[:k - 2]
    return sorted({0, n - 1, *rest})


def choose_layers(teacher, s: DistillSettings, rows: list[dict] | None = None, pad_id: int = 0) -> list[int]:
    """The teacher layers the student is made of, by s.layers or s.layer_choice."""
    n = teacher.config.num_hidden_layers
    if s.layers is not None:
        if s.layers[-1] >= n or len(s.layers) >= n:
            raise ConfigError(f"distill layers={list(s.layers)} must be fewer than, and index into, the teacher's "
                              f"{n} layers")
        return list(s.layers)
    if s.layer_choice == "first":
        return first_and_last(n, s.keep_layers)
    if s.layer_choice == "influence":
        if not rows:
            raise ConfigError("layer_choice influence needs training rows to measure the layers on")
        return by_influence(layer_influence(teacher, rows, pad_id), s.keep_layers)
    return evenly_spaced(n, s.keep_layers)


def student_from_teacher(teacher, keep_layers: int | list[int]):
    """A copy of the teacher with only some of its decoder layers (`keep_layers` evenly spaced ones, or exactly
    those indices), renumbered, built from a config (so it saves and reloads like any model)."""
    import torch
    from transformers import AutoModelForCausalLM

    n = teacher.config.num_hidden_layers
    keep = evenly_spaced(n, keep_layers) if isinstance(keep_layers, int) else list(keep_layers)
    if not keep or keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= n or len(keep) >= n:
        raise ConfigError(f"student layers {keep} must be fewer than, and index into, the teacher's {n} layers")
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


def hidden_loss(student_hs, teacher_hs, pairs: list[tuple[int, int]], mask):
    """Mean over the (student, teacher) hidden-state index pairs and the masked tokens of ||s - t||^2 / ||t||^2:
    relative, so the few huge activations of the first tokens do not outweigh everything else."""
    total = 0.0
    for si, ti in pairs:
        s, t = student_hs[si][mask], teacher_hs[ti][mask]
        total = total + ((s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-6)).mean()
    return total / len(pairs)


def distill_loss(teacher, kl_weight: float, temperature: float, hidden_weight: float = 0.0,
                 layers: list[int] | None = None):
    """loss_fn for training.trainer.train: CE on the teacher's answer mixed with KL to the teacher's logits, plus
    hidden_weight x the hidden-state loss of student layer i against teacher layer layers[i] (every real token)."""
    import torch
    import torch.nn.functional as F

    teacher.eval()
    if hidden_weight and not layers:
        raise ConfigError("the hidden-state loss needs the teacher layers the student was made of")
    # hidden_states[i + 1] is layer i's output (the last one after the final norm, for student and teacher alike)
    pairs = [(i + 1, t + 1) for i, t in enumerate(layers or [])]

    def loss_fn(model, batch):
        want_hidden = bool(hidden_weight)
        out = model(**batch, output_hidden_states=want_hidden) if want_hidden else model(**batch)
        if kl_weight == 0 and not want_hidden:
            return out.loss, {"ce": out.loss.item()}
        with torch.no_grad():
            t_out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_hidden_states=want_hidden)
        loss, parts = (1 - kl_weight) * out.loss, {"ce": out.loss.item()}
        if kl_weight:
            mask = batch["labels"][:, 1:] != -100  # only answer tokens: the prompt is given, not learned
            s = out.logits[:, :-1][mask] / temperature
            t = t_out.logits[:, :-1][mask] / temperature
            kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
            kl = kl * temperature ** 2  # keeps the gradient scale independent of T (Hinton et al.)
            loss = loss + kl_weight * kl
            parts["kl"] = kl.item()
        if want_hidden:
            h = hidden_loss(out.hidden_states, t_out.hidden_states, pairs, batch["attention_mask"].bool())
            loss = loss + hidden_weight * h
            parts["hidden"] = h.item()
        return loss, parts

    return loss_fn
