"""Makes the device serve what the control plane wants: restore what was serving, enroll once, watch the
desired state, and for each change fetch -> verify -> install -> load -> smoke test -> switch. Any refusal
is recorded as an event and reported; the serving model is never touched by a failed update.
"""
from __future__ import annotations

import logging
import pathlib
import platform
import shutil
import threading
import time

import datetime as dt

from edge_agent import installer, trust
from edge_agent.config import AGENT_VERSION, AgentConfig
from edge_agent.control_client import Backoff, ControlClient, Refused
from edge_agent.engine import SamplingParams
from edge_agent.fetcher import BlobCache
from edge_agent.runtime import Runtime
from edge_agent.state import AgentState
from edge_agent.fetcher import sha256_of
from edge_agent.verify import check_file
from slmops.errors import ArtifactInvalid, ModelLoadError, TransportError
from slmops.manifest import FileEntry, Manifest
from slmops.v1 import common_pb2

log = logging.getLogger("slmops.agent")


def hardware_facts(data_dir) -> common_pb2.Hardware:
    import onnxruntime
    import psutil

    providers = [p.replace("ExecutionProvider", "").lower() for p in onnxruntime.get_available_providers()]
    return common_pb2.Hardware(hardware_class="gpu" if "cuda" in providers else "cpu",
                               execution_providers=providers, ram_bytes=psutil.virtual_memory().total,
                               disk_free_bytes=shutil.disk_usage(data_dir).free, arch=platform.machine())


def smoke_test(engine, manifest: Manifest) -> None:
    """Runs the manifest's golden prompts (or one short generation) on a freshly loaded engine."""
    prompts = manifest.golden_prompts or ({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},)
    for i, gp in enumerate(prompts):
        prompt = engine.chat.render(gp["messages"])
        gen = engine.generate(prompt, SamplingParams(max_new_tokens=int(gp.get("max_tokens", 16))))
        text = "".join(gen)
        want = gp.get("expect_contains")
        if want and want.lower() not in text.lower():
            raise ModelLoadError(f"golden prompt {i} failed: expected {want!r} in {text[:120]!r}")
        if gen.completion_tokens == 0:
            raise ModelLoadError(f"golden prompt {i} produced no tokens")


class Reconciler:
    def __init__(self, cfg: AgentConfig, state: AgentState, runtime: Runtime, engine_factory,
                 client: ControlClient | None = None):
        self.cfg = cfg
        self.state = state
        self.runtime = runtime
        self.engine_factory = engine_factory
        self.client = client or ControlClient(cfg.control_plane)
        self.blobs = BlobCache(cfg.data_dir / "blobs")
        self.models_dir = cfg.data_dir / "models"
        self.stop = threading.Event()
        self.device_id = ""
        self.last_failure = ""

    # ---- start-up ---------------------------------------------------------------------------------
    def restore(self) -> None:
        """Serve what was serving before a restart, after re-checking its signature and every file."""
        installer.remove_stale_staging(self.models_dir)
        cur = self.state.get("current")
        if not cur:
            return
        path = self.models_dir / cur["name"] / cur["version"]
        m = None
        try:
            raw = (path / "manifest.json").read_bytes()
            trust.installed_is_trusted(self.trusted(), cur["name"], cur["version"], raw)
            m = Manifest.from_json(raw)
            for f in m.files:
                check_file(f, sha256_of(path / f.path), (path / f.path).stat().st_size)
            engine = self.engine_factory(path, m)
            self.runtime.swap(engine, m)
            log.info("restored %s from disk", m.ref)
        except (OSError, ArtifactInvalid, ModelLoadError, TypeError, ValueError) as e:
            log.error("installed model %s@%s is damaged (%s); it will be fetched again", cur["name"],
                      cur["version"], e)
            self.state.record("event", "restore_failed", model=f"{cur['name']}@{cur['version']}",
                              outcome="error", detail=str(e))
            shutil.rmtree(path, ignore_errors=True)
            for f in (m.files if m else ()):
                self.blobs.path(f.sha256).unlink(missing_ok=True)
            self.state.put("current", None)

    # ---- trusted metadata (persisted, so a restart keeps its knowledge of versions) -------------------
    def trusted(self) -> trust.Trusted:
        saved = self.state.get("trust")
        if saved is None:
            raise ArtifactInvalid("no trusted root: enroll first or start with --trusted-root")
        return trust.Trusted(**{k: bytes.fromhex(v) if v else None for k, v in saved.items()})

    def save_trusted(self, t: trust.Trusted) -> None:
        self.state.put("trust", {k: getattr(t, k).hex() if getattr(t, k) else None
                                 for k in ("root", "timestamp", "snapshot", "targets")})

    def enroll(self) -> None:
        if self.cfg.trusted_root and self.state.get("trust") is None:
            self.save_trusted(trust.Trusted(root=pathlib.Path(self.cfg.trusted_root).read_bytes()))
        ident = self.state.get("identity")
        if ident:
            self.device_id, self.client.token = ident["device_id"], ident["token"]
            return
        if not self.cfg.enroll_token:
            raise ArtifactInvalid("this agent is not enrolled yet: pass --enroll-token")
        backoff = Backoff(self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
        name = self.cfg.device_name or platform.node()
        while not self.stop.is_set():
            try:
                resp = self.client.enroll(self.cfg.enroll_token, name, hardware_facts(self.cfg.data_dir),
                                          AGENT_VERSION)
                break
            except TransportError as e:
                delay = backoff.next()
                log.warning("control plane %s not reachable (%s); retrying enrollment in %.1f s",
                            self.cfg.control_plane, e, delay)
                self.stop.wait(delay)
        else:
            return
        if self.state.get("trust") is None:
            self.save_trusted(trust.Trusted(root=resp.trusted_root))
        self.state.put("identity", {"device_id": resp.device_id, "token": resp.device_token, "name": name})
        self.device_id, self.client.token = resp.device_id, resp.device_token
        log.info("enrolled as %s", resp.device_id)

    # ---- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        self.restore()
        try:
            self.enroll()
        except Refused as e:
            log.error("enrollment refused: %s", e)
            self.state.record("event", "enroll_refused", outcome="error", detail=str(e))
            return
        backoff = Backoff(self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
        reported_hw = False
        while not self.stop.is_set():
            try:
                if not reported_hw:
                    self.report("starting", hardware=hardware_facts(self.cfg.data_dir))
                    reported_hw = True
                for desired in self.client.watch(self.device_id):
                    backoff.reset()
                    if self.stop.is_set():
                        return
                    self.apply(desired.model.name, desired.model.version, desired.revision)
            except (TransportError, Refused) as e:
                if self.stop.is_set():
                    return
                delay = backoff.next()
                log.warning("control plane %s: %s; reconnecting in %.1f s", self.cfg.control_plane, e, delay)
                self.stop.wait(delay)

    def report(self, state: str, message: str = "", hardware=None) -> None:
        slot = self.runtime.slot
        name, version = (slot.manifest.name, slot.manifest.version) if slot else ("", "")
        self.client.report(self.device_id, name, version, state, message, hardware)

    def apply(self, name: str, version: str, revision: int) -> None:
        slot = self.runtime.slot
        if not name or (slot and (slot.manifest.name, slot.manifest.version) == (name, version)):
            self.report("serving" if slot else "idle")
            return
        failed = self.state.get("failed", {})
        ref = f"{name}@{version}"
        if failed.get(ref) == revision:
            return  # already refused for this very assignment; wait for a new one
        try:
            self.update(name, version)
        except (ArtifactInvalid, ModelLoadError) as e:
            kind = "verify_failed" if isinstance(e, ArtifactInvalid) else "load_failed"
            log.error("refused %s: %s", ref, e)
            self.last_failure = f"{kind}: {e}"
            self.state.record("event", kind, model=ref, outcome="error", detail=str(e))
            failed[ref] = revision
            self.state.put("failed", failed)
            self.report("error", f"{kind} for {ref}: {e}")
        except Refused as e:
            log.error("control plane refused %s: %s", ref, e)
            self.state.record("event", "fetch_refused", model=ref, outcome="error", detail=str(e))
            failed[ref] = revision
            self.state.put("failed", failed)
            self.report("error", f"fetch refused for {ref}: {e}")

    def verified_manifest(self, name: str, version: str) -> tuple[Manifest, bytes]:
        """Fresh signed metadata -> the target for name@version -> its manifest, each step verified."""
        md = self.client.trust_metadata(trust.root_version(self.trusted()))
        new_trusted, targets = trust.update(
            self.trusted(), trust.Fetched(tuple(md.roots), md.timestamp, md.snapshot, md.targets),
            dt.datetime.now(dt.timezone.utc))
        self.save_trusted(new_trusted)
        target = trust.find_target(targets, name, version)
        hw = hardware_facts(self.cfg.data_dir)
        trust.check_fit(target, hw.hardware_class, list(hw.execution_providers))
        entry = FileEntry("manifest.json", target.hashes["sha256"], target.length)
        path = self.blobs.fetch(entry, self.client.download, self.cfg.min_download_rate_bps)
        raw = path.read_bytes()
        trust.check_manifest(target, raw)
        m = Manifest.from_json(raw)
        if (m.name, m.version) != (name, version):
            raise ArtifactInvalid(f"mix-and-match: target {target.path} holds a manifest for {m.ref}")
        return m, raw

    def update(self, name: str, version: str) -> None:
        ref = f"{name}@{version}"
        t0 = time.monotonic()
        self.report("fetching", ref)
        m, manifest_bytes = self.verified_manifest(name, version)
        for f in m.files:
            self.blobs.fetch(f, self.client.download, self.cfg.min_download_rate_bps)
        self.state.record("event", "download", model=ref, latency_ms=(time.monotonic() - t0) * 1000,
                          detail=f"{m.total_bytes} bytes")
        self.report("installing", ref)
        path = installer.install(m, manifest_bytes, self.blobs.path, self.models_dir)
        engine = self.engine_factory(path, m)
        smoke_test(engine, m)
        old = self.runtime.swap(engine, m)
        previous = {"name": old.manifest.name, "version": old.manifest.version} if old else None
        self.state.put("previous", previous)
        self.state.put("current", {"name": name, "version": version})
        self.state.record("event", "swap", model=ref, latency_ms=(time.monotonic() - t0) * 1000,
                          detail=f"from {old.manifest.ref if old else 'nothing'}")
        log.info("now serving %s (was %s)", ref, old.manifest.ref if old else "nothing")
        self.report("serving")
