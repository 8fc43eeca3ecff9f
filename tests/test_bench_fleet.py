"""bench/bench_fleet.py's replica mode on a small fleet: two control planes over a throwaway PostgreSQL, the
agents in two processes, the leader killed during the rollout. The figures live in docs/BENCHMARKS.md and are
never asserted here; what is checked is that the run did what its report says (lease taken over, rollout
completed, every agent streaming, none told two different versions)."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.pg, pytest.mark.timeout(600)]


def test_the_fleet_bench_kills_the_leader_of_two_replicas_and_the_rollout_completes():
    r = subprocess.run([sys.executable, "bench/bench_fleet.py", "--agents", "40", "--hold", "1", "--replicas", "2",
                        "--state", "postgresql", "--kill-leader-after", "0", "--workers", "2", "--rollout-timeout", "120"],
                       cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert (out["replicas"], out["state"], out["workers"]) == (2, "postgresql", 2)
    assert out["enroll_failed"] == 0 and out["streams"] == 40
    kill = out["kill_leader"]
    assert "error" not in kill, kill
    assert kill["killed_replica"] in (0, 1) and kill["lease_taken_by"] == 1 - kill["killed_replica"]
    assert out["rollout"]["status"] == "completed" and out["rollout"]["succeeded"] == 40, out["rollout"]
    assert out["streams_at_end"] == 40
    assert out["reattached_agents"] >= 20       # the killed replica's half came back on the other one
    assert out["told_two_different_versions"] == {"agents": 0, "first": []}
    assert out["agent_errors_at_end"]["count"] == 0
    assert set(out["cp_after_rollout"]) == {f"replica{1 - kill['killed_replica']}", "postgresql"}


def test_the_fleet_bench_refuses_replicas_without_a_shared_database():
    r = subprocess.run([sys.executable, "bench/bench_fleet.py", "--agents", "10", "--replicas", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--replicas N > 1 needs --state postgresql" in r.stderr, r.stderr
