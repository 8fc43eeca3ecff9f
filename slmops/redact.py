"""The default redaction of captured text, shared by the agent (before a capture leaves the device,
edge_agent/capture.py) and the control plane (checked again before a capture becomes training data,
control_plane/capture_dataset.py): e-mail addresses, IPv4 addresses, phone-like and long digit runs."""
from __future__ import annotations

import re

PATTERNS = (
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "[email]"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "[ip]"),
    (re.compile(r"\+?\d[\d ()-]{7,}\d"), "[number]"),
)


def redact_default(text: str) -> str:
    for pattern, mask in PATTERNS:
        text = pattern.sub(mask, text)
    return text
