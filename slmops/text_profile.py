"""What a set of prompts looks like, as small fixed-size counts both sides compute the same way: a histogram of
prompt lengths (in words) and counts of hashed word unigrams and bigrams. Training data is profiled at publish time
(training/publish.py) and the profile travels in the version's manifest; the control plane profiles captured
traffic the same way and compares (control_plane/drift.py). Pure; no side imported.
"""
from __future__ import annotations

import hashlib
import re

SCHEMA = 1
LENGTH_EDGES = (2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)   # upper bounds (exclusive); one more bucket above
NGRAM_BUCKETS = 256
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def length_bucket(n: int) -> int:
    for i, edge in enumerate(LENGTH_EDGES):
        if n < edge:
            return i
    return len(LENGTH_EDGES)


def length_counts(texts) -> list[int]:
    counts = [0] * (len(LENGTH_EDGES) + 1)
    for t in texts:
        counts[length_bucket(len(words(t)))] += 1
    return counts


def _bucket(gram: str) -> int:
    return int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=4).digest(), "big") % NGRAM_BUCKETS


def ngram_counts(texts) -> list[int]:
    """Hashed word unigrams and bigrams: a lexical fingerprint that keeps no text."""
    counts = [0] * NGRAM_BUCKETS
    for t in texts:
        w = words(t)
        for gram in w + [f"{a} {b}" for a, b in zip(w, w[1:])]:
            counts[_bucket(gram)] += 1
    return counts


def prompt_text(record: dict) -> str:
    """The user side of a record: a training pair's input, a chat's non-assistant turns up to the answer, or a
    completion prompt (captures are {messages|prompt, response})."""
    if isinstance(record.get("messages"), list):
        msgs = record["messages"]
        if msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant" and "response" not in record:
            msgs = msgs[:-1]
        return "\n".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict) and m.get("role") != "assistant")
    return str(record.get("input", record.get("prompt", "")))


def profile(prompts: list[str], embedding: dict | None = None) -> dict:
    """The profile stored with a version (manifest metrics.data_profile)."""
    out = {"schema": SCHEMA, "records": len(prompts), "length_edges": list(LENGTH_EDGES),
           "length_counts": length_counts(prompts), "ngram_buckets": NGRAM_BUCKETS,
           "ngram_counts": ngram_counts(prompts)}
    if embedding:
        out["embedding"] = embedding
    return out


def check_profile(p) -> str:
    """'' when `p` is a profile this code can compare against; otherwise why not."""
    if not isinstance(p, dict) or p.get("schema") != SCHEMA:
        return "no training data profile of schema 1 in the version's manifest"
    if p.get("length_edges") != list(LENGTH_EDGES) or p.get("ngram_buckets") != NGRAM_BUCKETS:
        return "the profile's buckets differ from this control plane's"
    if len(p.get("length_counts", ())) != len(LENGTH_EDGES) + 1 or len(p.get("ngram_counts", ())) != NGRAM_BUCKETS:
        return "the profile's counts are malformed"
    return ""
