"""bench/bench_telemetry_ingest.py runs on both state backends and checks exactly-once storage itself (a small
run: the figures live in docs/BENCHMARKS.md, never asserted here)."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.pg
def test_the_ingest_bench_runs_on_sqlite_and_postgresql():
    r = subprocess.run([sys.executable, "bench/bench_telemetry_ingest.py", "--devices", "2", "--batches", "3",
                        "--batch-size", "20", "--backends", "sqlite,postgresql"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for backend in ("sqlite", "postgresql"):
        assert f"[{backend}] acknowledged as new: 120; rows stored: 120" in r.stdout, r.stdout
    assert "ratios vs the first: sqlite 1.00x, postgresql" in r.stdout
