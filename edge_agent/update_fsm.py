"""The update lifecycle as data. Each state does one thing and emits one event; this table says where the
event leads. The reconciler saves the state in SQLite *before* acting on it, so after a kill it looks up
RESUME to find a safe point. Pure: no I/O here.

    idle -> fetching_metadata -> fetching_chunks -> verifying -> installing -> loading -> smoke_test
         -> switching -> probation -> committed
    any state before probation --fail--> failed         (the serving model was never touched)
    fetching_* --retry--> the same state                 (control plane away; capped by MAX_RETRIES)
    probation --fail--> rolling_back -> rolled_back      (the previous version serves again)
    rolling_back --fail--> rollback_failed               (the previous version could not be loaded: the new
                                                          one keeps serving, reported)

Events: "ok", "fail", "retry". The table is closed: every non-terminal state has an edge for "ok" and "fail",
so whatever a state raises ends in a state of this table (tests/test_update_fsm.py walks it).
"""
from __future__ import annotations

STATES = ("idle", "fetching_metadata", "fetching_chunks", "verifying", "installing", "loading", "smoke_test",
          "switching", "probation", "committed", "failed", "rolling_back", "rolled_back", "rollback_failed")
TERMINAL = ("idle", "committed", "failed", "rolled_back", "rollback_failed")
EVENTS = ("ok", "fail", "retry")
RETRYABLE = ("fetching_metadata", "fetching_chunks")   # the states that talk to the control plane

TRANSITIONS: dict[tuple[str, str], str] = {
    ("idle", "start"): "fetching_metadata",
    ("fetching_metadata", "ok"): "fetching_chunks",
    ("fetching_chunks", "ok"): "verifying",
    ("verifying", "ok"): "installing",
    ("installing", "ok"): "loading",
    ("loading", "ok"): "smoke_test",
    ("smoke_test", "ok"): "switching",
    ("switching", "ok"): "probation",
    ("probation", "ok"): "committed",
    ("probation", "fail"): "rolling_back",
    ("rolling_back", "ok"): "rolled_back",
    ("rolling_back", "fail"): "rollback_failed",
    **{(s, "fail"): "failed" for s in ("fetching_metadata", "fetching_chunks", "verifying", "installing",
                                        "loading", "smoke_test", "switching")},
    **{(s, "retry"): s for s in RETRYABLE},
}

# Where to continue after a restart found the update saved in this state.
RESUME: dict[str, str] = {
    "fetching_metadata": "fetching_metadata",
    "fetching_chunks": "fetching_chunks",      # .part files resume; verified chunks are kept
    "verifying": "fetching_chunks",            # re-check every file (cheap when all are present)
    "installing": "installing",                # install is idempotent: staging is discarded, dest is whole
    "loading": "loading",                      # counted: a version that kills the process on load is capped
    "smoke_test": "loading",
    "switching": "switching",                  # decided by what `current` says was switched to
    "probation": "probation",                  # the new version serves (restored from disk); watch again
    "rolling_back": "rolling_back",
}

MAX_LOAD_ATTEMPTS = 2   # loads that ended in a crash before a version is marked bad for good
MAX_RESUMES = 3         # restarts found one update past downloading (the agent died in it) before it is given up
MAX_RETRIES = 8         # transport failures of one update in a row before it fails (and cools down)
MAX_STEPS = 4 * len(STATES)   # transitions in one drive: a loop cap, should a table edit ever make a cycle


def next_state(state: str, event: str) -> str:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise ValueError(f"no transition from {state!r} on {event!r}") from None


def event_for(state: str, retryable_error: bool, retries: int) -> str:
    """The event a state's exception becomes: "retry" for a transport failure in a state that may retry,
    until MAX_RETRIES; else "fail"."""
    if retryable_error and state in RETRYABLE and retries < MAX_RETRIES:
        return "retry"
    return "fail"


def resume_point(saved_state: str) -> str | None:
    """None when the saved state needs no work (terminal) or is unknown (a newer or damaged record)."""
    return RESUME.get(saved_state)


def crash_looping(load_attempts: int) -> bool:
    return load_attempts >= MAX_LOAD_ATTEMPTS


def resumed_too_often(resumes: int) -> bool:
    return resumes > MAX_RESUMES
