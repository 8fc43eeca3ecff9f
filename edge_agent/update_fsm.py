"""The update lifecycle as data. Each state does one thing and emits one event; this table says where the
event leads. The reconciler saves the state in SQLite *before* acting on it, so after a kill it looks up
RESUME to find a safe point. Pure: no I/O here.

    idle -> fetching_metadata -> fetching_chunks -> verifying -> installing -> loading -> smoke_test
         -> switching -> probation -> committed
    any state before switching --fail--> failed        (the serving model was never touched)
    probation --fail--> rolling_back -> rolled_back    (the previous version serves again)
"""
from __future__ import annotations

STATES = ("idle", "fetching_metadata", "fetching_chunks", "verifying", "installing", "loading", "smoke_test",
          "switching", "probation", "committed", "failed", "rolling_back", "rolled_back")
TERMINAL = ("idle", "committed", "failed", "rolled_back")

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
    **{(s, "fail"): "failed" for s in ("fetching_metadata", "fetching_chunks", "verifying", "installing",
                                        "loading", "smoke_test", "switching")},
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


def next_state(state: str, event: str) -> str:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise ValueError(f"no transition from {state!r} on {event!r}") from None


def resume_point(saved_state: str) -> str | None:
    """None when the saved state needs no work (terminal)."""
    return RESUME.get(saved_state)


def crash_looping(load_attempts: int) -> bool:
    return load_attempts >= MAX_LOAD_ATTEMPTS
