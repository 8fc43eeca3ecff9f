"""Fault injection for the crash tests, read from the environment once. Both are inert unless set.

SLMOPS_TEST_PAUSE_IN_STATE=STATE   the agent stops (sleeps) when an update enters STATE, so a test can
                                   SIGKILL it exactly there ("STATE@VERSION" limits it to one version)
SLMOPS_TEST_CRASH_ON_LOAD=VERSION  the process dies (exit 70) while loading VERSION, like a native crash
"""
from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("slmops.agent.faults")
_PAUSE = os.environ.get("SLMOPS_TEST_PAUSE_IN_STATE", "")
_CRASH = os.environ.get("SLMOPS_TEST_CRASH_ON_LOAD", "")


def maybe_pause(state: str, version: str) -> None:
    if not _PAUSE:
        return
    want_state, _, want_version = _PAUSE.partition("@")
    if state == want_state and (not want_version or want_version == version):
        log.warning("test hook: pausing in state %s", state)
        sys.stderr.flush()
        while True:
            time.sleep(3600)


def maybe_crash_on_load(version: str) -> None:
    if _CRASH and _CRASH == version:
        log.error("test hook: crashing while loading %s", version)
        sys.stderr.flush()
        os._exit(70)
