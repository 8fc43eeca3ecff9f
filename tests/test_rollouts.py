"""Table-driven tests of the pure rollout engine: strategies, gates, halt, rollback, pause, restart."""
from __future__ import annotations

from dataclasses import replace

import pytest

from control_plane import rollouts as ro
from control_plane.rollouts import (
    ALL,
    DeviceView,
    Gate,
    Health,
    Ref,
    Rollout,
    RolloutInvalid,
    RolloutSpec,
    Selector,
    TransitionRefused,
    Wave,
)

OLD, NEW = Ref("m", "v1"), Ref("m", "v2")
EVERYONE = Selector(all_devices=True)
T0 = 1_000_000


class Fleet:
    """An in-memory fleet: the store's desired state plus agents that install (or fail) what they are told."""

    def __init__(self, n: int, failing: set[str] = frozenset(), hw: dict | None = None, labels: dict | None = None):
        self.devices = {f"d{i:03d}": DeviceView(f"d{i:03d}", OLD, OLD, "serving", "",
                                                (labels or {}).get(f"d{i:03d}", {}),
                                                (hw or {}).get(f"d{i:03d}", "cpu"), None, T0, T0)
                        for i in range(n)}
        self.failing = set(failing)
        self.health: dict[str, Health] = {}

    def apply(self, desired: dict[str, Ref]) -> None:
        for did, ref in desired.items():
            self.devices[did] = replace(self.devices[did], desired=ref)

    def agents_act(self, now: int) -> None:
        for did, d in self.devices.items():
            if d.desired == d.current:
                continue
            if did in self.failing and d.desired != OLD:
                self.devices[did] = replace(d, state="error", reported_ms=now,
                                            message=f"load_failed for {d.desired}: garbage model.onnx")
            else:
                self.devices[did] = replace(d, current=d.desired, state="serving", message="", reported_ms=now)

    def step(self, r: Rollout, now: int, act: bool = True) -> ro.Step:
        s = ro.step(r, self.devices, self.health, now)
        self.apply(s.desired)
        if act:
            self.agents_act(now)
        return s

    def run(self, r: Rollout, start: int = T0, until: str | None = None, steps: int = 50, dt: int = 1000):
        now = start
        for _ in range(steps):
            r = self.step(r, now).rollout
            if r.status in ro.TERMINAL or r.status == until:
                break
            now += dt
        return r, now

    def on(self, ref: Ref) -> int:
        return sum(1 for d in self.devices.values() if d.current == ref)


def rollout(spec: RolloutSpec) -> Rollout:
    return Rollout("r1", spec, T0)


def spec(**kw) -> RolloutSpec:
    kw.setdefault("selector", EVERYONE)
    return RolloutSpec("m", "v2", **kw)


# ---- strategies: how many devices each wave assigns --------------------------------------------------
@pytest.mark.parametrize("name,waves,fleet,sizes", [
    ("all at once", (ALL,), 5, [5]),
    ("canary 2 devices", (Wave(devices=2), ALL), 10, [2, 10]),
    ("canary 10 percent", (Wave(percent=10), ALL), 20, [2, 20]),
    ("canary percent rounds up to one", (Wave(percent=1), ALL), 20, [1, 20]),
    ("waves 1/10/50/100 percent", (Wave(percent=1), Wave(percent=10), Wave(percent=50), ALL), 100,
     [1, 10, 50, 100]),
    ("last wave 100 percent is implied", (Wave(devices=3),), 6, [3, 6]),
])
def test_each_wave_assigns_its_cumulative_size_once_the_previous_passed(name, waves, fleet, sizes):
    f = Fleet(fleet)
    r = rollout(spec(waves=waves))
    seen, now = [], T0
    for _ in range(20):
        r = f.step(r, now, act=False).rollout    # settle what agents did, pass the gate, assign the next wave
        if not seen or seen[-1] != len(r.assignments):
            seen.append(len(r.assignments))
        if r.status == ro.COMPLETED:
            break
        assert r.status == ro.RUNNING
        f.agents_act(now)
        now += 1000
    assert seen == sizes
    assert r.status == ro.COMPLETED and f.on(NEW) == fleet


def test_strategy_constructor_names_and_errors():
    assert RolloutSpec.strategy("all", "m", "v2", EVERYONE).waves == (ALL,)
    assert RolloutSpec.strategy("canary", "m", "v2", EVERYONE, canary=Wave(devices=1)).waves == \
        (Wave(devices=1), ALL)
    with pytest.raises(RolloutInvalid, match="canary size"):
        RolloutSpec.strategy("canary", "m", "v2", EVERYONE)
    with pytest.raises(RolloutInvalid, match="unknown strategy 'blue'"):
        RolloutSpec.strategy("blue", "m", "v2", EVERYONE)


@pytest.mark.parametrize("make,match", [
    (lambda: Selector(), "selector is empty"),
    (lambda: Wave(), "a wave is N devices"),
    (lambda: Wave(devices=1, percent=5), "a wave is N devices"),
    (lambda: Wave(percent=150), "a wave is N devices"),
    (lambda: spec(waves=(Wave(percent=50), Wave(percent=10), ALL)), "percentages must grow"),
    (lambda: Gate(max_failure_ratio=2), "gate.max_failure_ratio"),
    (lambda: spec(max_per_minute=-1), "max_per_minute"),
    (lambda: RolloutSpec("m", "", EVERYONE), "name and version"),
])
def test_invalid_specs_are_refused_with_the_field_named(make, match):
    with pytest.raises(RolloutInvalid, match=match):
        make()


# ---- gates ------------------------------------------------------------------------------------------
def test_pending_devices_hold_the_next_wave():
    f = Fleet(10)
    r = f.step(rollout(spec(waves=(Wave(devices=2), ALL))), T0, act=False).rollout
    r = f.step(r, T0 + 1, act=False).rollout
    assert len(r.assignments) == 2 and "2 device(s) still installing" in r.reason


def test_soak_time_holds_the_next_wave_until_it_has_passed():
    f = Fleet(10)
    r = rollout(spec(waves=(Wave(devices=2), ALL), gate=Gate(min_soak_s=30)))
    r = f.step(r, T0).rollout                 # canary assigned and (instantly) installed
    r = f.step(r, T0 + 1000).rollout          # success observed at T0+1000
    r = f.step(r, T0 + 20_000).rollout
    assert len(r.assignments) == 2 and r.reason.startswith("waiting: soaking")
    r = f.step(r, T0 + 31_000).rollout
    assert len(r.assignments) == 10


def test_latency_gate_holds_the_next_wave():
    f = Fleet(10)
    r = rollout(spec(waves=(Wave(devices=1), ALL), gate=Gate(max_p95_latency_ms=500)))
    r = f.step(r, T0).rollout
    canary = r.assignments[0].device_id
    f.health[canary] = Health(requests=20, errors=0, p95_latency_ms=900)
    r = f.step(r, T0 + 1000).rollout
    assert len(r.assignments) == 1 and "p95 latency 900 ms exceeds 500 ms" in r.reason
    f.health[canary] = Health(requests=40, errors=0, p95_latency_ms=300)
    r = f.step(r, T0 + 2000).rollout
    assert len(r.assignments) == 10


def test_low_install_success_ratio_halts_when_the_wave_settles():
    f = Fleet(10, failing={"d000", "d001", "d002", "d003", "d004", "d005", "d006", "d007", "d008", "d009"})
    r = rollout(spec(gate=Gate(max_failure_ratio=1.0, min_success_ratio=0.9)))
    r, _ = f.run(r)
    assert r.status == ro.HALTED and "install success ratio 0.00" in r.reason
    assert f.on(OLD) == 10 and all(d.desired == OLD for d in f.devices.values())


def test_error_rate_on_the_new_version_fails_the_device_and_halts():
    f = Fleet(4)
    r = rollout(spec(waves=(Wave(devices=1), ALL), gate=Gate(max_error_rate=0.1, min_requests=10)))
    r = f.step(r, T0).rollout
    canary = r.assignments[0].device_id
    f.health[canary] = Health(requests=10, errors=3)
    r = f.step(r, T0 + 1000).rollout
    assert r.status in (ro.HALTING, ro.HALTED) and "failure ratio 1/1" in r.reason
    assert "error rate 3/10" in r.assignments[0].why
    assert f.devices[canary].desired == OLD


def test_install_timeout_counts_as_failure():
    f = Fleet(3)
    r = rollout(spec(gate=Gate(install_timeout_s=60, max_failure_ratio=0.5)))
    r = f.step(r, T0, act=False).rollout
    f.devices["d000"] = replace(f.devices["d000"], current=NEW, state="serving")
    r = f.step(r, T0 + 61_000, act=False).rollout
    assert r.status in (ro.HALTING, ro.HALTED)
    assert sorted(a.device_id for a in r.assignments if a.failed_ms) == ["d001", "d002"]
    assert "not serving m@v2 after 60 s" in r.assignments[1].why


def test_an_error_reported_before_the_assignment_is_not_blamed_on_it():
    f = Fleet(1)
    f.devices["d000"] = replace(f.devices["d000"], state="error", message=f"load_failed for {NEW}: old news",
                                reported_ms=T0 - 5000)
    r = f.step(rollout(spec()), T0, act=False).rollout
    r = f.step(r, T0 + 1000, act=False).rollout
    assert r.status == ro.RUNNING and r.assignments[0].pending


# ---- halt and rollback ------------------------------------------------------------------------------
def test_failing_canary_halts_and_every_assigned_device_returns_to_its_previous_model():
    f = Fleet(10, failing={"d003"})
    f.devices = {k: replace(v, last_seen_ms=0 if k != "d003" else T0) for k, v in f.devices.items()}  # d003 online
    r = rollout(spec(waves=(Wave(devices=1), ALL)))
    s = f.step(r, T0)
    assert [a.device_id for a in s.rollout.assignments] == ["d003"]     # online devices are picked first
    s = f.step(s.rollout, T0 + 1000)
    assert s.rollout.status == ro.HALTING and s.desired == {"d003": OLD}
    assert any("halted: failure ratio 1/1" in e for e in s.events)
    s = f.step(s.rollout, T0 + 2000)
    assert s.rollout.status == ro.HALTED and s.desired == {}
    assert f.devices["d003"].desired == OLD and f.on(NEW) == 0
    assert f.step(s.rollout, T0 + 3000).desired == {}                      # terminal: no more decisions


def test_failure_ratio_below_the_threshold_keeps_going():
    f = Fleet(10, failing={"d005"})
    r, _ = f.run(rollout(spec(gate=Gate(max_failure_ratio=0.2, min_success_ratio=0.8))))
    assert r.status == ro.COMPLETED and r.counts() == {"assigned": 10, "succeeded": 9, "failed": 1, "pending": 0}


def test_rollback_is_repeated_until_the_store_shows_it():
    f = Fleet(2, failing={"d000", "d001"})
    r = f.step(rollout(spec()), T0).rollout
    s = ro.step(r, f.devices, {}, T0 + 1000)                 # the driver crashes before applying it
    assert s.rollout.status == ro.HALTING
    s2 = ro.step(s.rollout, f.devices, {}, T0 + 2000)        # after restart: the same rollback again
    assert s2.desired == {"d000": OLD, "d001": OLD} and s2.rollout.status == ro.HALTING
    f.apply(s2.desired)
    assert ro.step(s2.rollout, f.devices, {}, T0 + 3000).rollout.status == ro.HALTED


# ---- rate limit, pause, resume, abort ---------------------------------------------------------------
def test_rate_limit_assigns_at_most_n_devices_per_minute():
    f = Fleet(7)
    r = rollout(spec(max_per_minute=3))
    counts = []
    for t in (0, 10_000, 59_000, 61_000, 100_000, 122_000):
        r = f.step(r, T0 + t).rollout
        counts.append(len(r.assignments))
    assert counts == [3, 3, 3, 6, 6, 7]
    first = Fleet(7).step(rollout(spec(max_per_minute=3)), T0, act=False).rollout
    assert first.reason == "rate limited to 3 device(s) per minute"


@pytest.mark.parametrize("status,event,expect", [
    (ro.RUNNING, ro.PAUSE, ro.PAUSED),
    (ro.PAUSED, ro.RESUME, ro.RUNNING),
    (ro.RUNNING, ro.ABORT, ro.ABORTING),
    (ro.PAUSED, ro.ABORT, ro.ABORTING),
    (ro.RUNNING, ro.RESUME, TransitionRefused),
    (ro.PAUSED, ro.PAUSE, TransitionRefused),
    (ro.COMPLETED, ro.ABORT, TransitionRefused),
    (ro.HALTED, ro.RESUME, TransitionRefused),
    (ro.ABORTED, ro.PAUSE, TransitionRefused),
    (ro.HALTING, ro.PAUSE, TransitionRefused),
])
def test_operator_events_follow_the_table(status, event, expect):
    r = replace(rollout(spec()), status=status)
    if expect is TransitionRefused:
        with pytest.raises(TransitionRefused, match=f"cannot {event} a rollout that is {status}"):
            ro.operator_event(r, event, "alice")
    else:
        out = ro.operator_event(r, event, "alice")
        assert out.status == expect and out.reason == f"{event} by alice"


def test_pause_stops_new_assignments_and_resume_continues():
    f = Fleet(10)
    r = f.step(rollout(spec(waves=(Wave(devices=2), ALL))), T0).rollout
    r = ro.operator_event(r, ro.PAUSE, "op")
    r, _ = f.run(r, T0 + 1000, steps=5)
    assert r.status == ro.PAUSED and len(r.assignments) == 2
    r = ro.operator_event(r, ro.RESUME, "op")
    r, _ = f.run(r, T0 + 10_000)
    assert r.status == ro.COMPLETED and f.on(NEW) == 10


def test_a_paused_rollout_still_halts_on_failures():
    f = Fleet(4, failing={"d000", "d001", "d002", "d003"})
    r = f.step(rollout(spec(waves=(Wave(devices=2), ALL))), T0).rollout
    r = ro.operator_event(r, ro.PAUSE, "op")
    r, _ = f.run(r, T0 + 1000)
    assert r.status == ro.HALTED and f.on(NEW) == 0


def test_abort_rolls_back_what_was_assigned():
    f = Fleet(10)
    r = f.step(rollout(spec(waves=(Wave(devices=3), ALL))), T0).rollout
    r = f.step(r, T0 + 1000).rollout
    r = ro.operator_event(r, ro.ABORT, "op")
    r, _ = f.run(r, T0 + 2000)
    assert r.status == ro.ABORTED and all(d.desired == OLD for d in f.devices.values())
    f.agents_act(T0 + 9000)
    assert f.on(OLD) == 10


# ---- restart: the persisted state resumes exactly ---------------------------------------------------
def test_restart_mid_rollout_resumes_from_the_saved_json():
    f = Fleet(20, failing={"d017"}, labels={f"d{i:03d}": {"site": "a"} for i in range(20)})
    r = rollout(spec(waves=(Wave(percent=10), Wave(percent=50), ALL), max_per_minute=8,
                     gate=Gate(min_soak_s=5, max_failure_ratio=0.6, min_success_ratio=0.4),
                     variants={"gpu": "v2-gpu"}, selector=Selector(labels={"site": "a"})))
    r, now = f.run(r, steps=8)
    assert r.status == ro.RUNNING and 0 < len(r.assignments) < 20
    restored = ro.from_json(ro.to_json(r))
    assert restored == r
    a, _ = Fleet.run(f, restored, now + 1000, steps=200)
    assert a.status in (ro.COMPLETED, ro.HALTED)


def test_restart_reapplies_pending_desired_state():
    f = Fleet(3)
    r = ro.step(rollout(spec()), f.devices, {}, T0).rollout      # saved, then crash before set_desired
    s = ro.step(ro.from_json(ro.to_json(r)), f.devices, {}, T0 + 1000)
    assert s.desired == {d: NEW for d in f.devices}


# ---- pinning, variants, selectors -------------------------------------------------------------------
def test_pinned_devices_are_left_out():
    f = Fleet(4)
    f.devices["d001"] = replace(f.devices["d001"], pinned=OLD)
    r, _ = f.run(rollout(spec()))
    assert r.status == ro.COMPLETED and "d001" not in {a.device_id for a in r.assignments}
    assert f.devices["d001"].current == OLD and f.on(NEW) == 3


def test_variant_by_hardware_class():
    f = Fleet(3, hw={"d000": "gpu", "d001": "npu"})
    r, _ = f.run(rollout(spec(variants={"gpu": "v2-cuda"})))
    assert r.status == ro.COMPLETED
    assert f.devices["d000"].current == Ref("m", "v2-cuda")
    assert f.devices["d001"].current == NEW and f.devices["d002"].current == NEW


@pytest.mark.parametrize("selector,expect", [
    (Selector(labels={"site": "berlin"}), {"d000", "d002"}),
    (Selector(labels={"site": "berlin", "ring": "beta"}), {"d002"}),
    (Selector(hardware_classes=("gpu",)), {"d001", "d002"}),
    (Selector(labels={"site": "berlin"}, hardware_classes=("gpu",)), {"d002"}),
    (Selector(all_devices=True), {"d000", "d001", "d002", "d003"}),
])
def test_selectors_over_labels_and_hardware(selector, expect):
    f = Fleet(4, hw={"d001": "gpu", "d002": "gpu"},
              labels={"d000": {"site": "berlin"}, "d002": {"site": "berlin", "ring": "beta"}})
    r, _ = f.run(rollout(spec(selector=selector)))
    assert {a.device_id for a in r.assignments} == expect


def test_no_matching_device_waits_and_picks_up_devices_that_enroll_later():
    f = Fleet(2)
    r = f.step(rollout(spec(selector=Selector(labels={"site": "x"}))), T0).rollout
    assert r.status == ro.RUNNING and r.reason == "waiting: no device matches the selector"
    f.devices["d000"] = replace(f.devices["d000"], labels={"site": "x"})
    r, _ = f.run(r, T0 + 1000)
    assert r.status == ro.COMPLETED and f.devices["d000"].current == NEW


def test_health_from_events_counts_server_errors_on_the_target_only():
    rows = [{"kind": "request", "model": "m@v2", "outcome": "ok", "latency_ms": 100},
            {"kind": "request", "model": "m@v2", "outcome": "error", "latency_ms": 5},
            {"kind": "request", "model": "m@v2", "outcome": "http_400", "latency_ms": 1},
            {"kind": "request", "model": "m@v1", "outcome": "error", "latency_ms": 1},
            {"kind": "event", "model": "m@v2", "outcome": "error", "latency_ms": 0}]
    assert ro.health_from_events(rows, NEW) == Health(requests=3, errors=1, p95_latency_ms=100)


def test_standing_target_is_the_pin_else_the_newest_covering_assignment():
    from control_plane.rollouts import DeviceView, Ref, RolloutSpec, Selector, standing_target

    berlin = DeviceView("d", Ref("", ""), Ref("", ""), labels={"site": "berlin"}, hardware_class="cpu")
    v1, v2, v3 = Ref("m", "v1"), Ref("m", "v2"), Ref("m", "v3")
    to_berlin = RolloutSpec.strategy("all", "m", "v2", Selector({"site": "berlin"}))
    to_gpus = RolloutSpec.strategy("all", "m", "v3", Selector(hardware_classes=("gpu",)))
    cases = [  # (device, fleet default (ref, set ms), completed (spec, done ms), expected)
        (berlin, None, [], None),
        (berlin, (v1, 10), [], v1),
        (berlin, (v1, 10), [(to_berlin, 20)], v2),            # completed after the default: it stands
        (berlin, (v1, 30), [(to_berlin, 20)], v1),            # `rollout set` after it: the default stands
        (berlin, (v1, 10), [(to_gpus, 20)], v1),              # not covered by that selector
        (berlin, None, [(to_berlin, 5), (to_gpus, 9)], v2),
        (DeviceView("d", Ref("", ""), Ref("", ""), pinned=v3), (v1, 10), [(to_berlin, 20)], v3),
    ]
    for dev, default, completed, want in cases:
        assert standing_target(dev, default, completed) == want, (dev, default, completed)


@pytest.mark.parametrize("gate, waiting, poor, good, halt_words", [
    (Gate(min_golden_pass_ratio=0.8, min_requests=5), "waiting: 2 of 5 golden pass rate samples",
     Health(requests=20, golden=10, golden_passed=5), Health(requests=20, golden=10, golden_passed=9),
     "golden pass rate 0.50 on m@v2 is below 0.8 (10 samples)"),
    (Gate(min_feedback_score=0.6, min_requests=5), "waiting: 2 of 5 feedback score samples",
     Health(requests=20, feedback=10, feedback_sum=3.0), Health(requests=20, feedback=10, feedback_sum=8.0),
     "feedback score 0.30 on m@v2 is below 0.6 (10 samples)"),
])
def test_quality_gates_hold_the_canary_then_pass_or_halt_it(gate, waiting, poor, good, halt_words):
    def canary_with(health: Health) -> list[Rollout]:
        f = Fleet(10)
        r = f.step(rollout(spec(waves=(Wave(devices=1), ALL), gate=gate)), T0).rollout
        f.health[r.assignments[0].device_id] = Health(requests=20, golden=2, golden_passed=2, feedback=2,
                                                      feedback_sum=2.0)
        held = f.step(r, T0 + 1000).rollout
        f.health[r.assignments[0].device_id] = health
        return [held, f.step(held, T0 + 2000).rollout]
    held, passed = canary_with(good)
    assert len(held.assignments) == 1 and waiting in held.reason
    assert len(passed.assignments) == 10 and passed.status == ro.RUNNING
    _, halted = canary_with(poor)
    assert halted.status in (ro.HALTING, ro.HALTED) and halt_words in halted.reason


def test_health_counts_golden_results_and_feedback_on_the_target_only():
    target = Ref("support", "v2")
    rows = [{"kind": "golden", "model": "support@v2", "outcome": "pass"},
            {"kind": "golden", "model": "support@v2", "outcome": "fail"},
            {"kind": "golden", "model": "support@v1", "outcome": "pass"},
            {"kind": "event", "name": "feedback", "model": "support@v2", "vals": '{"score": 0.5}'},
            {"kind": "event", "name": "feedback", "model": "support@v1", "vals": '{"score": 1}'},
            {"kind": "event", "name": "swap", "model": "support@v2", "vals": ""}]
    h = ro.health_from_events(rows, target)
    assert (h.golden, h.golden_passed, h.feedback, h.feedback_sum) == (2, 1, 1, 0.5)


def test_quality_gates_travel_over_the_admin_api_and_are_bounded():
    from control_plane.fleet_admin import rollout_pb, spec_from
    from slmops.v1 import admin_pb2, common_pb2

    req = admin_pb2.CreateRolloutRequest(
        model=common_pb2.ModelRef(name="m", version="v2"), selector=admin_pb2.Selector(all_devices=True),
        gate=admin_pb2.HealthGate(min_golden_pass_ratio=0.9, min_feedback_score=0.5))
    s = spec_from(req)
    assert (s.gate.min_golden_pass_ratio, s.gate.min_feedback_score) == (0.9, 0.5)
    back = rollout_pb(Rollout("r1", s, T0)).gate
    assert (back.min_golden_pass_ratio, back.min_feedback_score) == (0.9, 0.5)
    with pytest.raises(ro.RolloutInvalid, match="gate.min_feedback_score"):
        Gate(min_feedback_score=1.5)


def test_saved_json_is_every_field_of_the_rollout_and_reads_back_equal():
    import dataclasses
    import json

    spec = ro.RolloutSpec("m", "v2", ro.Selector(labels={"site": "a"}), waves=(ro.Wave(percent=10), ro.ALL))
    r = ro.Rollout("ro_1", spec, 5, wave=1, reason="waiting", assignments=(
        ro.Assignment("d1", ro.Ref("m", "v2"), ro.Ref("m", "v1"), 0, 7, succeeded_ms=9),
        ro.Assignment("d2", ro.Ref("m", "v2"), ro.Ref("", ""), 1, 8, failed_ms=10, why="install failed: x")))
    assert ro.to_json(r) == json.dumps(dataclasses.asdict(r), sort_keys=True)   # a new field is not dropped
    assert ro.from_json(ro.to_json(r)) == r
