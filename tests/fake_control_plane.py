"""An in-process control plane behind the agent's client seam: the methods of edge_agent.control_client
.ControlClient (enroll, watch, report, trust_metadata, download, upload, close, token), served from a real
python-tuf repository (control_plane.trust_repo.Repository, real Ed25519 signatures) over an in-memory meta store
and an in-memory blob dict. As python-tuf's RepositorySimulator does for its fetcher, a test can publish, sign
what a real control plane would refuse (the attacker holds the online keys), assign versions, and inject a
fault into any call, with no network and no processes.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import pathlib
import queue
import threading
from collections.abc import Callable, Iterator

from control_plane.trust_repo import Repository, target_path, utcnow
from slmops.errors import TransportError
from slmops.manifest import Manifest, manifest_for_dir
from slmops.v1 import artifacts_pb2, common_pb2, fleet_pb2, telemetry_pb2


class MemoryMeta:
    """What Repository needs from the control plane's store (control_plane/store.py's same methods)."""

    def __init__(self):
        self.meta: dict[str, str] = {}

    def get_meta(self, key: str):
        return self.meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self.meta[key] = value

    def get_metas(self, keys: list[str]) -> dict[str, str]:
        return {k: self.meta[k] for k in keys if k in self.meta}

    def exclusive(self, key: int):
        return contextlib.nullcontext()   # one process


class FakeControlPlane:
    def __init__(self, trust_dir: pathlib.Path, clock: Callable[[], dt.datetime] | None = None):
        """`clock` (default: now) is the repository's signing time: set it back to sign expired metadata."""
        self.now = clock or utcnow
        self.repo = Repository(pathlib.Path(trust_dir), MemoryMeta(), clock=lambda: self.now())
        self.blobs: dict[str, bytes] = {}
        self.token = ""
        self.revision = 0
        self.desired: queue.Queue = queue.Queue()
        self.reports: list[tuple[str, str, str, str]] = []   # (model ref, state, message, device)
        self.uploaded: list[dict] = []
        self.calls: dict[str, int] = {}
        self.faults: dict[str, Callable[[tuple], None]] = {}
        self.closed = threading.Event()
        self.lock = threading.Lock()

    # ---- what a test does --------------------------------------------------------------------------
    def publish(self, model_dir: pathlib.Path, name: str, version: str, precision: str = "int4",
                **extra) -> Manifest:
        m = manifest_for_dir(model_dir, name, version, precision, **extra)
        for f in m.files:
            data = (pathlib.Path(model_dir) / f.path).read_bytes()
            self.put_blob(data)
            for sha, offset, size in f.chunk_spans():
                self.blobs[sha] = data[offset:offset + size]
        self.sign_manifest(m.to_json(), m)
        return m

    def sign_manifest(self, payload: bytes, m: Manifest | None = None, name: str = "", version: str = "") -> str:
        """Signs `payload` as the target name@version without checking it: what a compromised or buggy control
        plane could serve (the agent must refuse on its own)."""
        name, version = (m.name, m.version) if m else (name, version)
        self.put_blob(payload)
        custom = {"name": name, "version": version, "hardware_class": getattr(m, "hardware_class", "cpu"),
                  "execution_provider": getattr(m, "execution_provider", "cpu"),
                  "precision": getattr(m, "precision", "int4")}
        self.repo.add_target(name, version, payload, custom)
        return target_path(name, version)

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    def assign(self, name: str, version: str) -> int:
        with self.lock:
            self.revision += 1
            rev = self.revision
        self.desired.put(fleet_pb2.DesiredState(model=common_pb2.ModelRef(name=name, version=version), revision=rev))
        return rev

    def fault(self, method: str, fn: Callable[[tuple], None] | None) -> None:
        """`fn(args)` runs before each call of `method` and may raise (TransportError, OSError, anything)."""
        if fn is None:
            self.faults.pop(method, None)
        else:
            self.faults[method] = fn

    def last_report(self) -> tuple[str, str, str, str] | None:
        return self.reports[-1] if self.reports else None

    # ---- the client seam ----------------------------------------------------------------------------
    def _call(self, method: str, *args) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        fn = self.faults.get(method)
        if fn is not None:
            fn(args)

    def enroll(self, token: str, name: str, hardware, agent_version: str):
        self._call("enroll", token, name)
        _, root = max((int(p.name.split(".")[0]), p.read_bytes()) for p in (self.repo.dir / "roots").glob("*.json"))
        return fleet_pb2.EnrollResponse(device_id="dev-1", device_token="device-token", trusted_root=root)

    def watch(self, device_id: str) -> Iterator[fleet_pb2.DesiredState]:
        self._call("watch", device_id)
        while not self.closed.is_set():
            try:
                yield self.desired.get(timeout=0.1)
            except queue.Empty:
                continue
        raise TransportError("watch desired state: the fake control plane closed")

    def report(self, device_id: str, name: str, version: str, state: str, message: str = "", hardware=None) -> None:
        self._call("report", state, message)
        self.reports.append((f"{name}@{version}" if name else "", state, message, device_id))

    def trust_metadata(self, trusted_root_version: int) -> artifacts_pb2.TrustMetadata:
        self._call("trust_metadata", trusted_root_version)
        roots, cur = self.repo.snapshot_for_device(trusted_root_version)
        return artifacts_pb2.TrustMetadata(roots=roots, timestamp=cur["timestamp"], snapshot=cur["snapshot"],
                                           targets=cur["targets"])

    def download(self, sha256: str, offset: int) -> Iterator[bytes]:
        self._call("download", sha256, offset)
        data = self.blobs.get(sha256)
        if data is None:
            raise TransportError(f"download {sha256[:12]}…: NOT_FOUND")
        for i in range(offset, len(data), 1 << 20):
            yield data[i:i + (1 << 20)]

    def upload(self, device_id: str, events: list[dict]) -> telemetry_pb2.UploadAck:
        self._call("upload", len(events))
        self.uploaded.extend(events)
        return telemetry_pb2.UploadAck(accepted=len(events))

    def close(self) -> None:
        self.closed.set()
