"""The agent's telemetry parts with in-memory fakes: Prometheus /metrics (parsed with prometheus_client's
parser), resource samples, the bounded outbox and its reported dropped counter, scheduled golden checks,
opt-in capture with redaction."""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.capture import CapturingServing, capture_record, load_redactor, redact_default
from edge_agent.golden import GoldenChecker, judge
from edge_agent.metrics import AgentMetrics
from edge_agent.openai_schema import GenRequest
from edge_agent.runtime import Runtime
from edge_agent.sampler import ResourceSampler
from edge_agent.serving import Outcome
from edge_agent.state import AgentState
from slmops.chat_format import CHATML, ChatFormat


@dataclass
class FakeGeneration:
    pieces: list
    completion_tokens: int = 0
    finish_reason: str = ""

    def __iter__(self):
        for p in self.pieces:
            self.completion_tokens += 1
            yield p
        self.finish_reason = "stop"


@dataclass
class FakeEngine:
    answer: str = "E17 means the filter is blocked"
    context_length: int = 256
    chat: ChatFormat = field(default_factory=lambda: ChatFormat.from_dict(CHATML))

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, prompt, params, cancelled=lambda: False):
        return FakeGeneration(re.findall(r"\S+\s*", self.answer)[: params.max_new_tokens])

    def generate_n(self, prompt, params, n=1, cancelled=lambda: False, adapter=None):
        return [self.generate(prompt, params, cancelled) for _ in range(n)]


@dataclass
class FakeManifest:
    name: str = "tiny"
    version: str = "v1"
    golden_prompts: tuple = ()
    generation: dict = field(default_factory=dict)
    chat_format: dict = field(default_factory=dict)

    @property
    def ref(self):
        return f"{self.name}@{self.version}"


def parse(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture
def state(tmp_path):
    return AgentState(tmp_path / "agent.db", max_outbox_rows=5)


def test_metrics_count_requests_events_and_read_live_gauges(state):
    rt = Runtime(2, 4)
    rt.swap(FakeEngine(), FakeManifest())
    m = AgentMetrics(rt, state)
    state.record("request", "chat", model="tiny@v1", latency_ms=300, first_token_ms=40, tokens_in=7, tokens_out=9)
    state.record("request", "chat", model="tiny@v1", latency_ms=2000, first_token_ms=90, tokens_in=3, tokens_out=5)
    state.record("request", "chat", model="tiny@v1", outcome="http_413", tokens_in=9000)
    state.record("event", "swap", model="tiny@v1")
    state.record("golden", "golden_0", model="tiny@v1", outcome="fail")
    got = parse(m.render())
    assert got[("slmops_agent_requests_total", (("endpoint", "chat"), ("model", "tiny@v1"), ("outcome", "ok")))] == 2
    assert got[("slmops_agent_requests_total",
                (("endpoint", "chat"), ("model", "tiny@v1"), ("outcome", "http_413")))] == 1
    assert got[("slmops_agent_request_latency_seconds_bucket", (("endpoint", "chat"), ("le", "0.5")))] == 1
    assert got[("slmops_agent_request_latency_seconds_bucket", (("endpoint", "chat"), ("le", "+Inf")))] == 2
    assert got[("slmops_agent_request_latency_seconds_sum", (("endpoint", "chat"),))] == pytest.approx(2.3)
    assert got[("slmops_agent_first_token_seconds_count", (("endpoint", "chat"),))] == 2
    assert got[("slmops_agent_tokens_total", (("direction", "out"),))] == 14
    assert got[("slmops_agent_events_total", (("name", "swap"), ("outcome", "ok")))] == 1
    assert got[("slmops_agent_golden_checks_total", (("outcome", "fail"),))] == 1
    assert got[("slmops_agent_model_info", (("model", "tiny@v1"),))] == 1
    assert got[("slmops_agent_queue_depth", ())] == 0
    assert got[("slmops_agent_telemetry_pending", ())] == 5
    assert got[("slmops_agent_telemetry_dropped", ())] == 0


def test_bounded_outbox_drops_oldest_and_samples_report_the_drop(state, tmp_path):
    rt = Runtime(1, 1)
    for i in range(8):
        state.record("request", "chat", detail=str(i))
    assert [r["detail"] for r in state.pending(10)] == ["3", "4", "5", "6", "7"]
    v = ResourceSampler(state, rt, tmp_path, interval_s=60, capture_rate=0.25).sample_once()
    assert v["telemetry_dropped"] == 3 and v["capture_rate"] == 0.25   # consent, as the control plane sees it
    assert v["rss_bytes"] > 0 and v["disk_free_bytes"] > 0 and v["cpu_percent"] >= 0 and v["queue_depth"] == 0
    sample = state.pending(10)[-1]
    assert (sample["kind"], sample["name"]) == ("sample", "resources")
    assert json.loads(sample["vals"])["telemetry_dropped"] == 3
    assert state.get("telemetry_dropped") == 4  # the sample itself pushed one more out; the next one says so


def test_golden_checks_record_pass_and_fail_per_prompt(state):
    rt = Runtime(1, 1)
    prompts = ({"messages": [{"role": "user", "content": "E17?"}], "max_tokens": 8, "expect_contains": "filter"},
               {"messages": [{"role": "user", "content": "E17?"}], "max_tokens": 8, "expect_contains": "pump"})
    rt.swap(FakeEngine(), FakeManifest(golden_prompts=prompts))
    checker = GoldenChecker(state, rt, interval_s=0)
    assert checker.check_once() == [True, False]
    rows = [r for r in state.pending(10) if r["kind"] == "golden"]
    assert [(r["name"], r["outcome"]) for r in rows] == [("golden_0", "pass"), ("golden_1", "fail")]
    assert "expected 'pump'" in rows[1]["detail"] and rows[0]["model"] == "tiny@v1"


def test_golden_check_before_a_model_is_loaded_is_skipped_not_failed(state):
    assert GoldenChecker(state, Runtime(1, 1), interval_s=0).check_once() == []
    assert state.pending(5)[0]["name"] == "golden_skipped"


def test_judge_is_pure():
    assert judge("the FILTER is blocked", 4, "filter") == (True, "")
    assert judge("", 0, None) == (False, "produced no tokens")


def test_redaction_masks_personal_data_and_a_custom_hook_loads():
    text = "mail ann@example.com or call +1 (555) 123-4567 from 10.0.0.12 about order 12"
    assert redact_default(text) == "mail [email] or call [number] from [ip] about order 12"
    assert load_redactor("") is redact_default
    assert load_redactor("string:capwords")("abc def") == "Abc Def"
    with pytest.raises(ValueError, match="module:function"):
        load_redactor("str.upper")


def test_capture_samples_requests_redacted(state):
    rt = Runtime(1, 1)
    rt.swap(FakeEngine(answer="write to help@kestrel.example now"), FakeManifest())
    s = CapturingServing(rt, state, 64, 16, 10.0, capture_rate=1.0, rng=random.Random(0))
    req = GenRequest(model="", messages=({"role": "user", "content": "I am bob@x.org, E17?"},), prompt=None,
                     max_tokens=8, temperature=None, top_p=None, top_k=None, seed=None, stop=(), stream=False)
    text = "".join(s.run(req, "chat", Outcome(model="")))
    assert "help@kestrel.example" in text  # the caller gets the real answer; only the capture is redacted
    cap = [r for r in state.pending(10) if r["kind"] == "capture"]
    assert len(cap) == 1
    assert json.loads(cap[0]["detail"]) == {"messages": [{"role": "user", "content": "I am [email], E17?"}],
                                             "response": "write to [email] now", "finish_reason": "stop"}
    off = CapturingServing(rt, state, 64, 16, 10.0, capture_rate=0.0)
    "".join(off.run(req, "chat", Outcome(model="")))
    assert len([r for r in state.pending(10) if r["kind"] == "capture"]) == 1
    items = list(s.run(req, "chat", Outcome(model=""), choices=True))   # as a stream asks: (choice, piece)
    assert {i for i, _ in items} == {0} and "".join(p for _, p in items) == text
    cap = [r for r in state.pending(10) if r["kind"] == "capture"]
    assert len(cap) == 2 and json.loads(cap[1]["detail"])["response"] == "write to [email] now"
    assert capture_record(req, "x" * 20000, redact_default) == ""


def test_a_captured_tool_call_keeps_the_call_redacted():
    req = GenRequest(model="", messages=({"role": "user", "content": "Mail bob@x.org the weather"},), prompt=None,
                     max_tokens=8, temperature=None, top_p=None, top_k=None, seed=None, stop=(), stream=False)
    call = {"id": "call_1", "type": "function",
            "function": {"name": "send_mail", "arguments": json.dumps({"to": "bob@x.org", "city": "Oslo"})}}
    rec = json.loads(capture_record(req, "", redact_default, "tool_calls", [call]))
    assert rec["tool_calls"] == [{"name": "send_mail", "arguments": json.dumps({"to": "[email]", "city": "Oslo"})}]
    assert rec["finish_reason"] == "tool_calls" and rec["response"] == ""
