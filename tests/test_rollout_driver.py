"""The rollout driver's writes when several control planes share one database (replicas): each Store here is one
replica's. The driver's step never overwrites an operator's change made meanwhile (nor the reverse), and two
replicas creating rollouts that hold the same device at once start one of them. SQLite, then PostgreSQL (-m pg)."""
from __future__ import annotations

import threading
import time

import pytest

from control_plane import rollout_driver
from control_plane import rollouts as ro
from control_plane.store import Store


def spec(version: str = "v2") -> ro.RolloutSpec:
    return ro.RolloutSpec.strategy("waves", "m", version, ro.Selector(all_devices=True),
                                   waves=(ro.Wave(devices=1),))


@pytest.fixture
def replicas(state_url):
    """Two Stores on one database (the driver's, the operator's) and two devices told m@v1."""
    a, b = Store(state_url), Store(state_url)
    for name in ("d1", "d2"):
        a.add_device(name, {}, "test")
    a.set_desired("m", "v1", None)
    yield a, b
    a.stop_listening()
    b.stop_listening()


def assigned_versions(store: Store) -> set[str]:
    return {r["version"] for r in store.db.query("select version from device_assigned")}


def test_a_driver_step_never_overwrites_an_operator_change_made_meanwhile(replicas, monkeypatch):
    a, b = replicas
    r = rollout_driver.create(b, spec(), "op")
    real = ro.step

    def abort_meanwhile(rollout, *args):   # the operator aborts on the other replica while the driver steps
        if rollout.status == ro.RUNNING and not rollout.assignments:
            rollout_driver.change(b, r.rollout_id, lambda x: ro.operator_event(x, ro.ABORT, "op"))
        return real(rollout, *args)

    monkeypatch.setattr(ro, "step", abort_meanwhile)
    rollout_driver.step_all(a)
    saved = rollout_driver.load(a, r.rollout_id)
    assert saved.status == ro.ABORTING and not saved.assignments   # the abort stands; the step was dropped
    assert assigned_versions(a) == {"v1"}, "a device was told v2 after the rollout was aborted"
    rollout_driver.step_all(a)   # the next pass steps from the operator's state
    assert rollout_driver.load(a, r.rollout_id).status == ro.ABORTED
    assert {d["desired_version"] for d in a.devices()} == {"v1"} and assigned_versions(a) == {"v1"}


def test_an_operator_change_reapplies_over_a_driver_step_that_landed_meanwhile(replicas):
    a, b = replicas
    r = rollout_driver.create(b, spec(), "op")
    calls = []

    def pause(x: ro.Rollout) -> ro.Rollout:
        calls.append(len(x.assignments))
        if len(calls) == 1:
            rollout_driver.step_all(a)   # the driver (other replica) assigns the canary after this read
        return ro.operator_event(x, ro.PAUSE, "op")

    paused = rollout_driver.change(b, r.rollout_id, pause)
    assert calls == [0, 1], "the change was not read again after the driver's write"
    saved = rollout_driver.load(a, r.rollout_id)
    assert saved == paused and saved.status == ro.PAUSED and len(saved.assignments) == 1   # both changes kept


def test_a_change_of_a_rollout_that_is_not_there_is_none(replicas):
    assert rollout_driver.change(replicas[1], "ro_nope", lambda x: x) is None


@pytest.mark.pg
def test_two_replicas_creating_rollouts_of_the_same_devices_at_once_start_one(pg_url):
    a, b = Store(pg_url), Store(pg_url)
    try:
        a.add_device("d1", {}, "test")
        read = a.rollout_rows

        def slow(*args):   # a reads the unfinished rollouts, then takes its time before inserting its own
            rows = read(*args)
            time.sleep(0.5)
            return rows

        a.rollout_rows = slow
        made, errors = [], []
        t = threading.Thread(target=lambda: made.append(rollout_driver.create(a, spec("v2"), "op-a")))
        t.start()
        time.sleep(0.15)
        try:
            made.append(rollout_driver.create(b, spec("v3"), "op-b"))
        except rollout_driver.RolloutRefused as e:
            errors.append(str(e))
        t.join(10)
        assert len(made) == 1 and made[0].spec.version == "v2", made
        assert errors and "is already in rollout" in errors[0]
        assert [r["rollout_id"] for r in b.rollout_rows(rollout_driver.UNFINISHED)] == [made[0].rollout_id]
    finally:
        a.stop_listening()
        b.stop_listening()


def test_a_pipeline_starts_and_aborts_its_rollout_on_the_same_paths(replicas):
    from control_plane.pipelines import delivery

    a, b = replicas
    cfg = {"selector": {"all_devices": True}, "strategy": "all", "waves": [], "max_devices_per_minute": 0,
           "gate": {}}
    rid = delivery.start_rollout(a, cfg, "m", "v2", "pipeline")
    with pytest.raises(delivery.DeliveryFailed, match=f"is already in rollout {rid}"):
        delivery.start_rollout(b, cfg, "m", "v3", "pipeline")
    with pytest.raises(delivery.DeliveryFailed, match="matches no unpinned device"):
        delivery.start_rollout(b, {**cfg, "selector": {"labels": {"site": "mars"}}}, "m", "v3", "pipeline")
    delivery.abort_rollout(b, rid, "pipeline")
    assert rollout_driver.load(a, rid).status == ro.ABORTING
    delivery.abort_rollout(b, rid, "pipeline")   # already rolling back: left as it is
    assert rollout_driver.load(a, rid).status == ro.ABORTING
