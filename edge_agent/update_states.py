"""The states of one update (the Reconciler's half that acts): each method does what update_fsm.py names one
state, and raises an error of the tree when it cannot; the Reconciler (reconciler.py) saves the state before
calling it and turns whatever it raises into the table's next state. Verification is trust.py's (pure); disk
decisions are decisions.py's; installs on disk are installs.py's.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import pathlib
import shutil
import time
from dataclasses import dataclass, field

from edge_agent import decisions, faults, installer, trust, update_fsm
from edge_agent.decisions import DiskFull, ProbationFailed, SideloadRefused
from edge_agent.engine import SamplingParams
from edge_agent.enrollment import hardware_facts
from edge_agent.verify import check_file
from slmops.errors import ArtifactInvalid, ModelLoadError
from slmops.manifest import FileEntry, Manifest, combine, sha256_file

log = logging.getLogger("slmops.agent")
UPDATE_SCHEMA = 1


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


class UpdateStates:
    """Mixed into Reconciler: uses its cfg, state, runtime, client, blobs, installs, engine_factory and the
    per-update context (_engine, _manifest, _manifest_bytes, _base_bytes)."""

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
