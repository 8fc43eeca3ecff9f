"""Makes the device serve what the control plane (or a sideloaded bundle) wants, one update at a time, through
the state machine in update_fsm.py. Every state is saved in SQLite before it acts; a restart resumes from a
safe point. A failed update never touches the serving model; a model that misbehaves in probation is rolled
back to the previous version (kept on disk). Every refusal is an event and a status report.

A supervisor: whatever a state raises (the error tree, OSError, a bug) becomes an event and an edge of the
table (`decisions.failure_kind`, `update_fsm.event_for`), with caps on retries, restarts of one update and steps,
so a bad artifact costs one version and never the agent; the loops themselves catch and report anything else.
Decisions are pure functions in decisions.py; installs on disk are installs.py; enrollment is enrollment.py.

Threads: `watch` keeps the desired-state stream (and enrollment) alive and queues what arrives; `run` applies
queued work and re-checks the last desired state every `resync_s` (so a failed update is retried after a
cool-down and an interrupted one resumes).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import pathlib
import queue
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field

from edge_agent import decisions, enrollment, faults, installer, trust, update_fsm
from edge_agent.config import AgentConfig
from edge_agent.control_client import Backoff, ControlClient, Refused
from edge_agent.decisions import DiskFull, LocalIOError, ProbationFailed, SideloadRefused
from edge_agent.engine import SamplingParams
from edge_agent.enrollment import hardware_facts
from edge_agent.fetcher import BlobCache
from edge_agent.installs import Installs
from edge_agent.runtime import Runtime
from edge_agent.state import AgentState
from edge_agent.verify import check_file
from slmops.errors import ArtifactInvalid, ModelLoadError, TransportError
from slmops.manifest import FileEntry, Manifest, combine, sha256_file

log = logging.getLogger("slmops.agent")
UPDATE_SCHEMA = 1

__all__ = ["DiskFull", "ProbationFailed", "Reconciler", "Update", "hardware_facts", "smoke_test"]


def smoke_test(engine, manifest: Manifest) -> None:
    """Runs the manifest's golden prompts (or one short generation) on a freshly loaded engine."""
    prompts = manifest.golden_prompts or ({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},)
    for i, gp in enumerate(prompts):
        try:
            prompt = engine.chat.render(gp["messages"])
            max_tokens = int(gp.get("max_tokens", 16))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"golden prompt {i} is malformed: {e}") from e
        gen = engine.generate(prompt, SamplingParams(max_new_tokens=max_tokens))
        text = "".join(gen)
        want = gp.get("expect_contains")
        if want and str(want).lower() not in text.lower():
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
    resumes: int = 0                 # restarts that found this update unfinished
    retries: int = 0                 # transport failures in a row
    previous: dict | None = None     # {"name", "version"} serving before the switch
    error: str = ""
    started: float = field(default_factory=time.time)
    schema: int = UPDATE_SCHEMA

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def from_saved(cls, saved) -> Update | None:
        """The saved record, or None when it is not one this agent wrote (another schema, damaged)."""
        if not isinstance(saved, dict) or saved.get("schema", UPDATE_SCHEMA) != UPDATE_SCHEMA:
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            u = cls(**{k: v for k, v in saved.items() if k in names})
        except TypeError:
            return None
        if not isinstance(u.name, str) or not isinstance(u.version, str) or u.state not in update_fsm.STATES:
            return None
        return u


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
        self.installs = Installs(self.models_dir, self.blobs, self.trusted, engine_factory)
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
            engine, m = self.installs.load(cur["name"], cur["version"])
            self.runtime.swap(engine, m)
            log.info("restored %s from disk", m.ref)
        except Exception as e:   # noqa: BLE001 - whatever is wrong with it, it is fetched again
            log.error("installed model %s@%s is damaged (%s: %s); it will be fetched again", cur.get("name"),
                      cur.get("version"), type(e).__name__, e)
            self.state.record("event", "restore_failed", model=f"{cur.get('name')}@{cur.get('version')}",
                              outcome="error", detail=f"{type(e).__name__}: {e}")
            self.installs.forget(str(cur.get("name")), str(cur.get("version")))
            self.state.put("current", None)

    def load_identity(self) -> bool:
        self.device_id = enrollment.load_identity(self.state, self.client)
        return bool(self.device_id)

    def enroll(self) -> None:
        self.device_id = enrollment.enroll(self.cfg, self.state, self.client, self.stop, self.save_trusted)

    # ---- supervision ------------------------------------------------------------------------------
    def guarded(self, what: str, fn, *args) -> bool:
        """Runs one step of a loop; anything it raises is logged in one line and recorded as an event, never
        the end of the thread. True when it ran through."""
        try:
            fn(*args)
            return True
        except (TransportError, Refused):
            raise
        except Exception as e:   # noqa: BLE001 - the supervisor: an error here must not end the agent's loop
            log.error("%s failed: %s: %s", what, type(e).__name__, e)
            log.debug("%s failed", what, exc_info=True)
            self.state.record("event", "agent_error", outcome="error", detail=f"{what}: {type(e).__name__}: {e}")
            return False

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
            except Exception as e:   # noqa: BLE001 - transport or anything else: reconnect after a pause
                if self.stop.is_set():
                    return
                delay = backoff.next()
                level = logging.WARNING if isinstance(e, (TransportError, Refused)) else logging.ERROR
                log.log(level, "control plane %s: %s: %s; reconnecting in %.1f s", self.cfg.control_plane,
                        type(e).__name__, e, delay)
                self.stop.wait(delay)

    def run(self) -> None:
        self.guarded("restoring the installed model", self.restore)
        self.guarded("loading the device identity", self.load_identity)  # a resumed update needs the token
        threading.Thread(target=self.watch, name="watch", daemon=True).start()
        saved = self.state.get("desired")
        if isinstance(saved, list) and len(saved) == 3:
            self.desired = tuple(saved)
        try:
            self.guarded("resuming the saved update", self.resume_saved)
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
                ok = self.guarded("handling queued work", self.handle, item)
                if ok:
                    backoff.reset()
                else:
                    self.stop.wait(backoff.next())
            except (TransportError, Refused) as e:
                delay = backoff.next()
                log.warning("update paused (%s); retrying in %.1f s", e, delay)
                self.stop.wait(delay)

    def handle(self, item: tuple) -> None:
        """One queued item: ("desired", name, version, revision) or ("sideload", path)."""
        if item[0] == "desired":
            name, version, revision = item[1:]
            if self.desired != (name, version, revision):
                self.desired = (name, version, revision)
                self.state.put("desired", list(self.desired))
            self.apply(name, version, revision)
        elif item[0] == "sideload":
            self.apply_sideload(pathlib.Path(item[1]))
        else:
            raise ValueError(f"unknown work item {item[0]!r}")

    # ---- reporting --------------------------------------------------------------------------------
    def _serving_ref(self) -> tuple[str, str]:
        slot = self.runtime.slot
        return (slot.manifest.name, slot.manifest.version) if slot else ("", "")

    def report(self, state: str, message: str = "") -> None:
        """Best effort: the control plane may be away; events in the outbox carry the same facts."""
        if not self.device_id:
            return
        try:
            self.client.report(self.device_id, *self._serving_ref(), state, message[:2000])
        except Exception as e:   # noqa: BLE001 - a report is never worth an update
            log.info("status report skipped (%s: %s)", type(e).__name__, e)

    def event(self, name: str, u: Update, outcome: str = "ok", detail: str = "", latency_ms: float = 0.0,
              values: dict | None = None):
        self.state.record("event", name, model=u.ref, outcome=outcome, detail=detail, latency_ms=latency_ms,
                          values=values)

    # ---- deciding ---------------------------------------------------------------------------------
    def resume_saved(self) -> None:
        saved = self.state.get("update")
        if not saved:
            return
        u = Update.from_saved(saved)
        if u is None:
            log.error("the saved update record is not readable (%.200s); it is dropped", saved)
            self.state.record("event", "agent_error", outcome="error", detail="unreadable saved update dropped")
            self.state.put("update", None)
            return
        point = update_fsm.resume_point(u.state)
        if point is None:
            return
        if u.state == "switching":
            cur = self.state.get("current") or {}
            point = "probation" if (cur.get("name"), cur.get("version")) == (u.name, u.version) else "loading"
        u.resumes += 1
        if update_fsm.resumed_too_often(u.resumes):
            why = f"the agent stopped {u.resumes} times during this update (last in {u.state})"
            bad = self.state.get("bad", {})
            bad[u.ref] = why
            self.state.put("bad", bad)
            log.error("update %s given up: %s", u.ref, why)
            self.event("update_abandoned", u, outcome="error", detail=why)
            u.error, u.state = why, "failed"
            self.save(u)
            self.report("error", f"{u.ref} given up: {why}; it will not be retried automatically")
            return
        log.info("resuming update %s from %s (was in %s when the agent stopped)", u.ref, point, u.state)
        self.event("update_resumed", u, detail=f"saved in {u.state}, resuming at {point}")
        u.state = point
        self.drive(u)

    def apply(self, name: str, version: str, revision: int) -> None:
        saved = self.state.get("update")
        action, why = decisions.desired_action(name, version, revision, self._serving_ref(),
                                               saved if isinstance(saved, dict) else None, self.state.get("bad", {}),
                                               self.state.get("failed", {}), time.time(), self.cfg.failed_retry_s)
        if action == "report":
            self.report(why)
            return
        if action == "refuse":
            self.report("error", why)
            return
        if action == "wait":
            return   # refused recently for this very assignment; wait for a new one or the cool-down
        u = Update.from_saved(saved) if action == "continue" else None
        if u is None:
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
        steps = 0
        while u.state not in update_fsm.TERMINAL:
            steps += 1
            if steps > update_fsm.MAX_STEPS:   # a loop cap: only a broken table gets here
                u.error, u.state = f"more than {update_fsm.MAX_STEPS} steps", "failed"
                self.event("internal_error", u, outcome="error", detail=u.error)
                break
            self.save(u)                      # saved before acting: a kill here resumes from this state
            faults.maybe_pause(u.state, u.version)
            try:
                handlers[u.state](u)
                event = "ok"
                u.retries = 0
            except Exception as e:   # noqa: BLE001 - every error of a state is an edge of the table
                if isinstance(e, OSError):
                    e = LocalIOError(f"{type(e).__name__}: {e}")
                event = update_fsm.event_for(u.state, isinstance(e, (TransportError, Refused)), u.retries)
                if event == "retry":
                    u.retries += 1
                    self.save(u)
                    raise   # the run loop backs off; the next desired state continues from this saved state
                u.error = f"{u.state}: {e}"
                self.on_failure(u, e)
            u.state = update_fsm.next_state(u.state, event)
        self.save(u)
        if u.state == "committed":
            self.event("committed", u, latency_ms=(time.monotonic() - t0) * 1000)
            self.collect_garbage()
            self.report("serving")

    def on_failure(self, u: Update, e: Exception) -> None:
        kind = decisions.failure_kind(e)
        if u.state == "rolling_back":
            kind = "rollback_failed"
        if kind == "internal_error":
            log.error("update %s failed in %s: %s: %s", u.ref, u.state, type(e).__name__, e)
            log.debug("update %s failed", u.ref, exc_info=True)
        else:
            log.error("update %s failed in %s: %s", u.ref, u.state, e)
        detail = str(e) if kind != "internal_error" else f"{type(e).__name__}: {e}"
        self.event(kind, u, outcome="error", detail=detail)
        if self._engine is not None and u.state in ("loading", "smoke_test"):
            close = getattr(self._engine, "close", None)
            self._engine = None
            if close:
                self.guarded("closing the refused model", close)
        if self.runtime.slot is None and u.state in ("loading", "smoke_test"):
            self.reload_previous(u)   # drain-then-load had unloaded the old model: bring it back
        self.runtime.resume()
        failed = self.state.get("failed", {})
        failed[u.ref] = {"revision": u.revision, "at": time.time(), "why": str(e)[:500]}
        self.state.put("failed", failed)
        if kind != "probation_failed":
            self.report("error", f"{kind} for {u.ref}: {detail}")

    # ---- states -----------------------------------------------------------------------------------
    def s_fetch_metadata(self, u: Update) -> None:
        self.report("fetching", u.ref)
        if u.source:
            m, raw = self.verified_manifest_from_bundle(pathlib.Path(u.source), u.name, u.version)
            self.check_sideload(m)
        else:
            m, raw = self.verified_manifest(u.name, u.version)
        u.manifest_sha256, u.manifest_size = trust.sha256_bytes(raw), len(raw)
        base_raw = b""
        if m.base:
            base, base_raw = self.base_manifest(m, u)
            u.base_manifest_sha256, u.base_manifest_size = trust.sha256_bytes(base_raw), len(base_raw)
            m = combine(base, m)
        self._manifest, self._manifest_bytes, self._base_bytes = m, raw, base_raw
        needed = decisions.disk_needed([f.size for f in m.files if not self.blobs.has_verified(f)])
        why = decisions.disk_verdict(u.ref, needed, shutil.disk_usage(self.cfg.data_dir).free,
                                     self.cfg.min_free_disk_bytes)
        if why:
            raise DiskFull(why)

    def check_sideload(self, m: Manifest) -> None:
        """The sideload rule (decisions.sideload_verdict) on the verified manifest of a bundle."""
        slot = self.runtime.slot
        serving = (slot.manifest.name, slot.manifest.version, int(slot.manifest.created_unix_ms)) if slot else None
        desired = (self.desired[0], self.desired[1]) if self.desired and self.desired[0] else None
        why = decisions.sideload_verdict(m.name, m.version, int(m.created_unix_ms), desired, serving,
                                         self.state.get("bad", {}))
        if why:
            raise SideloadRefused(f"sideload refused: {why}")

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
                                     local=self.blobs.local_index(self.installs.manifests()))
        log.info("fetched %s: %s", u.ref, stats.describe())
        self.event("download", u, latency_ms=(time.monotonic() - t0) * 1000,
                   detail=f"{m.total_bytes} bytes: {stats.describe()}",
                   values={k: float(v) for k, v in vars(stats).items()})

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
        if decisions.drain_first(self.runtime.slot is not None, need, avail):
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
                why = decisions.probation_verdict(slot.requests, slot.errors, list(slot.latencies_ms),
                                                  self.cfg.probation_min_requests,
                                                  self.cfg.probation_max_error_ratio, self.cfg.probation_max_p95_ms)
                if why:
                    raise ProbationFailed(why)
            time.sleep(0.2)

    def s_roll_back(self, u: Update) -> None:
        prev = u.previous
        if not prev:
            raise ProbationFailed("no previous version on disk to roll back to")  # stays on the new one
        engine, m = self.installs.load(prev["name"], prev["version"])
        self.runtime.swap(engine, m)
        self.state.put("current", prev)
        self.event("rollback", u, outcome="error", detail=f"back to {m.ref}: {u.error}")
        log.warning("rolled back %s -> %s: %s", u.ref, m.ref, u.error)
        self.report("error", f"rolled back {u.ref} to {m.ref}: {u.error}")

    def reload_previous(self, u: Update) -> None:
        cur = self.state.get("current")
        if cur:
            try:
                engine, m = self.installs.load(cur["name"], cur["version"])
                self.runtime.swap(engine, m)
            except Exception as e:   # noqa: BLE001 - reported; the agent keeps running without a model
                log.error("could not reload %s@%s after a failed in-place swap: %s: %s", cur.get("name"),
                          cur.get("version"), type(e).__name__, e)
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
        try:
            u = Update(name, version, revision=-1, source=str(folder))
            u.state = update_fsm.next_state("idle", "start")
            log.info("sideloading %s from %s", u.ref, tar_path.name)
            self.drive(u)
            self.event("sideload", u, outcome="ok" if u.state == "committed" else "error",
                       detail=f"{tar_path.name}: {u.state}" + (f": {u.error}" if u.error else ""))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # ---- disk -------------------------------------------------------------------------------------
    def installed_manifests(self) -> list[Manifest]:
        return self.installs.manifests()

    def collect_garbage(self) -> None:
        """Keep the current and previous versions (and their blobs); remove every other install and blob."""
        self.installs.collect_garbage([v for v in (self.state.get("current"), self.state.get("previous")) if v])
