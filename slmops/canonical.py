"""Canonical JSON: the exact bytes that are signed and verified (sorted keys, no spaces, UTF-8)."""
from __future__ import annotations

import json
from typing import Any


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
