"""Makes the device serve what the control plane (or a sideloaded bundle) wants, one update at a time, through
the state machine in update_fsm.py. Every state is saved in SQLite before it acts; a restart resumes from a
safe point. A failed update never touches the serving model; a model that misbehaves in probation is rolled
back to the previous version (kept on disk). Every refusal is an event and a status report.

Threads: `watch` keeps the desired-state stream (and enrollment) alive and queues what arrives; `run` applies
queued work and re-checks the last desired state every `resync_s` (so a failed update is retried after a
cool-down and an interrupted one resumes).
"""
from __future__ import annotations

import datetime as dt
import logging
import pathlib
import platform
import queue
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field

from edge_agent import faults, installer, trust, update_fsm
from edge_agent.config import AGENT_VERSION, AgentConfig
from edge_agent.control_client import Backoff, ControlClient, Refused
from edge_agent.engine import SamplingParams
from edge_agent.fetcher import BlobCache
from edge_agent.runtime import Runtime
from edge_agent.state import AgentState
from edge_agent.verify import check_file
from slmops.errors import ArtifactInvalid, ModelLoadError, SlmopsError, TransportError
from slmops.manifest import FileEntry, Manifest, combine, sha256_file
from slmops.v1 import common_pb2

log = logging.getLogger("slmops.agent")


class DiskFull(SlmopsError):
    """Not enough free disk for an update (checked before fetching)."""


class ProbationFailed(SlmopsError):
    pass


FAILURE_KINDS = ((ArtifactInvalid, "verify_failed"), (ModelLoadError, "load_failed"), (DiskFull, "disk_full"),
                 (ProbationFailed, "probation_failed"))


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


@dataclass
class Update:
    """One update in flight, as saved in agent.db (key "update")."""
    name: str
    version: str
    revision: int
    state: str = "idle"
    source: str = ""                 # "" = the control plane; else a sideloaded bundle folder
    manifest_sha256: str = ""
    manifest_size: int = 0
    base_manifest_sha256: str = ""   # an adapter-only bundle: the signed manifest of the base it needs
    base_manifest_size: int = 0
    load_attempts: int = 0
    previous: dict | None = None     # {"name", "version"} serving before the switch
    error: str = ""
    started: float = field(default_factory=time.time)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class Reconciler:
    def __init__(self, cfg: AgentConfig, state: AgentState, runtime: Runtime, engine_factory,
                 client: ControlClient | None = None):
        self.cfg = cfg
        self.state = state
        self.runtime = runtime
        self.engine_factory = engine_factory
        self.client = client or ControlClient(cfg.control_plane)
        self.blobs = BlobCache(cfg.data_dir / "blobs", cfg.download_parallelism)
        self.models_dir = cfg.data_dir / "models"
        self.stop = threading.Event()
        self.device_id = ""
        self.work: queue.Queue = queue.Queue()
        self.desired: tuple[str, str, int] | None = None
        self._engine = None              # loaded, not yet switched to
        self._manifest: Manifest | None = None   # for an adapter-only bundle: combined with its base
        self._manifest_bytes = b""
        self._base_bytes = b""

    # ---- trusted metadata (persisted, so a restart keeps its knowledge of versions) -------------------
    def trusted(self) -> trust.Trusted:
        saved = self.state.get("trust")
        if saved is None:
            raise ArtifactInvalid("no trusted root: enroll first or start with --trusted-root")
        return trust.Trusted(**{k: bytes.fromhex(v) if v else None for k, v in saved.items()})

    def save_trusted(self, t: trust.Trusted) -> None:
        self.state.put("trust", {k: getattr(t, k).hex() if getattr(t, k) else None
                                 for k in ("root", "timestamp", "snapshot", "targets")})

    # ---- start-up ---------------------------------------------------------------------------------
    def restore(self) -> None:
        """Serve what was serving before a restart, after re-checking it against trusted metadata and every
        file's hash. A damaged install is removed (and fetched again)."""
        installer.remove_stale_staging(self.models_dir)
        if self.cfg.trusted_root and self.state.get("trust") is None:
            self.save_trusted(trust.Trusted(root=pathlib.Path(self.cfg.trusted_root).read_bytes()))
        cur = self.state.get("current")
        if not cur:
            return
        try:
            engine, m = self.load_installed(cur["name"], cur["version"])
            self.runtime.swap(engine, m)
            log.info("restored %s from disk", m.ref)
        except (OSError, ArtifactInvalid, ModelLoadError, TypeError, ValueError) as e:
            log.error("installed model %s@%s is damaged (%s); it will be fetched again", cur["name"],
                      cur["version"], e)
            self.state.record("event", "restore_failed", model=f"{cur['name']}@{cur['version']}",
                              outcome="error", detail=str(e))
            self.forget_install(cur["name"], cur["version"])
            self.state.put("current", None)

    def load_installed(self, name: str, version: str):
        path = self.models_dir / name / version
        m = self.installed_manifest(path, check_trust=True)
        for f in m.files:
            check_file(f, sha256_file(path / f.path), (path / f.path).stat().st_size)
        return self.engine_factory(path, m), m

    def installed_manifest(self, path: pathlib.Path, check_trust: bool = False) -> Manifest:
        """The manifest of an install folder; an adapter-only version is combined with base.json, its base's
        signed manifest. With check_trust, both must be what the last trusted targets metadata named."""
        raw = (path / "manifest.json").read_bytes()
        m = Manifest.from_json(raw)
        if check_trust:
            trust.installed_is_trusted(self.trusted(), m.name, m.version, raw)
        if not m.base:
            return m
        base_raw = (path / "base.json").read_bytes()
        if check_trust:
            trust.installed_is_trusted(self.trusted(), m.base["name"], m.base["version"], base_raw)
        return combine(Manifest.from_json(base_raw), m)

    def forget_install(self, name: str, version: str) -> None:
        path = self.models_dir / name / version
        try:
            m = self.installed_manifest(path)
            for f in m.files:  # installed files are hard links to blobs: a corrupt one is corrupt in both
                self.blobs.path(f.sha256).unlink(missing_ok=True)
        except (OSError, ArtifactInvalid):
            pass
        shutil.rmtree(path, ignore_errors=True)

    def load_identity(self) -> bool:
        ident = self.state.get("identity")
        if ident:
            self.device_id, self.client.token = ident["device_id"], ident["token"]
        return bool(ident)

    def enroll(self) -> None:
        if self.load_identity():
            return
        if not self.cfg.enroll_token:
            raise Refused(__import__("grpc").StatusCode.UNAUTHENTICATED,
                          "this agent is not enrolled yet: pass --enroll-token")
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

    # ---- threads ----------------------------------------------------------------------------------
    def watch(self) -> None:
        """Enroll, then keep the desired-state stream open; queue every desired state."""
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
                    self.client.report(self.device_id, *self._serving_ref(), "starting", "",
                                       hardware_facts(self.cfg.data_dir))
                    reported_hw = True
                for desired in self.client.watch(self.device_id):
                    backoff.reset()
                    self.work.put(("desired", desired.model.name, desired.model.version, desired.revision))
                    if self.stop.is_set():
                        return
            except (TransportError, Refused) as e:
                if self.stop.is_set():
                    return
                delay = backoff.next()
                log.warning("control plane %s: %s; reconnecting in %.1f s", self.cfg.control_plane, e, delay)
                self.stop.wait(delay)

    def run(self) -> None:
        self.restore()
        self.load_identity()   # before the watch thread starts: a resumed update needs the device token
        threading.Thread(target=self.watch, name="watch", daemon=True).start()
        try:
            self.resume_saved()
        except (TransportError, Refused) as e:   # the desired state from the watch stream restarts it
            log.warning("could not resume the interrupted update yet (%s); it restarts when the control plane "
                        "answers", e)
        backoff = Backoff(self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
        while not self.stop.is_set():
            try:
                item = self.work.get(timeout=self.cfg.resync_s)
            except queue.Empty:
                item = ("desired", *self.desired) if self.desired else None
            if item is None:
                continue
            try:
                if item[0] == "desired":
                    self.desired = item[1:]
                    self.apply(*item[1:])
                elif item[0] == "sideload":
                    self.apply_sideload(item[1])
                backoff.reset()
            except (TransportError, Refused) as e:
                delay = backoff.next()
                log.warning("update paused (%s); retrying in %.1f s", e, delay)
                self.stop.wait(delay)

    def _serving_ref(self) -> tuple[str, str]:
        slot = self.runtime.slot
        return (slot.manifest.name, slot.manifest.version) if slot else ("", "")

    def report(self, state: str, message: str = "") -> None:
        """Best effort: the control plane may be away; events in the outbox carry the same facts."""
        if not self.device_id:
            return
        try:
            self.client.report(self.device_id, *self._serving_ref(), state, message)
        except (TransportError, Refused) as e:
            log.info("status report skipped (%s)", e)

    def event(self, name: str, u: Update, outcome: str = "ok", detail: str = "", latency_ms: float = 0.0,
              values: dict | None = None):
        self.state.record("event", name, model=u.ref, outcome=outcome, detail=detail, latency_ms=latency_ms,
                          values=values)

    # ---- deciding ---------------------------------------------------------------------------------
    def resume_saved(self) -> None:
        saved = self.state.get("update")
        if not saved or saved["state"] in update_fsm.TERMINAL:
            return
        u = Update(**saved)
        point = update_fsm.resume_point(u.state)
        if u.state == "switching":
            cur = self.state.get("current") or {}
            point = "probation" if (cur.get("name"), cur.get("version")) == (u.name, u.version) else "loading"
        log.info("resuming update %s from %s (was in %s when the agent stopped)", u.ref, point, u.state)
        self.event("update_resumed", u, detail=f"saved in {u.state}, resuming at {point}")
        u.state = point
        self.drive(u)

    def apply(self, name: str, version: str, revision: int) -> None:
        if not name:
            self.report("idle" if self.runtime.slot is None else "serving")
            return
        if self._serving_ref() == (name, version):
            saved = self.state.get("update")
            if not saved or saved["state"] in update_fsm.TERMINAL:
                self.report("serving")
                return
        ref = f"{name}@{version}"
        bad = self.state.get("bad", {})
        if ref in bad:
            self.report("error", f"{ref} is marked bad ({bad[ref]}); assign another version")
            return
        failed = self.state.get("failed", {}).get(ref)
        if failed and failed["revision"] == revision and time.time() - failed["at"] < self.cfg.failed_retry_s:
            return  # refused recently for this very assignment; wait for a new one or the cool-down
        saved = self.state.get("update")
        if saved and saved["state"] not in update_fsm.TERMINAL and (saved["name"], saved["version"]) == (name, version):
            u = Update(**saved)   # continue where it stopped
        else:
            u = Update(name, version, revision)
            u.state = update_fsm.next_state("idle", "start")
        self.drive(u)

    # ---- the state machine driver -----------------------------------------------------------------
    def save(self, u: Update) -> None:
        self.state.put("update", asdict(u))

    def drive(self, u: Update) -> None:
        t0 = time.monotonic()
        handlers = {"fetching_metadata": self.s_fetch_metadata, "fetching_chunks": self.s_fetch_chunks,
                    "verifying": self.s_verify, "installing": self.s_install, "loading": self.s_load,
                    "smoke_test": self.s_smoke, "switching": self.s_switch, "probation": self.s_probation,
                    "rolling_back": self.s_roll_back}
        while u.state not in update_fsm.TERMINAL:
            self.save(u)                      # saved before acting: a kill here resumes from this state
            faults.maybe_pause(u.state, u.version)
            try:
                handlers[u.state](u)
                event = "ok"
            except (ArtifactInvalid, ModelLoadError, DiskFull, ProbationFailed) as e:
                event = "fail"
                u.error = f"{u.state}: {e}"
                self.on_failure(u, e)
            u.state = update_fsm.next_state(u.state, event)
        self.save(u)
        if u.state == "committed":
            self.event("committed", u, latency_ms=(time.monotonic() - t0) * 1000)
            self.collect_garbage()
            self.report("serving")

    def on_failure(self, u: Update, e: Exception) -> None:
        kind = next(k for cls, k in FAILURE_KINDS if isinstance(e, cls))
        log.error("update %s failed in %s: %s", u.ref, u.state, e)
        self.event(kind, u, outcome="error", detail=str(e))
        if self._engine is not None and u.state in ("loading", "smoke_test"):
            close = getattr(self._engine, "close", None)
            if close:
                close()
            self._engine = None
        if self.runtime.slot is None and u.state in ("loading", "smoke_test"):
            self.reload_previous(u)   # drain-then-load had unloaded the old model: bring it back
        failed = self.state.get("failed", {})
        failed[u.ref] = {"revision": u.revision, "at": time.time(), "why": str(e)}
        self.state.put("failed", failed)
        if kind != "probation_failed":
            self.report("error", f"{kind} for {u.ref}: {e}")

    # ---- states -----------------------------------------------------------------------------------
    def s_fetch_metadata(self, u: Update) -> None:
        self.report("fetching", u.ref)
        if u.source:
            m, raw = self.verified_manifest_from_bundle(pathlib.Path(u.source), u.name, u.version)
        else:
            m, raw = self.verified_manifest(u.name, u.version)
        u.manifest_sha256, u.manifest_size = trust.sha256_bytes(raw), len(raw)
        base_raw = b""
        if m.base:
            base, base_raw = self.base_manifest(m, u)
            u.base_manifest_sha256, u.base_manifest_size = trust.sha256_bytes(base_raw), len(base_raw)
            m = combine(base, m)
        self._manifest, self._manifest_bytes, self._base_bytes = m, raw, base_raw
        todo = [f.size for f in m.files if not self.blobs.has_verified(f)]
        missing = sum(todo) + max(todo, default=0)   # the largest file's chunks sit beside it while it assembles
        free = shutil.disk_usage(self.cfg.data_dir).free
        if free - missing < self.cfg.min_free_disk_bytes:
            raise DiskFull(f"{u.ref} needs {missing / 1e6:.1f} MB; {free / 1e6:.1f} MB free and "
                           f"{self.cfg.min_free_disk_bytes / 1e6:.1f} MB must stay free")

    def base_manifest(self, m: Manifest, u: Update) -> tuple[Manifest, bytes]:
        """The signed manifest of the base an adapter-only bundle names: from its install when the device has
        it, else fetched and verified like any target. Kept in the blob cache so a restart finds it."""
        name, version = m.base["name"], m.base["version"]
        installed = self.models_dir / name / version / "manifest.json"
        if installed.exists():
            raw = installed.read_bytes()
            trust.installed_is_trusted(self.trusted(), name, version, raw)
            base = Manifest.from_json(raw)
        elif u.source:
            raise ArtifactInvalid(f"{m.ref} is adapter-only and needs its base {name}@{version}, which is not "
                                  f"installed: sideload the base's bundle first")
        else:
            base, raw = self.verified_manifest(name, version)
        self.blobs.put_bytes(raw)
        return base, raw

    def manifest_of(self, u: Update) -> Manifest:
        if self._manifest is None or self._manifest.ref != u.ref:   # after a restart: from the blob cache
            def cached(sha, size):
                entry = FileEntry("manifest.json", sha, size)
                if not self.blobs.has_verified(entry):
                    raise ArtifactInvalid(f"the manifest of {u.ref} (or of its base) is no longer in the blob cache")
                return self.blobs.path(sha).read_bytes()

            self._manifest_bytes = cached(u.manifest_sha256, u.manifest_size)
            self._manifest = Manifest.from_json(self._manifest_bytes)
            self._base_bytes = b""
            if self._manifest.base:
                self._base_bytes = cached(u.base_manifest_sha256, u.base_manifest_size)
                self._manifest = combine(Manifest.from_json(self._base_bytes), self._manifest)
        return self._manifest

    def s_fetch_chunks(self, u: Update) -> None:
        m = self.manifest_of(u)
        t0 = time.monotonic()
        fetch = self.bundle_range(pathlib.Path(u.source)) if u.source else self.client.download
        stats = self.blobs.fetch_all(m.files, fetch, self.cfg.min_download_rate_bps,
                                     local=self.blobs.local_index(self.installed_manifests()))
        log.info("fetched %s: %s", u.ref, stats.describe())
        self.event("download", u, latency_ms=(time.monotonic() - t0) * 1000,
                   detail=f"{m.total_bytes} bytes: {stats.describe()}",
                   values={k: float(v) for k, v in vars(stats).items()})

    def installed_manifests(self) -> list[Manifest]:
        """Manifests of the versions installed on disk (their files are the local source of shared chunks)."""
        out = []
        for p in self.models_dir.glob("*/*/manifest.json"):
            try:
                out.append(self.installed_manifest(p.parent))
            except (OSError, ArtifactInvalid):
                pass
        return out

    def s_verify(self, u: Update) -> None:
        for f in self.manifest_of(u).files:
            p = self.blobs.path(f.sha256)
            if not p.exists():
                raise ArtifactInvalid(f"{f.path} vanished from the blob cache before install")
            check_file(f, sha256_file(p), p.stat().st_size)

    def s_install(self, u: Update) -> None:
        self.report("installing", u.ref)
        m = self.manifest_of(u)
        installer.install(m, self._manifest_bytes, self.blobs.path, self.models_dir,
                          extra={"base.json": self._base_bytes} if self._base_bytes else None)

    def s_load(self, u: Update) -> None:
        import psutil

        if update_fsm.crash_looping(u.load_attempts):
            bad = self.state.get("bad", {})
            bad[u.ref] = f"the agent died {u.load_attempts} times while loading it"
            self.state.put("bad", bad)
            raise ModelLoadError(f"crash loop: {bad[u.ref]}; it will not be retried automatically")
        u.load_attempts += 1
        self.save(u)  # counted before the load, so a load that kills the process is remembered
        m = self.manifest_of(u)
        need = int(m.total_bytes * self.cfg.load_memory_factor)
        avail = psutil.virtual_memory().available - self.cfg.min_free_memory_bytes
        if self.runtime.slot is not None and need > avail:
            log.warning("%s needs ~%.0f MB, %.0f MB available: pausing requests to swap in place", u.ref,
                        need / 1e6, avail / 1e6)
            t0 = time.monotonic()
            self.runtime.pause()
            self.runtime.drain_and_unload(self.cfg.max_swap_pause_s)
            self.event("swap_pause", u, detail=f"drain-then-load: {need / 1e6:.0f} MB needed, "
                                               f"{avail / 1e6:.0f} MB available",
                       latency_ms=(time.monotonic() - t0) * 1000)
        faults.maybe_crash_on_load(u.version)
        self._engine = self.engine_factory(self.models_dir / u.name / u.version, m)

    def s_smoke(self, u: Update) -> None:
        if self._engine is None:   # resumed here after a restart
            self.s_load(u)
        smoke_test(self._engine, self.manifest_of(u))

    def s_switch(self, u: Update) -> None:
        m = self.manifest_of(u)
        cur = self.state.get("current")
        u.previous = cur if cur and (cur["name"], cur["version"]) != (u.name, u.version) else u.previous
        self.save(u)
        old = self.runtime.swap(self._engine, m)
        self.runtime.resume()
        self._engine = None
        self.state.put("previous", u.previous)
        self.state.put("current", {"name": u.name, "version": u.version})
        self.event("swap", u, latency_ms=(time.time() - u.started) * 1000,
                   detail=f"from {old.manifest.ref if old else (u.previous or {}).get('version', 'nothing')}")
        log.info("now serving %s (was %s)", u.ref, old.manifest.ref if old else "nothing")
        self.report("probation" if self.cfg.probation_s > 0 and u.previous else "serving")

    def s_probation(self, u: Update) -> None:
        if not u.previous:
            return  # a first install has nothing to roll back to: commit at once
        deadline = time.monotonic() + self.cfg.probation_s
        while time.monotonic() < deadline and not self.stop.is_set():
            slot = self.runtime.slot
            if slot is not None and slot.manifest.ref == u.ref:
                if slot.requests >= self.cfg.probation_min_requests and \
                        slot.error_ratio() > self.cfg.probation_max_error_ratio:
                    raise ProbationFailed(f"{slot.errors} of {slot.requests} requests failed "
                                          f"(limit {self.cfg.probation_max_error_ratio:.0%})")
                lat = sorted(slot.latencies_ms)
                if self.cfg.probation_max_p95_ms and len(lat) >= self.cfg.probation_min_requests:
                    p95 = lat[max(0, int(len(lat) * 0.95) - 1)]
                    if p95 > self.cfg.probation_max_p95_ms:
                        raise ProbationFailed(f"p95 latency {p95:.0f} ms over {self.cfg.probation_max_p95_ms} ms")
            time.sleep(0.2)

    def s_roll_back(self, u: Update) -> None:
        prev = u.previous
        if not prev:
            raise ProbationFailed("no previous version on disk to roll back to")  # stays on the new one
        engine, m = self.load_installed(prev["name"], prev["version"])
        self.runtime.swap(engine, m)
        self.state.put("current", prev)
        self.event("rollback", u, outcome="error", detail=f"back to {m.ref}: {u.error}")
        log.warning("rolled back %s -> %s: %s", u.ref, m.ref, u.error)
        self.report("error", f"rolled back {u.ref} to {m.ref}: {u.error}")

    def reload_previous(self, u: Update) -> None:
        cur = self.state.get("current")
        if cur:
            try:
                engine, m = self.load_installed(cur["name"], cur["version"])
                self.runtime.swap(engine, m)
            except (OSError, ArtifactInvalid, ModelLoadError) as e:
                log.error("could not reload %s@%s after a failed in-place swap: %s", cur["name"],
                          cur["version"], e)
        self.runtime.resume()

    # ---- verification sources ---------------------------------------------------------------------
    def verified_manifest(self, name: str, version: str) -> tuple[Manifest, bytes]:
        """Fresh signed metadata -> the target for name@version -> its manifest, each step verified."""
        md = self.client.trust_metadata(trust.root_version(self.trusted()))
        return self._verify(trust.Fetched(tuple(md.roots), md.timestamp, md.snapshot, md.targets), name, version,
                            lambda entry: self.blobs.fetch(entry, self.client.download,
                                                           self.cfg.min_download_rate_bps))

    def _verify(self, fetched: trust.Fetched, name: str, version: str, fetch_manifest) -> tuple[Manifest, bytes]:
        new_trusted, targets = trust.update(self.trusted(), fetched, dt.datetime.now(dt.timezone.utc))
        self.save_trusted(new_trusted)
        target = trust.find_target(targets, name, version)
        hw = hardware_facts(self.cfg.data_dir)
        trust.check_fit(target, hw.hardware_class, list(hw.execution_providers))
        entry = FileEntry("manifest.json", target.hashes["sha256"], target.length)
        raw = fetch_manifest(entry).read_bytes()
        trust.check_manifest(target, raw)
        m = Manifest.from_json(raw)
        if (m.name, m.version) != (name, version):
            raise ArtifactInvalid(f"mix-and-match: target {target.path} holds a manifest for {m.ref}")
        return m, raw

    # ---- sideload ---------------------------------------------------------------------------------
    def verified_manifest_from_bundle(self, folder: pathlib.Path, name: str, version: str):
        from edge_agent import bundle

        return self._verify(bundle.read_metadata(folder, trust.root_version(self.trusted())), name, version,
                            lambda entry: self.blobs.fetch(entry, self.bundle_range(folder)))

    def bundle_range(self, folder: pathlib.Path):
        from edge_agent import bundle

        return lambda sha, offset: bundle.read_blob(folder, sha, offset)

    def apply_sideload(self, tar_path: pathlib.Path) -> None:
        from edge_agent import bundle

        try:
            folder, name, version = bundle.unpack(tar_path, self.cfg.data_dir / "sideload-work")
        except ArtifactInvalid as e:
            log.error("sideloaded %s refused: %s", tar_path.name, e)
            self.state.record("event", "verify_failed", outcome="error", detail=f"sideload {tar_path.name}: {e}")
            return
        u = Update(name, version, revision=-1, source=str(folder))
        u.state = update_fsm.next_state("idle", "start")
        log.info("sideloading %s from %s", u.ref, tar_path.name)
        self.drive(u)
        self.event("sideload", u, outcome="ok" if u.state == "committed" else "error", detail=tar_path.name)
        shutil.rmtree(folder, ignore_errors=True)

    # ---- disk -------------------------------------------------------------------------------------
    def collect_garbage(self) -> None:
        """Keep the current and previous versions (and their blobs); remove every other install and blob."""
        keep = [v for v in (self.state.get("current"), self.state.get("previous")) if v]
        keep_dirs = {self.models_dir / k["name"] / k["version"] for k in keep}
        keep_blobs = set()
        for d in keep_dirs:
            try:
                m = self.installed_manifest(d)
                keep_blobs |= {f.sha256 for f in m.files}
                keep_blobs |= {trust.sha256_bytes((d / n).read_bytes()) for n in ("manifest.json", "base.json")
                               if (d / n).exists()}
            except (OSError, ArtifactInvalid):
                pass
        for d in self.models_dir.glob("*/*"):
            if d.is_dir() and d not in keep_dirs and not d.name.startswith(".staging"):
                shutil.rmtree(d, ignore_errors=True)
        for b in self.blobs.root.iterdir():
            if b.is_file() and b.suffix != ".part" and b.name not in keep_blobs:
                b.unlink(missing_ok=True)
        self.blobs.clear_chunks()   # chunks left by an update that did not finish
