"""The threads a model computes with: onnxruntime's intra-op pool, set explicitly for every session this project
opens (the agent's engines and the quality gate's runner), never left to onnxruntime's default, which ran one
thread on this project's 2-core machines (half the decode rate; docs/BENCHMARKS.md, "Inference threads").
The count does not change the numbers: logits are bit for bit the same with 1 and 2 threads (measured there).
"""
from __future__ import annotations

import json
import os


def cpus_available() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def set_threads(config, threads: int = 0) -> int:
    """Overlays intra_op_num_threads on an onnxruntime_genai.Config (0 = cpus_available()); returns the count."""
    n = threads or cpus_available()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": n}}}}))
    return n
