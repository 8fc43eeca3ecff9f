"""Scheduled quality checks: the served model answers the manifest's golden prompts (messages, max_tokens,
expect_contains) every `interval_s`, and each answer is recorded as a "golden" event with outcome pass/fail,
so drift shows up in telemetry and can gate rollouts. A check takes a generation slot like any request, so
it never overloads the device; when the device is busy the check is skipped and recorded as such."""
from __future__ import annotations

import logging
import threading
import time

from edge_agent.engine import SamplingParams
from edge_agent.runtime import NotReady, QueueFull

log = logging.getLogger("slmops.agent.golden")


def judge(text: str, completion_tokens: int, expect_contains: str | None) -> tuple[bool, str]:
    """(passed, why). Pure: the same rule as the install-time smoke test, without raising."""
    if completion_tokens == 0:
        return False, "produced no tokens"
    if expect_contains and expect_contains.lower() not in text.lower():
        return False, f"expected {expect_contains!r} in {text[:120]!r}"
    return True, ""


class GoldenChecker:
    def __init__(self, state, runtime, interval_s: float, wait_s: float = 30.0):
        self.state, self.runtime, self.interval_s, self.wait_s = state, runtime, interval_s, wait_s
        self.stop = threading.Event()

    def check_once(self) -> list[bool]:
        """Runs every golden prompt of the served model; returns pass/fail per prompt ([] when none)."""
        try:
            with self.runtime.admit(wait_s=self.wait_s) as slot:
                m, engine = slot.manifest, slot.engine
                results = []
                for i, gp in enumerate(m.golden_prompts):
                    t0 = time.monotonic()
                    gen = engine.generate(engine.chat.render(list(gp["messages"])),
                                          SamplingParams(max_new_tokens=int(gp.get("max_tokens", 16))))
                    text = "".join(gen)
                    ok, why = judge(text, gen.completion_tokens, gp.get("expect_contains"))
                    self.state.record("golden", f"golden_{i}", model=m.ref,
                                      latency_ms=(time.monotonic() - t0) * 1000, tokens_out=gen.completion_tokens,
                                      outcome="pass" if ok else "fail", detail=why)
                    results.append(ok)
                return results
        except (NotReady, QueueFull) as e:
            self.state.record("event", "golden_skipped", outcome="skipped", detail=str(e))
            return []

    def run(self) -> None:
        if self.interval_s <= 0:
            return
        while not self.stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception as e:  # an engine failure is a failed check, not a dead thread
                log.exception("golden check failed")
                self.state.record("golden", "golden_error", outcome="fail", detail=f"{type(e).__name__}: {e}")
