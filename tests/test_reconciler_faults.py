"""The reconciler in-process against the fake control plane (tests/fake_control_plane.py), a real tiny ONNX
model, real SQLite and the real blob cache: faults injected at the client seam or into a state end in an event
and a state of the table, never in a dead loop, and the previous model keeps answering."""
from __future__ import annotations

import errno
import json
import threading
import time

import pytest

from edge_agent import update_fsm
from edge_agent.config import AgentConfig
from edge_agent.engine import OgaEngine
from edge_agent.reconciler import Reconciler, Update
from edge_agent.runtime import Runtime
from edge_agent.state import AgentState
from slmops.errors import TransportError
from slmops.manifest import Manifest
from tests.conftest import variant
from tests.fake_control_plane import FakeControlPlane


class Device:
    def __init__(self, tmp_path, **cfg):
        self.cp = FakeControlPlane(tmp_path / "cp-trust")
        self.cfg = AgentConfig(control_plane="127.0.0.1:1", data_dir=tmp_path / "agent", insecure_loopback_dev=True,
                               enroll_token="fake-token",
                               probation_s=cfg.pop("probation_s", 0), resync_s=0.2, backoff_initial_s=0.01,
                               backoff_max_s=0.05, failed_retry_s=cfg.pop("failed_retry_s", 600), **cfg)
        self.state = AgentState(self.cfg.data_dir / "agent.db")
        self.runtime = Runtime(2, 4)
        self.rec = Reconciler(self.cfg, self.state, self.runtime, OgaEngine, client=self.cp)
        self.rec.enroll()

    def events(self) -> list[str]:
        return [e["name"] for e in self.state.pending(10_000) if e["kind"] == "event"]

    def event(self, name: str) -> dict:
        return next(e for e in reversed(self.state.pending(10_000)) if e["name"] == name)

    def update(self) -> dict:
        return self.state.get("update")

    def serving(self) -> str:
        slot = self.runtime.slot
        return slot.manifest.ref if slot else ""

    def answers(self) -> str:
        """A real generation on the serving slot: the model keeps answering."""
        slot = self.runtime.slot
        prompt = slot.engine.chat.render([{"role": "user", "content": "What does E17 mean?"}])
        from edge_agent.engine import SamplingParams
        gen = slot.engine.generate(prompt, SamplingParams(max_new_tokens=4))
        "".join(gen)
        assert gen.completion_tokens > 0
        return slot.manifest.ref

    def apply_until_terminal(self, name, version, revision, limit=50):
        for _ in range(limit):
            try:
                self.rec.apply(name, version, revision)
            except TransportError:
                continue
            if (self.update() or {}).get("state") in update_fsm.TERMINAL:
                return self.update()["state"]
        raise AssertionError(f"no terminal state after {limit} applies: {self.update()}")


@pytest.fixture
def device(tmp_path, tiny_int4):
    d = Device(tmp_path)
    d.cp.publish(tiny_int4, "tiny", "v1")
    d.rec.apply("tiny", "v1", d.cp.assign("tiny", "v1"))
    assert d.serving() == "tiny@v1"
    return d


def forged(m: Manifest, **change) -> bytes:
    """The manifest's JSON with fields changed by hand (no validation on the way)."""
    d = json.loads(m.to_json())
    d.update(change)
    return json.dumps(d).encode()


@pytest.mark.parametrize("files", [
    lambda fs: fs + [dict(fs[0], path=".")],
    lambda fs: fs + [dict(fs[0], path="manifest.json")],
    lambda fs: fs + [dict(fs[0], path="base.json")],
    lambda fs: fs + [dict(fs[0], path="tokenizer.json\x00.x")],
    lambda fs: fs + [dict(fs[0], path="a"), dict(fs[0], path="a/b")],
], ids=["dot", "manifest.json", "base.json", "nul", "file-and-folder"])
def test_manifest_with_a_bad_path_signed_by_the_control_plane_costs_one_version(device, tiny_int4, tmp_path, files):
    m2 = device.cp.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2-good")
    bad = forged(m2, version="v2", files=files([f.to_dict() for f in m2.files]))
    device.cp.sign_manifest(bad, name="tiny", version="v2")
    assert device.apply_until_terminal("tiny", "v2", device.cp.assign("tiny", "v2")) == "failed"
    assert "verify_failed" in device.events()
    assert device.event("verify_failed")["detail"].startswith("file")
    assert device.answers() == "tiny@v1"
    # the next good version goes through: the loop is intact
    assert device.apply_until_terminal("tiny", "v2-good", device.cp.assign("tiny", "v2-good")) == "committed"
    assert device.answers() == "tiny@v2-good"


def test_oserror_in_a_state_is_an_event_and_a_failed_update(device, tiny_int4, tmp_path):
    device.cp.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2")

    def disk_error(args):
        raise OSError(errno.ENOSPC, "No space left on device")

    device.cp.fault("download", disk_error)
    rev = device.cp.assign("tiny", "v2")
    assert device.apply_until_terminal("tiny", "v2", rev) == "failed"
    assert "io_failed" in device.events() and "No space left" in device.event("io_failed")["detail"]
    assert device.answers() == "tiny@v1"
    device.cp.fault("download", None)
    assert device.apply_until_terminal("tiny", "v2", device.cp.assign("tiny", "v2")) == "committed"


def test_unexpected_exception_in_a_state_is_an_internal_error_event(device, tiny_int4, tmp_path):
    device.cp.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2")

    def bug(args):
        raise KeyError("surprise")

    device.cp.fault("trust_metadata", bug)
    assert device.apply_until_terminal("tiny", "v2", device.cp.assign("tiny", "v2")) == "failed"
    assert "KeyError" in device.event("internal_error")["detail"]
    assert device.answers() == "tiny@v1"


def test_transport_failures_retry_up_to_the_cap_then_fail(device, tiny_int4, tmp_path):
    device.cp.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2")

    def cut(args):
        raise TransportError("download: UNAVAILABLE: link cut")

    device.cp.fault("download", cut)
    assert device.apply_until_terminal("tiny", "v2", device.cp.assign("tiny", "v2")) == "failed"
    assert device.update()["retries"] == update_fsm.MAX_RETRIES
    assert "transport_failed" in device.events()
    assert device.answers() == "tiny@v1"


def test_failed_rollback_ends_in_rollback_failed_and_keeps_serving(device, tiny_int4, tmp_path):
    device.cp.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2")
    assert device.apply_until_terminal("tiny", "v2", device.cp.assign("tiny", "v2")) == "committed"
    # the agent was in rolling_back to v1 when it stopped, and v1 is gone from disk since
    import shutil
    shutil.rmtree(device.cfg.data_dir / "models" / "tiny" / "v1", ignore_errors=True)
    u = Update("tiny", "v2", 9, state="rolling_back", previous={"name": "tiny", "version": "v1"},
               error="probation: 5 of 5 requests failed")
    device.rec.save(u)
    device.rec.resume_saved()
    assert device.update()["state"] == "rollback_failed"
    assert "rollback_failed" in device.events()
    assert device.answers() == "tiny@v2"


def test_an_update_the_agent_died_in_too_often_is_given_up(device):
    u = Update("tiny", "v9", 3, state="installing", resumes=update_fsm.MAX_RESUMES)
    device.rec.save(u)
    device.rec.resume_saved()
    assert device.update()["state"] == "failed"
    assert "tiny@v9" in device.state.get("bad")
    assert "update_abandoned" in device.events()
    assert device.answers() == "tiny@v1"


def test_an_unreadable_saved_update_is_dropped(device):
    device.state.put("update", {"name": "tiny", "version": "v1", "revision": 1, "state": "no-such-state"})
    device.rec.resume_saved()
    device.state.put("update", ["not", "a", "record"])
    device.rec.resume_saved()
    assert device.update() is None
    assert device.answers() == "tiny@v1"


def test_the_run_loop_survives_bad_work_and_keeps_applying(device, tiny_int4, tmp_path):
    device.cp.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2")
    t = threading.Thread(target=device.rec.run, daemon=True)
    t.start()
    try:
        for junk in [("bogus",), ("desired",), ("sideload", tmp_path / "missing.slmops.tar")]:
            device.rec.work.put(junk)
        device.cp.assign("tiny", "v2")   # through the fake's watch stream
        deadline = time.monotonic() + 120
        while device.serving() != "tiny@v2":
            assert t.is_alive() and time.monotonic() < deadline, device.update()
            time.sleep(0.1)
        assert "agent_error" in device.events()
        assert device.answers() == "tiny@v2"
    finally:
        device.rec.stop.set()
        device.cp.close()
        t.join(30)


def test_metadata_signed_by_another_repository_is_refused_in_process(device, tiny_int4, tmp_path):
    attacker = FakeControlPlane(tmp_path / "attacker-trust")   # its own keys, not the ones the device pinned
    attacker.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2")
    device.rec.client = device.cp = attacker
    assert device.apply_until_terminal("tiny", "v2", attacker.assign("tiny", "v2")) == "failed"
    assert device.event("verify_failed")["detail"].startswith("untrusted signature")
    assert device.answers() == "tiny@v1"


def test_expired_metadata_is_refused_in_process(device, tiny_int4, tmp_path):
    import datetime as dt

    from control_plane.trust_repo import utcnow

    device.cp.now = lambda: utcnow() - dt.timedelta(days=3)   # signs with expiry dates already past
    device.cp.publish(variant(tiny_int4, tmp_path / "v2", 5), "tiny", "v2")
    assert device.apply_until_terminal("tiny", "v2", device.cp.assign("tiny", "v2")) == "failed"
    assert device.event("verify_failed")["detail"].startswith("freeze")
    assert device.answers() == "tiny@v1"


def test_an_unreadable_enroll_token_file_is_one_clear_event_not_a_dead_thread(tmp_path):
    token = tmp_path / "token"
    token.write_text("t\n")
    cfg = AgentConfig(control_plane="127.0.0.1:1", data_dir=tmp_path / "agent", insecure_loopback_dev=True,
                      enroll_token_file=token)
    token.unlink()   # gone between start-up and enrollment
    state = AgentState(cfg.data_dir / "agent.db")
    cp = FakeControlPlane(tmp_path / "cp-trust")
    rec = Reconciler(cfg, state, Runtime(2, 4), OgaEngine, client=cp)
    rec.watch()   # returns instead of raising
    ev = [e for e in state.pending(100) if e["name"] == "enroll_refused"]
    assert ev and "cannot be read" in ev[0]["detail"]
    assert cp.calls.get("enroll", 0) == 0 and state.get("identity") is None
