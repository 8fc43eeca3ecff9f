"""Makes the device serve what the control plane (or a sideloaded bundle) wants, one update at a time, through
the state machine in update_fsm.py. Every state is saved in SQLite before it acts; a restart resumes from a
safe point. A failed update never touches the serving model; a model that misbehaves in probation is rolled
back to the previous version (kept on disk). Every refusal is an event and a status report.

A supervisor: whatever a state raises (the error tree, OSError, a bug) becomes an event and an edge of the
table (`decisions.failure_kind`, `update_fsm.event_for`), with caps on retries, restarts of one update and steps,
so a bad artifact costs one version and never the agent; the loops themselves catch and report anything else.
The states themselves are update_states.py; decisions are pure functions in decisions.py; installs on disk are
installs.py; enrollment is enrollment.py.

Threads: `watch` keeps the desired-state stream (and enrollment) alive and queues what arrives; `run` applies
queued work and re-checks the last desired state every `resync_s` (so a failed update is retried after a
cool-down and an interrupted one resumes).
"""
from __future__ import annotations

import logging
import pathlib
import queue
import shutil
import threading
import time
from dataclasses import asdict

from edge_agent import decisions, enrollment, faults, installer, trust, update_fsm
from edge_agent.config import AgentConfig
from edge_agent.control_client import Backoff, ControlClient, Refused
from edge_agent.decisions import DiskFull, LocalIOError, ProbationFailed
from edge_agent.enrollment import hardware_facts
from edge_agent.fetcher import BlobCache
from edge_agent.installs import Installs
from edge_agent.runtime import Runtime
from edge_agent.state import AgentState
from edge_agent.update_states import Update, UpdateStates, smoke_test
from slmops.errors import ArtifactInvalid, TransportError
from slmops.manifest import Manifest

log = logging.getLogger("slmops.agent")

__all__ = ["DiskFull", "ProbationFailed", "Reconciler", "Update", "hardware_facts", "smoke_test"]


class Reconciler(UpdateStates):
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
        except Exception as e:   # noqa: BLE001 - e.g. an unreadable token file: said once, clearly
            log.error("enrollment failed: %s: %s", type(e).__name__, e)
            self.state.record("event", "enroll_refused", outcome="error", detail=f"{type(e).__name__}: {e}")
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
                # one line per new assignment: the device's own record of what it was told, in order
                log.info("told to run %s@%s (desired revision %d)", name, version, revision)
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
        if u.state not in update_fsm.RETRYABLE:   # a restart while downloading is the network's, not the artifact's
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
        if u.source and u.state in update_fsm.TERMINAL:   # a sideload's work folder (also after a resume)
            shutil.rmtree(u.source, ignore_errors=True)
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

    # ---- sideload ----
    def apply_sideload(self, tar_path: pathlib.Path) -> None:
        from edge_agent import bundle

        try:
            folder, name, version = bundle.unpack(tar_path, self.cfg.data_dir / "sideload-work")
        except ArtifactInvalid as e:
            log.error("sideloaded %s refused: %s", tar_path.name, e)
            self.state.record("event", "verify_failed", outcome="error", detail=f"sideload {tar_path.name}: {e}")
            return
        if self._serving_ref() == (name, version):   # e.g. a bundle still in the folder at the next start
            log.info("sideloaded %s: %s@%s is already serving", tar_path.name, name, version)
            shutil.rmtree(folder, ignore_errors=True)
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
