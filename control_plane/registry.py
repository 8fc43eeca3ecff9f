"""Publishing: a manifest whose files are all in the blob store is validated, stored as a blob itself, and
added as a signed target (TUF-style targets -> snapshot -> timestamp, control_plane/trust_repo.py)."""
from __future__ import annotations

import hashlib
from dataclasses import asdict

from control_plane.blobs import BlobStore
from control_plane.store import Store
from control_plane.trust_repo import Repository
from slmops.errors import ArtifactInvalid
from slmops.manifest import Manifest


class Registry:
    def __init__(self, store: Store, blobs: BlobStore, repo: Repository):
        self.store = store
        self.blobs = blobs
        self.repo = repo

    def publish(self, manifest_json: bytes) -> Manifest:
        m = Manifest.from_json(manifest_json)
        for f in m.files:
            if not self.blobs.has(f.sha256):
                raise ArtifactInvalid(f"file {f.path} ({f.sha256[:12]}…) was not uploaded")
            actual = self.blobs.size(f.sha256)
            if actual != f.size:
                raise ArtifactInvalid(f"file {f.path}: manifest says {f.size} bytes, blob has {actual}")
        if self.store.model(m.name, m.version) is not None:
            raise ArtifactInvalid(f"{m.ref} is already published; publish a new version instead")
        payload = m.to_json()  # canonical bytes: the target's hash pins exactly these
        sha, _ = self.blobs.put_stream([payload], expected_sha256=hashlib.sha256(payload).hexdigest())
        self.store.add_model(m.name, m.version, payload, sha, m.precision, [asdict(f) for f in m.files])
        self.repo.add_target(m.name, m.version, payload,
                             {"name": m.name, "version": m.version, "hardware_class": m.hardware_class,
                              "execution_provider": m.execution_provider, "precision": m.precision})
        return m
