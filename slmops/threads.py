"""The threads a model computes with: onnxruntime's intra-op pool, set explicitly for every session this project
opens (the agent's engines and the quality gate's runner), never left to onnxruntime's default, which ran one
thread on this project's 2-core machines (half the decode rate; docs/BENCHMARKS.md, "Inference threads").
The count does not change the numbers: logits are bit for bit the same with 1 and 2 threads (measured there).
"""
from __future__ import annotations

import json
import os


def default_threads(allowed: int, logical: int, physical: int) -> int:
    """One thread per core this process may use: the CPUs of its affinity mask, less their SMT siblings when the
    machine has more logical CPUs than cores (onnxruntime's documented default is the physical cores, and two
    threads on one core share its vector units; measured here only on a machine without SMT). Pure."""
    if physical and logical > physical:
        allowed = allowed * physical // logical
    return max(1, allowed)


def cpus_available() -> int:
    """default_threads for this machine: its affinity mask (which containers and taskset narrow) and psutil's
    logical and physical CPU counts."""
    import psutil

    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        allowed = os.cpu_count() or 1
    return default_threads(allowed, psutil.cpu_count() or allowed, psutil.cpu_count(logical=False) or 0)


def set_threads(config, threads: int = 0) -> int:
    """Overlays intra_op_num_threads on an onnxruntime_genai.Config (0 = cpus_available()); returns the count."""
    n = threads or cpus_available()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": n}}}}))
    return n
