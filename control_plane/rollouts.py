"""The rollout engine: a pure function of (rollout, fleet, health, now) -> the rollout's next state and the
desired model per device. No I/O: control_plane/rollout_driver.py reads the store, calls `step`, saves the
result first, then applies the desired state. A restart resumes from the saved state.

Status machine (TRANSITIONS is the only source of truth):

    running --pause--> paused --resume--> running
    running|paused --abort--> aborting --rolled_back--> aborted
    running|paused --failures--> halting --rolled_back--> halted
    running --done--> completed

An assignment (one device in one rollout) is pending until the device serves its target (succeeded) or
reports an install error naming the target, errs too often on it, or times out (failed). Waves advance only
when every assigned device has settled, the install success ratio holds, the p95 latency on the new version
holds, and the last device of the wave has soaked `min_soak_s`. Too many failures halt the rollout and send
every assigned device back to the model it was told to run before.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

from slmops.errors import ConfigError

RUNNING, PAUSED, ABORTING, HALTING = "running", "paused", "aborting", "halting"
COMPLETED, ABORTED, HALTED = "completed", "aborted", "halted"
ACTIVE = (RUNNING, PAUSED)
ROLLING_BACK = (ABORTING, HALTING)
TERMINAL = (COMPLETED, ABORTED, HALTED)

PAUSE, RESUME, ABORT, FAILURES, DONE, ROLLED_BACK = "pause", "resume", "abort", "failures", "done", "rolled_back"
TRANSITIONS: dict[tuple[str, str], str] = {
    (RUNNING, PAUSE): PAUSED,
    (PAUSED, RESUME): RUNNING,
    (RUNNING, ABORT): ABORTING,
    (PAUSED, ABORT): ABORTING,
    (RUNNING, FAILURES): HALTING,
    (PAUSED, FAILURES): HALTING,
    (RUNNING, DONE): COMPLETED,
    (ABORTING, ROLLED_BACK): ABORTED,
    (HALTING, ROLLED_BACK): HALTED,
}
OFFLINE_AFTER_MS = 60_000


class RolloutInvalid(ConfigError):
    """A rollout spec that cannot be run (the message names the field)."""


class TransitionRefused(Exception):
    """An operator event that the rollout's status does not allow (e.g. resume a completed rollout)."""


class Ref(NamedTuple):
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}@{self.version}" if self.name else "(none)"


@dataclass(frozen=True)
class Wave:
    """A cumulative wave size: `devices` (count) or `percent` of the matching fleet. Exactly one is set."""
    devices: int = 0
    percent: float = 0.0

    def __post_init__(self) -> None:
        if (self.devices > 0) == (self.percent > 0) or self.devices < 0 or not 0 <= self.percent <= 100:
            raise RolloutInvalid(f"a wave is N devices or 0 < N <= 100 percent, got {self}")

    def size(self, fleet: int) -> int:
        n = self.devices if self.devices else math.ceil(fleet * self.percent / 100)
        return min(fleet, max(1, n)) if fleet else 0


ALL = Wave(percent=100)


@dataclass(frozen=True)
class Gate:
    min_success_ratio: float = 0.9     # of assigned devices serving the target when a wave is settled
    max_failure_ratio: float = 0.2     # failed / assigned above this halts and rolls back at once
    max_error_rate: float = 0.2        # a device failing this share of requests on the target has failed
    min_requests: int = 5              # ...once it has served at least this many
    max_p95_latency_ms: float = 0.0    # 0 = no latency gate; above it the next wave waits
    min_soak_s: float = 0.0            # after the wave's last device switched
    install_timeout_s: float = 900.0   # pending longer than this counts as failed
    # Quality gates (0 = off), over the wave's serving devices once they have min_requests results between them:
    # below either, the rollout halts and rolls back; until then the next wave waits.
    min_golden_pass_ratio: float = 0.0   # golden-prompt checks passed on the target
    min_feedback_score: float = 0.0      # mean user feedback score (agent POST /v1/feedback, 0..1)

    def __post_init__(self) -> None:
        for name in ("min_success_ratio", "max_failure_ratio", "max_error_rate", "min_golden_pass_ratio",
                     "min_feedback_score"):
            if not 0 <= getattr(self, name) <= 1:
                raise RolloutInvalid(f"gate.{name} must be within 0..1, got {getattr(self, name)}")
        if self.min_requests < 1 or self.max_p95_latency_ms < 0 or self.min_soak_s < 0 \
                or self.install_timeout_s <= 0:
            raise RolloutInvalid("gate: min_requests >= 1, latency/soak >= 0 and install_timeout_s > 0")


@dataclass(frozen=True)
class Selector:
    labels: Mapping[str, str] = field(default_factory=dict)
    hardware_classes: tuple[str, ...] = ()
    all_devices: bool = False

    def __post_init__(self) -> None:
        if not self.labels and not self.hardware_classes and not self.all_devices:
            raise RolloutInvalid("the selector is empty: give labels, hardware classes, or all_devices")

    def matches(self, dev: DeviceView) -> bool:
        return (all(dev.labels.get(k) == v for k, v in self.labels.items())
                and (not self.hardware_classes or dev.hardware_class in self.hardware_classes))


@dataclass(frozen=True)
class RolloutSpec:
    name: str
    version: str
    selector: Selector
    waves: tuple[Wave, ...] = (ALL,)
    max_per_minute: int = 0                      # 0 = no rate limit
    gate: Gate = field(default_factory=Gate)
    variants: Mapping[str, str] = field(default_factory=dict)   # hardware class -> version of the same model

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise RolloutInvalid("the rollout needs a model name and version")
        if not self.waves:
            raise RolloutInvalid("the rollout needs at least one wave")
        if self.waves[-1] != ALL:
            object.__setattr__(self, "waves", (*self.waves, ALL))
        pct = [w.percent for w in self.waves if w.percent]
        if pct != sorted(pct):
            raise RolloutInvalid(f"wave percentages must grow: {pct}")
        if self.max_per_minute < 0:
            raise RolloutInvalid("max_per_minute must not be negative")

    @classmethod
    def strategy(cls, kind: str, name: str, version: str, selector: Selector, *, canary: Wave | None = None,
                 waves: tuple[Wave, ...] = (), **kw) -> RolloutSpec:
        """`all` (one wave), `canary` (the canary wave, then everyone) or `waves` (the given waves)."""
        if kind == "all":
            return cls(name, version, selector, (ALL,), **kw)
        if kind == "canary":
            if canary is None:
                raise RolloutInvalid("a canary rollout needs the canary size (N devices or N%)")
            return cls(name, version, selector, (canary, ALL), **kw)
        if kind == "waves":
            if not waves:
                raise RolloutInvalid("a waves rollout needs its waves, e.g. 1%,10%,50%,100%")
            return cls(name, version, selector, tuple(waves), **kw)
        raise RolloutInvalid(f"unknown strategy {kind!r}: all, canary or waves")

    def target_for(self, hardware_class: str) -> Ref:
        return Ref(self.name, self.variants.get(hardware_class, self.version))


@dataclass(frozen=True)
class DeviceView:
    """What the engine knows of a device (from the devices table)."""
    device_id: str
    desired: Ref
    current: Ref
    state: str = ""
    message: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    hardware_class: str = ""
    pinned: Ref | None = None
    last_seen_ms: int = 0
    reported_ms: int = 0             # when the device last reported its state


@dataclass(frozen=True)
class Health:
    """Request telemetry of one device on its rollout target since it was assigned."""
    requests: int = 0
    errors: int = 0
    p95_latency_ms: float = 0.0
    golden: int = 0             # golden-prompt results on the target
    golden_passed: int = 0
    feedback: int = 0           # feedback scores on the target
    feedback_sum: float = 0.0


@dataclass(frozen=True)
class Assignment:
    device_id: str
    target: Ref
    previous: Ref
    wave: int
    assigned_ms: int
    succeeded_ms: int = 0
    failed_ms: int = 0
    why: str = ""

    @property
    def pending(self) -> bool:
        return not self.succeeded_ms and not self.failed_ms


@dataclass(frozen=True)
class Rollout:
    rollout_id: str
    spec: RolloutSpec
    created_ms: int
    status: str = RUNNING
    wave: int = 0
    reason: str = ""
    assignments: tuple[Assignment, ...] = ()

    def counts(self) -> dict[str, int]:
        ok = sum(1 for a in self.assignments if a.succeeded_ms and not a.failed_ms)
        bad = sum(1 for a in self.assignments if a.failed_ms)
        return {"assigned": len(self.assignments), "succeeded": ok, "failed": bad,
                "pending": len(self.assignments) - ok - bad}


@dataclass(frozen=True)
class Step:
    rollout: Rollout
    desired: dict[str, Ref]          # device id -> model it must be told to run now
    events: tuple[str, ...] = ()


def transition(status: str, event: str) -> str:
    nxt = TRANSITIONS.get((status, event))
    if nxt is None:
        raise TransitionRefused(f"cannot {event} a rollout that is {status}")
    return nxt


def standing_target(dev: DeviceView, fleet_default: tuple[Ref, int] | None,
                    completed: Iterable[tuple[RolloutSpec, int]]) -> Ref | None:
    """What a device outside any unfinished rollout should run (pure). Highest first: its pin; then the newest
    standing assignment that covers it: the fleet default (`rollout set`, with the ms it was set) or a completed
    rollout whose selector matches it (with the ms it completed), so a device that enrolls after a rollout
    completed gets that rollout's version. None when nothing covers it."""
    if dev.pinned is not None:
        return dev.pinned
    best = fleet_default
    for spec, done_ms in completed:
        if spec.selector.matches(dev) and (best is None or done_ms >= best[1]):
            best = (spec.target_for(dev.hardware_class), done_ms)
    return best[0] if best else None


def operator_event(r: Rollout, event: str, who: str) -> Rollout:
    """pause / resume / abort from an operator; TransitionRefused when the status does not allow it."""
    if event not in (PAUSE, RESUME, ABORT):
        raise TransitionRefused(f"{event!r} is not an operator action")
    return replace(r, status=transition(r.status, event), reason=f"{event} by {who}")


# ---- the step --------------------------------------------------------------------------------------
def step(r: Rollout, devices: Mapping[str, DeviceView], health: Mapping[str, Health], now_ms: int) -> Step:
    if r.status in TERMINAL:
        return Step(r, {})
    events: list[str] = []
    r = replace(r, assignments=tuple(_settle(a, devices.get(a.device_id), health.get(a.device_id), r.spec.gate,
                                             now_ms, events) for a in r.assignments))
    if r.status in ROLLING_BACK:
        return _roll_back(r, devices, events)
    c = r.counts()
    if c["assigned"] and c["failed"] / c["assigned"] > r.spec.gate.max_failure_ratio:
        return _halt(r, devices, f"failure ratio {c['failed']}/{c['assigned']} exceeds "
                                 f"{r.spec.gate.max_failure_ratio:g}", events)
    if r.status == RUNNING:
        r = _advance(r, devices, health, now_ms, events)
        if r.status == HALTING:
            return _roll_back(r, devices, events)
    desired = {a.device_id: a.target for a in r.assignments if a.pending}
    return Step(r, desired, tuple(events))


def _settle(a: Assignment, dev: DeviceView | None, h: Health | None, gate: Gate, now_ms: int,
            events: list[str]) -> Assignment:
    if a.failed_ms:
        return a
    why = ""
    if dev is None:
        why = "device was removed"
    elif (dev.state == "error" and str(a.target) in dev.message and dev.current != a.target
          and dev.reported_ms >= a.assigned_ms):
        why = f"install failed: {dev.message[:200]}"
    elif h and h.requests >= gate.min_requests and h.errors / h.requests > gate.max_error_rate:
        why = f"error rate {h.errors}/{h.requests} on {a.target} exceeds {gate.max_error_rate:g}"
    elif a.pending and dev.current == a.target and dev.state == "serving":
        events.append(f"{a.device_id} serves {a.target}")
        return replace(a, succeeded_ms=now_ms)
    elif a.pending and now_ms - a.assigned_ms > gate.install_timeout_s * 1000:
        why = f"not serving {a.target} after {gate.install_timeout_s:g} s"
    if why:
        events.append(f"{a.device_id} failed: {why}")
        return replace(a, failed_ms=now_ms, why=why)
    return a


def _halt(r: Rollout, devices, reason: str, events: list[str]) -> Step:
    events.append(f"halted: {reason}")
    return _roll_back(replace(r, status=transition(r.status, FAILURES), reason=reason), devices, events)


def _roll_back(r: Rollout, devices: Mapping[str, DeviceView], events: list[str]) -> Step:
    """Tells every assigned device to go back to its previous model; done once the store shows it."""
    desired = {a.device_id: a.previous for a in r.assignments if a.device_id in devices}
    if all(devices[d].desired == ref for d, ref in desired.items()):
        status = transition(r.status, ROLLED_BACK)
        events.append(f"{status}: {len(desired)} device(s) sent back to their previous model")
        return Step(replace(r, status=status), {}, tuple(events))
    return Step(r, desired, tuple(events))


def _eligible(r: Rollout, devices: Mapping[str, DeviceView], now_ms: int) -> list[DeviceView]:
    """Matching, unpinned devices, online ones first, in a stable per-rollout shuffled order."""
    def key(d: DeviceView):
        return (now_ms - d.last_seen_ms > OFFLINE_AFTER_MS, hashlib.sha256(f"{r.rollout_id}:{d.device_id}".encode()).hexdigest())
    return sorted((d for d in devices.values() if d.pinned is None and r.spec.selector.matches(d)), key=key)


def _advance(r: Rollout, devices, health, now_ms: int, events: list[str]) -> Rollout:
    assigned = {a.device_id for a in r.assignments}
    fleet = _eligible(r, devices, now_ms)
    size = len({d.device_id for d in fleet} | assigned)
    if size == 0:
        return replace(r, reason="waiting: no device matches the selector")
    while True:
        want = r.spec.waves[r.wave].size(size)
        if len(r.assignments) < want:
            return _assign(r, [d for d in fleet if d.device_id not in assigned], want, now_ms, events)
        wait = _gate(r, health, now_ms)
        if wait.startswith("halt:"):
            return replace(r, status=transition(r.status, FAILURES), reason=wait[len("halt: "):])
        if wait:
            return replace(r, reason=wait)
        if r.wave == len(r.spec.waves) - 1:
            events.append(f"completed: {r.counts()['succeeded']} device(s) serve the target")
            return replace(r, status=transition(r.status, DONE), reason="")
        events.append(f"wave {r.wave + 1} of {len(r.spec.waves)} passed its gate")
        r = replace(r, wave=r.wave + 1, reason="")


def _assign(r: Rollout, candidates: list[DeviceView], want: int, now_ms: int, events: list[str]) -> Rollout:
    n = want - len(r.assignments)
    reason = ""
    if r.spec.max_per_minute:
        recent = sum(1 for a in r.assignments if now_ms - a.assigned_ms < 60_000)
        room = max(0, r.spec.max_per_minute - recent)
        if room < n:
            n, reason = room, f"rate limited to {r.spec.max_per_minute} device(s) per minute"
    new = []
    for d in candidates[:n]:
        target = r.spec.target_for(d.hardware_class)
        new.append(Assignment(d.device_id, target, d.desired, r.wave, now_ms))
        events.append(f"{d.device_id} assigned {target} (wave {r.wave + 1}, was {d.desired})")
    return replace(r, assignments=r.assignments + tuple(new), reason=reason)


def _gate(r: Rollout, health: Mapping[str, Health], now_ms: int) -> str:
    """'' when the current wave may advance; 'halt: why' to stop; otherwise why it waits."""
    c, g = r.counts(), r.spec.gate
    if c["pending"]:
        return f"waiting: {c['pending']} device(s) still installing"
    ratio = c["succeeded"] / c["assigned"] if c["assigned"] else 1.0
    if ratio < g.min_success_ratio:
        return f"halt: install success ratio {ratio:.2f} is below {g.min_success_ratio:g}"
    if g.max_p95_latency_ms:
        worst = max((health[a.device_id].p95_latency_ms for a in r.assignments
                     if a.succeeded_ms and a.device_id in health), default=0.0)
        if worst > g.max_p95_latency_ms:
            return f"waiting: p95 latency {worst:.0f} ms exceeds {g.max_p95_latency_ms:g} ms"
    quality = _quality(r, health)
    if quality:
        return quality
    last = max((a.succeeded_ms for a in r.assignments if a.succeeded_ms), default=now_ms)
    if now_ms - last < g.min_soak_s * 1000:
        return f"waiting: soaking {(g.min_soak_s * 1000 - (now_ms - last)) / 1000:.0f} s more"
    return ""


def _quality(r: Rollout, health: Mapping[str, Health]) -> str:
    """The quality gates over the serving devices of the rollout: '' (pass or off), 'waiting: ...', 'halt: ...'."""
    g = r.spec.gate
    hs = [health[a.device_id] for a in r.assignments if a.succeeded_ms and a.device_id in health]
    for floor, n, total, what in (
            (g.min_golden_pass_ratio, sum(h.golden for h in hs), sum(h.golden_passed for h in hs),
             "golden pass rate"),
            (g.min_feedback_score, sum(h.feedback for h in hs), sum(h.feedback_sum for h in hs), "feedback score")):
        if not floor:
            continue
        if n < g.min_requests:
            return f"waiting: {n} of {g.min_requests} {what} samples on {r.spec.name}@{r.spec.version}"
        if total / n < floor:
            return f"halt: {what} {total / n:.2f} on {r.spec.name}@{r.spec.version} is below {floor:g} ({n} samples)"
    return ""


# ---- health from raw telemetry ---------------------------------------------------------------------
def health_from_events(events: list[dict], target: Ref) -> Health:
    """Request events (telemetry rows) of one device on `target`: server-side errors count, client ones not."""
    from control_plane.rollups import percentile

    reqs = [e for e in events if e["kind"] == "request" and e["model"] == str(target)]
    errors = sum(1 for e in reqs if e["outcome"] == "error" or e["outcome"].startswith("http_5"))
    golden = [e for e in events if e["kind"] == "golden" and e["model"] == str(target)]
    scores = [json.loads(e["vals"]).get("score") for e in events if e["kind"] == "event" and e.get("name") == "feedback"
              and e["model"] == str(target) and e.get("vals")]
    scores = [float(s) for s in scores if isinstance(s, (int, float))]
    return Health(len(reqs), errors, percentile([e["latency_ms"] for e in reqs if e["outcome"] == "ok"], 95),
                  len(golden), sum(1 for e in golden if e["outcome"] == "pass"), len(scores), sum(scores))


# ---- persistence (the driver stores this JSON) -----------------------------------------------------
def to_json(r: Rollout) -> str:
    d = asdict(replace(r, assignments=()))
    # dataclasses.asdict on 10,000 assignments took over a second per driver pass; this is the same JSON
    d["assignments"] = [{"assigned_ms": a.assigned_ms, "device_id": a.device_id, "failed_ms": a.failed_ms,
                         "previous": list(a.previous), "succeeded_ms": a.succeeded_ms, "target": list(a.target),
                         "wave": a.wave, "why": a.why} for a in r.assignments]
    return json.dumps(d, sort_keys=True)


@functools.lru_cache(maxsize=16)
def from_json(raw: str) -> Rollout:
    """The rollout saved as `raw`. Cached: the driver's pass and every GetRollout read the same saved JSON again
    (a megabyte at 10,000 devices) until it changes; a Rollout is immutable, so sharing one is safe."""
    d = json.loads(raw)
    s = d["spec"]
    spec = RolloutSpec(s["name"], s["version"], Selector(s["selector"]["labels"],
                                                         tuple(s["selector"]["hardware_classes"]),
                                                         s["selector"]["all_devices"]),
                       tuple(Wave(**w) for w in s["waves"]), s["max_per_minute"], Gate(**s["gate"]),
                       s["variants"])
    assignments = tuple(Assignment(**{**a, "target": Ref(*a["target"]), "previous": Ref(*a["previous"])})
                        for a in d["assignments"])
    return Rollout(d["rollout_id"], spec, d["created_ms"], d["status"], d["wave"], d["reason"], assignments)
