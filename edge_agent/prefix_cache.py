"""Prefix cache: the KV state of recent single-row generations, kept so a request that starts with the same
tokens (the next turn of a conversation, a shared system prompt) skips their prefill. An entry is an idle
onnxruntime-genai generator with the tokens it holds; reuse rewinds it to the common prefix (`rewind_to`) and
appends only the rest. An entry is taken whole (one request at a time) and put back when that request ends.
Bounded by entries; each holds a KV buffer of its generator's max_length (docs/ARCHITECTURE.md, "Serving").
"""
from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class Entry:
    key: tuple            # batching.batch_key of the settings the generator was made with
    tokens: list          # the sequence in its KV state (prompt + answer)
    max_length: int       # its capacity
    generator: object


def common_prefix(a: list, b: list) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reusable(entry: Entry, key: tuple, tokens: list, need: int, min_tokens: int) -> int:
    """How many of `tokens` the entry can keep (0: not usable): same settings, room for `need` tokens in all, a
    common prefix of at least min_tokens; at least one token is left to append (its logits start the answer)."""
    if entry.key != key or entry.max_length < need:
        return 0
    keep = min(common_prefix(entry.tokens, tokens), len(entry.tokens) - 1, len(tokens) - 1)
    return keep if keep >= min_tokens else 0


class PrefixCache:
    def __init__(self, entries: int = 2, min_tokens: int = 32):
        self.size = entries
        self.min_tokens = min_tokens
        self._entries: list[Entry] = []   # least recently used first
        self._lock = threading.Lock()
        self.hits = 0
        self.reused_tokens = 0

    def take(self, key: tuple, tokens: list, need: int) -> tuple[Entry, int] | None:
        """The entry that keeps the most of `tokens` (removed from the cache), and how many it keeps."""
        with self._lock:
            best, keep = None, 0
            for e in self._entries:
                k = reusable(e, key, tokens, need, self.min_tokens)
                if k > keep:
                    best, keep = e, k
            if best is None:
                return None
            self._entries.remove(best)
            self.hits += 1
            self.reused_tokens += keep
            return best, keep

    def put(self, entry: Entry) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._entries.append(entry)
            dropped, self._entries = self._entries[:-self.size], self._entries[-self.size:]
        del dropped   # their generators (and KV buffers) are freed here

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries = []
