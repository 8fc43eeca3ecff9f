"""control_plane/gc_policy.py with CPython's real collector: freezing moves what is tracked out of the scans, and
the periodic full collection still frees a cycle that was frozen (the policy's leak bound)."""
import asyncio
import gc
import weakref

import pytest

from control_plane.gc_policy import GcPolicy, next_step
from control_plane.server import ControlPlaneConfig
from slmops.errors import ConfigError


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Node:
    pass


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()


def test_the_decision_is_a_full_collection_once_its_interval_has_passed():
    assert next_step(now=10.0, last_full=0.0, full_s=600.0) == "freeze"
    assert next_step(now=600.0, last_full=0.0, full_s=600.0) == "full"


def test_a_frozen_cycle_is_left_alone_by_collections_and_freed_by_the_full_one(unfrozen):
    clock = Clock()
    policy = GcPolicy(freeze_s=1.0, full_s=600.0, clock=clock)
    a, b = Node(), Node()
    a.other, b.other = b, a          # a cycle: only the cyclic collector frees it
    alive = weakref.ref(a)
    assert policy.step() == "freeze" and gc.get_freeze_count() > 0
    del a, b
    gc.collect()
    assert alive() is not None       # frozen: the collector does not look at it
    clock.t = 600.0
    assert policy.step() == "full"
    assert alive() is None and policy.full_collections == 1 and policy.freezes == 2
    assert gc.get_freeze_count() > 0   # frozen again after the full collection


def test_off_returns_at_once_and_bad_settings_are_refused(tmp_path, unfrozen):
    asyncio.run(asyncio.wait_for(GcPolicy(freeze_s=0).run(), 5))
    with pytest.raises(ConfigError, match="gc_freeze_s"):
        ControlPlaneConfig(data_dir=tmp_path, gc_freeze_s=-1)
    with pytest.raises(ConfigError, match="gc_full_s"):
        ControlPlaneConfig(data_dir=tmp_path, gc_full_s=0)


def test_serve_takes_gc_freeze_and_metrics_show_frozen_objects(tmp_path):
    """`slmops control-plane serve --gc-freeze 0.2`, as an operator would run it; a negative value is refused."""
    import subprocess
    import sys
    import time
    import urllib.request

    from control_plane.admin_client import wait_healthy
    from control_plane.procs import free_port, start_control_plane

    bad = subprocess.run([sys.executable, "-m", "cli", "control-plane", "serve", "--data-dir", str(tmp_path / "bad"),
                          "--gc-freeze", "-1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "gc_freeze_s (-1.0) must be 0 (off) or positive" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    port, http_port = free_port(), free_port()
    proc = start_control_plane(tmp_path / "cp", port, tmp_path / "logs",
                               extra=["--gc-freeze", "0.2", "--http", str(http_port)])
    try:
        wait_healthy(f"127.0.0.1:{port}", 60)
        deadline, text = time.monotonic() + 30, ""
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
                text = r.read().decode()
            frozen = [line for line in text.splitlines() if line.startswith("slmops_cp_gc_frozen_objects ")]
            if frozen and float(frozen[0].split()[1]) > 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("no frozen objects on /metrics:\n" + text[-2000:])
        assert "slmops_cp_gc_full_collections_total 0.0" in text
    finally:
        proc.stop()
