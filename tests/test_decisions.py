"""Table tests for the reconciler's pure decisions (edge_agent/decisions.py)."""
from __future__ import annotations

import errno

import pytest

from edge_agent import decisions as d
from slmops.errors import ArtifactInvalid, ConfigError, ModelLoadError, TransportError

NOW = 1_000_000.0


@pytest.mark.parametrize("args,want", [
    (("", "", 1, ("", ""), None, {}, {}), ("report", "idle")),
    (("", "", 1, ("m", "v1"), None, {}, {}), ("report", "serving")),
    (("m", "v1", 1, ("m", "v1"), {"state": "committed", "name": "m", "version": "v1"}, {}, {}), ("report", "serving")),
    (("m", "v2", 1, ("m", "v1"), None, {"m@v2": "crashed"}, {}), ("refuse", "m@v2 is marked bad (crashed); assign "
                                                                              "another version")),
    (("m", "v2", 3, ("m", "v1"), None, {}, {"m@v2": {"revision": 3, "at": NOW - 5}}),
     ("wait", "m@v2 was refused recently for this assignment")),
    (("m", "v2", 4, ("m", "v1"), None, {}, {"m@v2": {"revision": 3, "at": NOW - 5}}), ("start", "")),
    (("m", "v2", 3, ("m", "v1"), None, {}, {"m@v2": {"revision": 3, "at": NOW - 700}}), ("start", "")),
    (("m", "v2", 3, ("m", "v1"), {"state": "installing", "name": "m", "version": "v2"}, {}, {}), ("continue", "")),
    (("m", "v2", 3, ("m", "v1"), {"state": "installing", "name": "m", "version": "v3"}, {}, {}), ("start", "")),
    (("m", "v2", 3, ("m", "v2"), {"state": "probation", "name": "m", "version": "v2"}, {}, {}), ("continue", "")),
])
def test_desired_action(args, want):
    assert d.desired_action(*args, now=NOW, failed_retry_s=600) == want


@pytest.mark.parametrize("sizes,free,keep,fits", [
    ([], 10, 0, True), ([100], 250, 50, True), ([100], 249, 50, False), ([60, 40], 160, 0, True),
    ([60, 40], 159, 0, False),
])
def test_disk_verdict(sizes, free, keep, fits):
    why = d.disk_verdict("m@v1", d.disk_needed(sizes), free, keep)
    assert (why is None) == fits
    if not fits:
        assert "must stay free" in why


@pytest.mark.parametrize("serving,need,avail,want", [(True, 10, 5, True), (True, 5, 10, False),
                                                     (False, 10, 5, False), (True, 5, 5, False)])
def test_drain_first(serving, need, avail, want):
    assert d.drain_first(serving, need, avail) is want


@pytest.mark.parametrize("requests,errors,lat,p95,want", [
    (4, 4, [], 0, None),                      # too few requests to judge
    (10, 2, [], 0, None), (10, 3, [], 0, "3 of 10 requests failed"),
    (10, 0, [10.0] * 10, 5, "p95 latency 10 ms over 5 ms"), (10, 0, [10.0] * 10, 0, None),
    (0, 0, [], 5, None),
])
def test_probation_verdict(requests, errors, lat, p95, want):
    why = d.probation_verdict(requests, errors, lat, 5, 0.2, p95)
    assert (why is None) if want is None else why.startswith(want)


@pytest.mark.parametrize("bundle,created,desired,serving,bad,allowed", [
    (("m", "v2"), 200, ("m", "v1"), ("m", "v1", 100), {}, True),          # newer than serving
    (("m", "v0"), 50, ("m", "v1"), ("m", "v1", 100), {}, False),          # older: a rollback by sideload
    (("m", "v1"), 100, ("m", "v1"), ("m", "v1", 100), {}, True),          # the desired version itself
    (("m", "v0"), 50, ("m", "v0"), ("m", "v1", 100), {}, True),           # desired, even if older
    (("m", "v3"), 300, ("m", "v1"), ("m", "v1", 100), {"m@v3": "x"}, False),   # marked bad
    (("m", "v3"), 300, ("m", "v3"), None, {"m@v3": "x"}, False),          # marked bad wins over desired
    (("other", "v9"), 900, ("m", "v1"), ("m", "v1", 100), {}, False),     # another model than assigned
    (("other", "v9"), 900, None, ("m", "v1", 100), {}, True),             # air-gapped from the start
    (("m", "v2"), 100, None, ("m", "v1", 100), {}, False),                # same build time is not newer
    (("m", "v2"), 1, None, None, {}, True),                               # nothing serves yet
])
def test_sideload_verdict(bundle, created, desired, serving, bad, allowed):
    why = d.sideload_verdict(*bundle, created, desired, serving, bad)
    assert (why is None) is allowed, why


@pytest.mark.parametrize("error,kind", [
    (d.SideloadRefused("x"), "sideload_refused"), (ArtifactInvalid("x"), "verify_failed"),
    (ModelLoadError("x"), "load_failed"), (d.DiskFull("x"), "disk_full"), (d.ProbationFailed("x"),
                                                                          "probation_failed"),
    (OSError(errno.EIO, "io"), "io_failed"), (IsADirectoryError("x"), "io_failed"),
    (d.LocalIOError("x"), "io_failed"), (TransportError("x"), "transport_failed"),
    (ConfigError("x"), "internal_error"), (KeyError("x"), "internal_error"), (RecursionError(), "internal_error"),
])
def test_failure_kind(error, kind):
    assert d.failure_kind(error) == kind
