"""The reconciler's decisions as pure functions over values (no disk, no network, no clock of their own):
what to do with a desired state, whether an update fits on disk, whether to drain before loading, whether a
model passes probation, whether a sideloaded bundle may be installed, and which event an error becomes.
Each has a table test (tests/test_decisions.py); reconciler.py and its states only act on the verdicts.
"""
from __future__ import annotations

from slmops.errors import ArtifactInvalid, ModelLoadError, SlmopsError, TransportError

TERMINAL = ("idle", "committed", "failed", "rolled_back", "rollback_failed")


class DiskFull(SlmopsError):
    """Not enough free disk for an update (checked before fetching)."""


class ProbationFailed(SlmopsError):
    """The new model failed more requests (or was slower) than probation allows."""


class SideloadRefused(ArtifactInvalid):
    """A verified bundle that the sideload rule does not allow (older, marked bad, another model)."""


class LocalIOError(SlmopsError):
    """The device's own disk or OS failed (OSError inside a state), not the artifact or the network."""


# (error class, event name) in order: the first match names the failure.
FAILURE_KINDS = ((SideloadRefused, "sideload_refused"), (ArtifactInvalid, "verify_failed"),
                 (ModelLoadError, "load_failed"), (DiskFull, "disk_full"), (ProbationFailed, "probation_failed"),
                 (LocalIOError, "io_failed"), (TransportError, "transport_failed"))


def failure_kind(e: BaseException) -> str:
    """The event name of a state's failure; anything outside the tree is an agent bug, "internal_error"."""
    if isinstance(e, OSError):
        return "io_failed"
    return next((k for cls, k in FAILURE_KINDS if isinstance(e, cls)), "internal_error")


def desired_action(name: str, version: str, revision: int, serving: tuple[str, str], saved: dict | None,
                   bad: dict, failed: dict, now: float, failed_retry_s: float) -> tuple[str, str]:
    """What to do with a desired state: ("report", state word), ("refuse", why), ("wait", why),
    ("continue", "") the saved update of this version, or ("start", "") a new update."""
    if not name:
        return "report", "idle" if serving == ("", "") else "serving"
    busy = bool(saved) and saved.get("state") not in TERMINAL
    if serving == (name, version) and not busy:
        return "report", "serving"
    ref = f"{name}@{version}"
    if ref in bad:
        return "refuse", f"{ref} is marked bad ({bad[ref]}); assign another version"
    f = failed.get(ref)
    if f and f.get("revision") == revision and now - f.get("at", 0) < failed_retry_s:
        return "wait", f"{ref} was refused recently for this assignment"
    if busy and (saved.get("name"), saved.get("version")) == (name, version):
        return "continue", ""
    return "start", ""


def disk_needed(missing_sizes: list[int]) -> int:
    """Bytes an update writes: every missing file, plus the largest file's chunks beside it while it assembles."""
    return sum(missing_sizes) + max(missing_sizes, default=0)


def disk_verdict(ref: str, needed: int, free: int, keep_free: int) -> str | None:
    """None when `needed` bytes fit leaving `keep_free`; else why not."""
    if free - needed < keep_free:
        return (f"{ref} needs {needed / 1e6:.1f} MB; {free / 1e6:.1f} MB free and {keep_free / 1e6:.1f} MB "
                "must stay free")
    return None


def drain_first(serving: bool, need_bytes: int, available_bytes: int) -> bool:
    """Both models do not fit in memory: pause, drain and unload the old one before loading the new one."""
    return serving and need_bytes > available_bytes


def probation_verdict(requests: int, errors: int, latencies_ms: list[float], min_requests: int,
                      max_error_ratio: float, max_p95_ms: float) -> str | None:
    """None while the new model behaves; else why it fails probation."""
    if requests >= min_requests and requests and errors / requests > max_error_ratio:
        return f"{errors} of {requests} requests failed (limit {max_error_ratio:.0%})"
    lat = sorted(latencies_ms)
    if max_p95_ms and len(lat) >= min_requests and lat:
        p95 = lat[max(0, int(len(lat) * 0.95) - 1)]
        if p95 > max_p95_ms:
            return f"p95 latency {p95:.0f} ms over {max_p95_ms:.0f} ms"
    return None


def sideload_verdict(name: str, version: str, created_ms: int, desired: tuple[str, str] | None,
                     serving: tuple[str, str, int] | None, bad: dict) -> str | None:
    """The sideload rule (docs/SECURITY.md): a verified bundle may be installed when it is not marked bad and
    either it is the desired version, or it is a version of the desired model (any model when none is known)
    whose signed build time is later than the serving version's. None when allowed; else why not."""
    ref = f"{name}@{version}"
    if ref in bad:
        return f"{ref} is marked bad ({bad[ref]})"
    if desired and desired == (name, version):
        return None
    if desired and desired[0] and desired[0] != name:
        return f"{ref} is not the model this device is assigned ({desired[0]}@{desired[1]})"
    if serving and created_ms <= serving[2]:
        return (f"{ref} is not newer than the serving {serving[0]}@{serving[1]} (signed build time "
                f"{created_ms} <= {serving[2]}); a sideload only moves forward or brings the desired version")
    return None
