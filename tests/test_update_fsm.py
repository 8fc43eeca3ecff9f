"""The update table is closed: from every state, every event a state can emit leads to a state of the table,
every path ends in a terminal state, and a saved state maps to a resume point."""
from __future__ import annotations

import pytest

from edge_agent import update_fsm as fsm

ACTIVE = [s for s in fsm.STATES if s not in fsm.TERMINAL]


@pytest.mark.parametrize("state", ACTIVE)
def test_every_active_state_has_an_ok_and_a_fail_edge(state):
    assert fsm.next_state(state, "ok") in fsm.STATES
    assert fsm.next_state(state, "fail") in fsm.STATES


def test_a_failed_rollback_has_an_edge_and_is_terminal():
    assert fsm.next_state("rolling_back", "fail") == "rollback_failed"
    assert "rollback_failed" in fsm.TERMINAL


def test_every_state_reaches_a_terminal_state_on_any_events():
    for state in ACTIVE:
        frontier, seen = {state}, set()
        while frontier:
            s = frontier.pop()
            seen.add(s)
            for event in ("ok", "fail"):
                nxt = fsm.next_state(s, event)
                if nxt not in fsm.TERMINAL and nxt not in seen:
                    frontier.add(nxt)
        assert len(seen) < fsm.MAX_STEPS


def test_failure_before_probation_never_touches_the_serving_model():
    for s in ("fetching_metadata", "fetching_chunks", "verifying", "installing", "loading", "smoke_test"):
        assert fsm.next_state(s, "fail") == "failed"
    assert fsm.next_state("probation", "fail") == "rolling_back"


@pytest.mark.parametrize("state,transport,retries,event", [
    ("fetching_metadata", True, 0, "retry"), ("fetching_chunks", True, fsm.MAX_RETRIES - 1, "retry"),
    ("fetching_chunks", True, fsm.MAX_RETRIES, "fail"), ("fetching_chunks", False, 0, "fail"),
    ("installing", True, 0, "fail"), ("probation", True, 0, "fail"), ("rolling_back", True, 0, "fail"),
])
def test_event_for_an_error(state, transport, retries, event):
    assert fsm.event_for(state, transport, retries) == event
    assert fsm.next_state(state, event) in fsm.STATES


def test_retry_stays_in_its_state_and_unknown_edges_are_named():
    for s in fsm.RETRYABLE:
        assert fsm.next_state(s, "retry") == s
    with pytest.raises(ValueError, match="no transition from 'committed'"):
        fsm.next_state("committed", "ok")


@pytest.mark.parametrize("state", ACTIVE[1:])   # idle is never saved as an update's state
def test_every_saved_state_has_a_resume_point(state):
    assert fsm.resume_point(state) in fsm.STATES
    assert fsm.resume_point("not-a-state") is None


def test_caps():
    assert not fsm.crash_looping(fsm.MAX_LOAD_ATTEMPTS - 1) and fsm.crash_looping(fsm.MAX_LOAD_ATTEMPTS)
    assert not fsm.resumed_too_often(fsm.MAX_RESUMES) and fsm.resumed_too_often(fsm.MAX_RESUMES + 1)
