"""The I/O shell around the pure rollout engine (control_plane/rollouts.py): every second, or at once when an
operator acts, it reads the fleet and the telemetry, steps each unfinished rollout, saves the new state, and
only then applies the desired models through Store.set_desired (which bumps revisions and wakes the devices'
watch streams). Because the state is saved before acting and the engine re-sends what is still pending, a
control plane restart at any point resumes the rollout.

Several control planes on one database (replicas) each run a driver, and the leader lease lets one step; but
operators act on whichever replica they reach. So every change of a saved rollout is written only if the row
still holds what the writer read (`save(..., expect=)`, decided by the database): the driver that loses skips
acting on its step and steps again next pass; an operator's change (`change`) reads again and re-applies. New
rollouts are checked against the unfinished ones under a database-wide lock (`create`), so two replicas never
both start rollouts that hold the same device.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import threading
import time
from collections import defaultdict

from control_plane import rollouts as ro
from control_plane.store import Store
from slmops.errors import SlmopsError

log = logging.getLogger("slmops.rollouts")
UNFINISHED = ro.ACTIVE + ro.ROLLING_BACK
ROLLOUTS_LOCK = 0x534C4D52   # pg_advisory_xact_lock key ("SLMR"): one replica creates a rollout at a time
CHANGE_TRIES = 20            # an operator's change re-read this often while others keep writing the rollout


class RolloutRefused(SlmopsError):
    """A new rollout cannot start: no unpinned device matches it, or it would hold a device an unfinished
    rollout holds (the message says which)."""


class RolloutContended(SlmopsError):
    """A rollout changed under an operator's change CHANGE_TRIES times in a row; try again."""


def device_view(row: dict) -> ro.DeviceView:
    hw = json.loads(row.get("hardware") or "{}")
    pin = ro.Ref(row["pin_name"], row["pin_version"]) if row.get("pin_name") else None
    return ro.DeviceView(row["device_id"], ro.Ref(row["desired_name"] or "", row["desired_version"] or ""),
                         ro.Ref(row["current_name"] or "", row["current_version"] or ""), row["state"] or "",
                         row["message"] or "", json.loads(row.get("labels") or "{}"), hw.get("hardware_class", ""),
                         pin, row["last_seen_ms"] or 0, row.get("reported_ms") or 0)


def fleet(store: Store) -> dict[str, ro.DeviceView]:
    return {r["device_id"]: device_view(r) for r in store.devices()}


def health(store: Store, r: ro.Rollout) -> dict[str, ro.Health]:
    """Request telemetry of each watched device on its target since it was assigned (one query)."""
    watched = {a.device_id: a for a in r.assignments if not a.failed_ms}
    if not watched or r.status not in ro.ACTIVE:
        return {}
    since = min(a.assigned_ms for a in watched.values())
    rows = defaultdict(list)
    for e in store.telemetry(None, since):
        a = watched.get(e["device_id"])
        if a and e["ts_ms"] >= a.assigned_ms:
            rows[e["device_id"]].append(e)
    return {did: ro.health_from_events(evs, watched[did].target) for did, evs in rows.items()}


def load(store: Store, rollout_id: str) -> ro.Rollout | None:
    row = store.rollout_row(rollout_id)
    return ro.from_json(row["state"]) if row else None


def save(store: Store, r: ro.Rollout, created_by: str = "", expect: str | None = None) -> bool:
    """Writes the rollout; with `expect` (the saved JSON it was read as) only if the row still holds it.
    Returns whether it was written."""
    return store.save_rollout(r.rollout_id, r.status, ro.to_json(r), created_by, expect)


def change(store: Store, rollout_id: str, fn) -> ro.Rollout | None:
    """Applies `fn` (Rollout -> Rollout, pure; may raise ro.TransitionRefused) to the saved rollout and writes
    the result only if nobody wrote the rollout since it was read, else reads it again. Returns the rollout as
    written, or None when there is no such rollout."""
    with store.rollouts_lock:
        for _ in range(CHANGE_TRIES):
            row = store.rollout_row(rollout_id)
            if row is None:
                return None
            r = ro.from_json(row["state"])
            new = fn(r)
            if new == r or save(store, new, expect=row["state"]):
                return new
    raise RolloutContended(f"rollout {rollout_id} changed {CHANGE_TRIES} times while this change was made; "
                           "try again")


def create(store: Store, spec: ro.RolloutSpec, created_by: str) -> ro.Rollout:
    """Saves a new rollout of `spec`, or raises RolloutRefused. The check against unfinished rollouts and the
    insert run under a database-wide lock: another replica creating one at once waits, then sees this one."""
    devices = fleet(store)
    chosen = {d for d, v in devices.items() if spec.selector.matches(v) and v.pinned is None}
    if not chosen:
        raise RolloutRefused(f"the selector {json.dumps(dataclasses.asdict(spec.selector))} matches no unpinned "
                             "device")
    with store.rollouts_lock, store.exclusive(ROLLOUTS_LOCK):
        for row in store.rollout_rows(UNFINISHED):
            other = ro.from_json(row["state"])
            overlap = sorted(chosen & ({d for d, v in devices.items() if other.spec.selector.matches(v)}
                                       | {a.device_id for a in other.assignments}))
            if overlap:
                raise RolloutRefused(f"device {overlap[0]} (and {len(overlap) - 1} more) is already in rollout "
                                     f"{other.rollout_id} ({other.status}); abort it or let it finish first")
        r = ro.Rollout("ro_" + secrets.token_hex(4), spec, int(time.time() * 1000))
        save(store, r, created_by=created_by)
    store.rollouts_changed.set()
    return r


def apply_desired(store: Store, desired: dict[str, ro.Ref], devices: dict[str, ro.DeviceView]) -> int:
    """Sets only what differs from the store, one set_desired per model version."""
    by_ref = defaultdict(list)
    for did, ref in desired.items():
        if did in devices and devices[did].desired != ref:
            by_ref[ref].append(did)
    for ref, ids in by_ref.items():
        store.set_desired(ref.name, ref.version, ids)
    return sum(len(ids) for ids in by_ref.values())


def assign_standing(store: Store, device_id: str) -> ro.Ref | None:
    """Points a newly enrolled device at its standing assignment (rollouts.standing_target): the newest of the
    fleet default and the completed rollouts whose selector matches it. Returns what it is told to run."""
    row = store.device(device_id)
    if row is None:
        return None
    view = device_view(row)
    default = store.fleet_default()
    default_at = (ro.Ref(*default), int(store.get_meta("fleet_default_ms") or 0)) if default else None
    completed = [(ro.from_json(r["state"]).spec, r["updated_ms"] or 0) for r in store.rollout_rows((ro.COMPLETED,))]
    target = ro.standing_target(view, default_at, completed)
    if target is not None and target != view.desired:
        store.set_desired(target.name, target.version, [device_id])
    return target


def step_all(store: Store, now_ms: int | None = None) -> list[str]:
    """One pass over every unfinished rollout; returns the engine's events."""
    out: list[str] = []
    with store.rollouts_lock:
        rows = store.rollout_rows(UNFINISHED)
        if not rows:
            return out
        devices = fleet(store)
        for row in rows:
            r = ro.from_json(row["state"])
            s = ro.step(r, devices, health(store, r), now_ms or int(time.time() * 1000))
            # saved before acting (a restart resumes here), and only over what this pass read: an operator's
            # change on another replica meanwhile wins, and this rollout is stepped again from it next pass
            if s.rollout != r and not save(store, s.rollout, expect=row["state"]):
                log.info("rollout %s changed while it was stepped; stepped again next pass", r.rollout_id)
                store.rollouts_changed.set()
                continue
            changed = apply_desired(store, s.desired, devices)
            if changed:
                devices = fleet(store)
            for e in s.events:
                log.info("rollout %s: %s", r.rollout_id, e)
            if (s.rollout.status, s.rollout.wave) != (r.status, r.wave):
                store.audit("rollout-engine", "", "RolloutStep", r.rollout_id, "OK",
                            f"{r.status} wave {r.wave + 1} -> {s.rollout.status} wave {s.rollout.wave + 1}: "
                            + "; ".join(e for e in s.events if not e.startswith("dev"))[:900])
            out += s.events
    return out


class RolloutDriver:
    def __init__(self, store: Store, interval_s: float = 1.0):
        self.store = store
        self.interval_s = interval_s
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, name="rollout-driver", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.store.rollouts_changed.set()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.store.rollouts_changed.clear()
            t0 = time.monotonic()
            try:
                if self.store.leader.held():   # of several replicas on one database, one drives
                    step_all(self.store)
            except Exception:  # keep driving; the next pass starts from the saved state again
                log.exception("rollout pass failed")
            # A pass over ten thousand devices costs about a second of CPU (and the GIL): waiting at least twice
            # that long leaves the gRPC event loop two thirds of the time while a large rollout runs.
            self.store.rollouts_changed.wait(max(self.interval_s, 2 * (time.monotonic() - t0)))
