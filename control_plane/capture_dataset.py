"""Captured traffic -> a training dataset (`slmops dataset from-captures`): the loop from the edge back to training.

`build` is pure over capture rows and the fleet's consent: it keeps a capture only if its device's latest resource
sample says capture is on (consent withdrawn, or never reported, means none of that device's captures leave), it
is inside the time window and the selector, it parses, its answer is not empty (an answer that is only a tool
call is kept: the call becomes the assistant's text as the chat format writes it, `<tool_call>{"name",
"arguments"}</tool_call>`, counted as "tool-call answers"), its redaction holds (the default redaction is applied
again; what it still finds is masked and counted), its prompt length, script and language pass the filters
(slmops/language.py: a function-word heuristic; an undetermined language is kept and counted), and its prompt was
not seen before (normalised text). Survivors are split deterministically by a hash
of the prompt into train and held-out, each record carrying its provenance. Every refusal is counted by reason;
an empty result, one that is all duplicates (of each other or of the training data given), or one with fewer
than `min_records` distinct records, is refused with the counts. `write` puts the files down atomically
in the shapes training/dataset.py reads.

`replay` (rehearsal) mixes a share of the original training data into train.jsonl, so the next model keeps what
the one in service knew while it learns the new traffic: the originals whose prompt a capture (train or held-out)
also has, or another original before it, are dropped and counted; of the rest a seeded choice, by a hash of the
prompt, makes up `share` of train.jsonl (all of them when there are fewer, and dataset.json says so). Each keeps
its own answer and answer key, and its provenance names the file and line it came from. The held-out slice stays
captured traffic only.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections import Counter
from dataclasses import asdict, dataclass, field

from slmops import language, text_profile
from slmops.chat_format import CHATML, ChatFormat
from slmops.errors import ConfigError
from slmops.redact import redact_default

SCRIPTS = ("any", "latin")
CHAT = ChatFormat.from_dict(CHATML)   # the recipes' chat template (training/dataset.py renders records with it)


class DatasetRefused(ConfigError):
    """The captures leave nothing worth training on; the message carries the counts."""


@dataclass(frozen=True)
class Filters:
    since_ms: int = 0
    until_ms: int = 0                 # 0: up to now
    model: str = ""                   # NAME or NAME@VERSION; "" = any
    device_ids: tuple[str, ...] | None = None   # a device group; None = every device
    min_chars: int = 1                # prompt length bounds, in characters
    max_chars: int = 4000
    script: str = "any"               # "latin": at least 80% of the prompt's letters are Latin
    language: str = "any"             # a code of slmops/language.py's LANGUAGES: drop prompts identified as another
    heldout_fraction: float = 0.2
    seed: int = 0
    min_records: int = 2              # fewer distinct records than this is refused

    def __post_init__(self) -> None:
        if self.min_chars < 0 or self.max_chars < max(1, self.min_chars):
            raise ConfigError(f"length filter {self.min_chars}..{self.max_chars} characters is empty")
        if self.script not in SCRIPTS:
            raise ConfigError(f"script {self.script!r} is not one of {', '.join(SCRIPTS)}")
        if self.language != "any" and self.language not in language.LANGUAGES:
            raise ConfigError(f"language {self.language!r} is not one of any, {', '.join(language.LANGUAGES)}")
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError(f"held-out fraction {self.heldout_fraction} must be within 0 (none) and 1")
        if self.min_records < 1:
            raise ConfigError(f"min_records {self.min_records} must be at least 1")
        if self.until_ms and self.until_ms < self.since_ms:
            raise ConfigError("the time window ends before it starts")


@dataclass(frozen=True)
class Replay:
    files: tuple[str, ...]            # the original training data (JSONL in training/dataset.py's shapes)
    share: float = 0.25               # of the records in train.jsonl that are replayed originals

    def __post_init__(self) -> None:
        if not self.files:
            raise ConfigError("replay needs the original training data (one file or more)")
        if not 0 < self.share <= 0.9:
            raise ConfigError(f"replay share {self.share} must be above 0 and at most 0.9 (the rest is captures)")


@dataclass
class Result:
    train: list[dict] = field(default_factory=list)
    heldout: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)   # "read", "kept", and one per reason dropped
    replay: dict | None = None                         # what `replay` mixed in (dataset.json's "replay")

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))


def consenting(samples: dict[str, dict]) -> set[str]:
    """Devices whose latest sample reports a capture rate above 0 (`samples`: device -> its values)."""
    return {d for d, v in samples.items() if float((v or {}).get("capture_rate", 0) or 0) > 0}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _model_matches(want: str, model: str) -> bool:
    return not want or model == want or ("@" not in want and model.split("@")[0] == want)


def _redact_again(pair: dict) -> tuple[dict, bool]:
    changed = False

    def r(text: str) -> str:
        nonlocal changed
        out = redact_default(text)
        changed |= out != text
        return out
    msgs = [{"role": m["role"], "content": r(m["content"])} for m in pair["messages"]]
    return {"messages": msgs, "response": r(pair["response"])}, changed


def _tool_call_answer(pair: dict) -> str | None:
    """The text of a capture's tool calls as the model writes them (the shape the recipes learn), None when it
    has none, "" when they cannot be read back (arguments that are no longer JSON)."""
    calls = pair.get("tool_calls")
    if not calls:
        return None
    try:
        return CHAT.tool_calls_text([{"name": str(c["name"]), "arguments": json.loads(c["arguments"])}
                                     for c in calls])
    except (TypeError, KeyError, ValueError):
        return ""


def _as_chat(pair: dict) -> dict | None:
    """A capture's {messages|prompt, response} as chat messages, or None if it is not one."""
    resp = pair.get("response")
    if isinstance(pair.get("messages"), list):
        msgs = pair["messages"]
        if not all(isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                   and isinstance(m.get("content"), str) for m in msgs) or not msgs:
            return None
    elif isinstance(pair.get("prompt"), str):
        msgs = [{"role": "user", "content": pair["prompt"]}]
    else:
        return None
    return {"messages": msgs, "response": resp} if isinstance(resp, str) else None


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(_norm(prompt).encode()).hexdigest()


def build(rows, consent: set[str], f: Filters, known: frozenset[str] = frozenset()) -> Result:
    """`rows`: capture telemetry rows (device_id, seq, ts_ms, model, adapter, detail) in time order; `known`:
    prompt_key of every prompt already in the training data (a capture repeating one is a duplicate)."""
    res, seen = Result(), set()
    for row in rows:
        res.counts["read"] += 1
        if row["device_id"] not in consent:
            res.counts["dropped: capture disabled on device"] += 1
            continue
        if row["ts_ms"] < f.since_ms or (f.until_ms and row["ts_ms"] > f.until_ms) \
                or not _model_matches(f.model, row["model"]) \
                or (f.device_ids is not None and row["device_id"] not in f.device_ids):
            res.counts["dropped: outside selector or window"] += 1
            continue
        try:
            pair = _as_chat(json.loads(row["detail"]))
        except ValueError:
            pair = None
        if pair is None:
            res.counts["dropped: unreadable capture"] += 1
            continue
        if not pair["response"].strip():
            call = _tool_call_answer(json.loads(row["detail"]))
            if call is None:
                res.counts["dropped: empty answer"] += 1
                continue
            if not call:
                res.counts["dropped: unreadable tool call"] += 1
                continue
            pair["response"] = call
            res.counts["tool-call answers"] += 1
        pair, changed = _redact_again(pair)
        res.counts["redacted again"] += changed
        prompt = text_profile.prompt_text({"messages": pair["messages"], "response": ""})
        if not f.min_chars <= len(prompt) <= f.max_chars:
            res.counts["dropped: prompt length"] += 1
            continue
        if f.script == "latin" and language.script_of(prompt) != "latin":
            res.counts["dropped: script"] += 1
            continue
        if f.language != "any":
            lang = language.language_of(prompt)
            if lang is None:
                res.counts["language undetermined (kept)"] += 1
            elif lang != f.language:
                res.counts["dropped: language"] += 1
                continue
        key = prompt_key(prompt)
        if key in seen:
            res.counts["dropped: duplicate"] += 1
            continue
        if key in known:
            res.counts["dropped: already in training data"] += 1
            continue
        seen.add(key)
        record = {"messages": pair["messages"] + [{"role": "assistant", "content": pair["response"]}],
                  "provenance": {"source": "capture", "device_id": row["device_id"], "seq": row.get("seq", 0), "ts_ms": row["ts_ms"],
                                 "model": row["model"], "adapter": row.get("adapter") or "",
                                 "capture_sha256": hashlib.sha256(row["detail"].encode()).hexdigest()}}
        bucket = int(hashlib.sha256(f"{f.seed}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (res.heldout if bucket < f.heldout_fraction else res.train).append(record)
        res.counts["kept"] += 1
    res.counts["redacted again"] += 0   # always listed
    kept, dup = res.counts["kept"], res.counts["dropped: duplicate"] + res.counts["dropped: already in training data"]
    if not kept:
        raise DatasetRefused(f"the dataset would be {'all duplicates' if dup else 'empty'}: {res.summary()}")
    if kept < f.min_records:
        raise DatasetRefused(f"only {kept} distinct record(s), fewer than {f.min_records}"
                             f"{' (the rest duplicates or filtered)' if dup else ''}: {res.summary()}")
    if f.heldout_fraction and not res.heldout:
        res.heldout.append(res.train.pop())   # a small set still gets its held-out record
    return res


def replay(res: Result, originals: list[dict], r: Replay, seed: int = 0) -> Result:
    """`res` with a seeded share of `originals` (records as `read_originals` gives them) added to its train
    set; the counts say how many were replayed and why the others were not."""
    captured = {prompt_key(text_profile.prompt_text(rec)) for rec in res.train + res.heldout}
    taken, candidates, files = set(), [], {}
    for rec in originals:
        f = files.setdefault(rec["provenance"]["file"], {"sha256": rec["provenance"]["file_sha256"],
                                                         "records": 0, "replayed": 0})
        f["records"] += 1
        key = prompt_key(text_profile.prompt_text(rec))
        if key in captured or key in taken:
            res.counts[f"replay: dropped, {'prompt also captured' if key in captured else 'duplicate'}"] += 1
            continue
        taken.add(key)
        candidates.append((hashlib.sha256(f"{seed}:{key}".encode()).hexdigest(), rec))
    wanted = round(r.share * len(res.train) / (1 - r.share))
    chosen = [rec for _, rec in sorted(candidates, key=lambda c: c[0])[:wanted]]
    for rec in chosen:
        files[rec["provenance"]["file"]]["replayed"] += 1
    res.train = res.train + chosen
    res.counts["replayed"] += len(chosen)
    res.replay = {"share": r.share, "seed": seed, "wanted": wanted, "records": len(chosen),
                  "share_of_train": round(len(chosen) / len(res.train), 4) if res.train else 0.0,
                  "files": files}
    return res


def read_originals(files) -> list[dict]:
    """Every record of these training files as a chat record with its answer key (if any) and its provenance:
    file, line, sha256 of the line and of the file. Bad records raise training/dataset.py's DataError."""
    from training.dataset import load_jsonl

    out = []
    for path in files:
        raw = pathlib.Path(path).read_bytes()
        file_sha, text = hashlib.sha256(raw).hexdigest(), raw.decode("utf-8")
        lines = text.splitlines()
        for ex in load_jsonl(path):
            line = int(ex.source.rpartition(":")[2])
            rec = {"messages": list(ex.messages)}
            if ex.answer_key:
                rec["answer_key"] = ex.answer_key
            rec["provenance"] = {"source": "replay", "file": str(path), "line": line, "file_sha256": file_sha,
                                 "record_sha256": hashlib.sha256(lines[line - 1].encode()).hexdigest()}
            out.append(rec)
    return out


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write(res: Result, out: pathlib.Path, f: Filters) -> dict:
    """OUT/train.jsonl, OUT/heldout.jsonl and OUT/dataset.json (filters, counts, sha256 of each file)."""
    out.mkdir(parents=True, exist_ok=True)
    info = {"source": "captures", "filters": {k: v for k, v in asdict(f).items()}, "counts": dict(res.counts),
            "files": {}}
    if res.replay is not None:
        info["replay"] = res.replay
    for name, recs in (("train.jsonl", res.train), ("heldout.jsonl", res.heldout)):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        _write_atomic(out / name, text)
        info["files"][name] = {"records": len(recs), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    _write_atomic(out / "dataset.json", json.dumps(info, indent=1, default=list))
    return info


# ---- the store side (I/O) ----------------------------------------------------------------------------
def from_store(store, f: Filters, known: frozenset[str] = frozenset()) -> Result:
    """Reads every capture and each device's latest sample from the control plane's store, then `build`."""
    samples = {}
    for r in store.db.query("select t.device_id, t.vals from telemetry t join (select device_id, max(ts_ms) as ts "
                            "from telemetry where kind = 'sample' group by device_id) m "
                            "on t.device_id = m.device_id and t.ts_ms = m.ts where t.kind = 'sample'"):
        samples[r["device_id"]] = json.loads(r["vals"]) if r["vals"] else {}
    rows = store.db.query("select device_id, seq, ts_ms, model, adapter, detail from telemetry "
                          "where kind = 'capture' and ts_ms >= ? order by ts_ms, device_id, seq", [f.since_ms])
    return build(rows, consenting(samples), f, known)


def known_prompts(files) -> frozenset[str]:
    """prompt_key of every record in these training files (training/dataset.py's shapes)."""
    out = set()
    for path in files:
        for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.add(prompt_key(text_profile.prompt_text(json.loads(line))))
    return frozenset(out)
