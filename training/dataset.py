"""Training data: JSONL records -> validated examples -> (prompt, target) text -> token ids with prompt masking.

Two record shapes are read:
  pairs  {"input": ..., "output": ..., optional extra fields such as "answer_key"}
  chat   {"messages": [{"role": "user"|"system"|"assistant", "content": ...}, ...]}  (last one: assistant)
and two ways of turning them into text:
  chatml          slmops/chat_format.py, the format the edge agent serves with (use it for fleet models)
  a text template e.g. "### Question: {input}\\n### Answer: {output}" whose LAST placeholder is the target

Every record is checked before any training starts; errors name the file and line.
"""
from __future__ import annotations

import json
import pathlib
import random
import string
from dataclasses import dataclass, field

from slmops.chat_format import CHATML, ChatFormat
from slmops.errors import ConfigError

ROLES = ("system", "user", "assistant")
MAX_ERRORS_SHOWN = 10


class DataError(ConfigError):
    """A dataset file or record is malformed; the message names file:line and the field."""


@dataclass(frozen=True)
class Example:
    """One training conversation. `messages` ends with the assistant turn the model should learn."""
    messages: tuple[dict, ...]
    fields: dict = field(default_factory=dict)  # the raw record (for text templates, answer_key, ...)
    source: str = ""  # "file:line", for error messages

    @property
    def prompt_messages(self) -> list[dict]:
        return list(self.messages[:-1])

    @property
    def target(self) -> str:
        return self.messages[-1]["content"]

    @property
    def answer_key(self) -> str | None:
        return self.fields.get("answer_key")


def _check_record(rec, where: str) -> tuple[dict, ...]:
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"messages[{i}] must be {{role: one of {'/'.join(ROLES)}, content: string}}")
        if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            raise ValueError("the last message must be a non-empty assistant message (what the model learns)")
        return tuple(msgs)
    for key in ("input", "output"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            raise ValueError(f"field {key!r} is missing or not a non-empty string "
                             f"(records are {{input, output}} pairs or {{messages: [...]}})")
    return ({"role": "user", "content": rec["input"]}, {"role": "assistant", "content": rec["output"]})


def load_jsonl(path: str | pathlib.Path) -> list[Example]:
    """Reads and validates every line; raises DataError listing each bad line (up to MAX_ERRORS_SHOWN)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"no dataset file at {path}")
    examples, errors = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
            examples.append(Example(_check_record(rec, where), rec, where))
        except (json.JSONDecodeError, ValueError) as e:
            errors.append(f"{where}: {e}")
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise DataError(f"{len(errors)} bad record(s) in {path}:\n  {shown}{more}")
    if not examples:
        raise DataError(f"{path} has no records")
    return examples


def split_train_val(examples: list[Example], val_fraction: float = 0.15, seed: int = 0
                    ) -> tuple[list[Example], list[Example]]:
    """A deterministic shuffle, then the last `val_fraction` becomes validation (at least one record)."""
    if not 0.0 < val_fraction < 0.5:
        raise ConfigError(f"val_fraction={val_fraction} must be between 0 and 0.5 (10-20% is usual)")
    if len(examples) < 2:
        raise DataError(f"{len(examples)} record(s) cannot be split into train and validation")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(examples) * val_fraction))
    return [examples[i] for i in order[:-n_val]], [examples[i] for i in order[-n_val:]]


@dataclass(frozen=True)
class Template:
    """How an example becomes (prompt, target) text. `text` None means ChatML (slmops/chat_format.py)."""
    text: str | None = None

    def __post_init__(self) -> None:
        if self.text is None:
            return
        names = self.placeholders
        if len(names) < 2:
            raise ConfigError(f"template {self.text!r} needs at least two placeholders, e.g. "
                              "'### Question: {input}\\n### Answer: {output}'")

    @classmethod
    def parse(cls, value: str | None) -> Template:
        return cls(None if value in (None, "chatml") else value)

    @property
    def placeholders(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.text or "") if f]

    @property
    def stop(self) -> str | None:
        """The text that ends an answer (ChatML's <|im_end|>); None: the tokenizer's EOS token."""
        return None if self.text else CHATML["stop"][0]

    def check(self, examples: list[Example]) -> None:
        """Fails before training if any record lacks a field the template names."""
        if self.text is None:
            return
        for ex in examples:
            if "messages" in ex.fields:
                raise DataError(f"{ex.source}: chat records need the chatml template, not {self.text!r}")
            missing = [f for f in self.placeholders if f not in ex.fields]
            if missing:
                raise DataError(f"{ex.source}: template {self.text!r} names field(s) {missing} that the record "
                                f"lacks (it has {sorted(ex.fields)})")

    def prompt(self, ex: Example) -> str:
        if self.text is None:
            return ChatFormat.from_dict(CHATML).render(ex.prompt_messages, add_generation_prompt=True)
        target = self.placeholders[-1]
        head = self.text[:self.text.rindex("{" + target + "}")]
        return head.format(**ex.fields)

    def prompt_for(self, user_text: str) -> str:
        """The prompt for a bare question (evaluation, teacher generation)."""
        fields = {f: user_text for f in self.placeholders[:-1]}
        ex = Example(({"role": "user", "content": user_text}, {"role": "assistant", "content": "-"}), fields)
        return self.prompt(ex)

    def target(self, ex: Example) -> str:
        if self.text is None:
            return ex.target + CHATML["stop"][0] + "\n"
        target = self.placeholders[-1]
        tail = self.text[self.text.rindex("{" + target + "}") + len(target) + 2:]
        return str(ex.fields[target]) + tail


def tokenize(examples: list[Example], template: Template, tokenizer, max_length: int) -> list[dict]:
    """Token ids per example; labels are -100 over the prompt so only the answer is learned.

    Prompt and target are tokenized separately so the boundary is exact. Text templates get the tokenizer's
    EOS appended (the model must learn to stop); ChatML already ends with <|im_end|>.
    """
    out = []
    for ex in examples:
        p = tokenizer(template.prompt(ex), add_special_tokens=False)["input_ids"]
        t = tokenizer(template.target(ex), add_special_tokens=False)["input_ids"]
        if template.text is not None and tokenizer.eos_token_id is not None:
            t = t + [tokenizer.eos_token_id]
        if len(p) >= max_length:
            raise DataError(f"{ex.source}: the prompt is {len(p)} tokens, longer than max_length={max_length}")
        ids = (p + t)[:max_length]
        out.append({"input_ids": ids, "labels": ([-100] * len(p) + t)[:max_length]})
    return out


def collate(rows: list[dict], pad_id: int):
    """Right-pads a micro-batch; padding is masked out of attention and labels."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def file_sha256(path: str | pathlib.Path) -> str:
    import hashlib

    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
