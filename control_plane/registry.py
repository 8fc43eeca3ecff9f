"""Publishing: a manifest whose files are all in the blob store is validated, stored as a blob itself, and
added as a signed target (TUF-style targets -> snapshot -> timestamp, control_plane/trust_repo.py)."""
from __future__ import annotations

import hashlib

from control_plane.blobs import BlobStore
from control_plane.store import Store
from control_plane.trust_repo import Repository
from slmops.errors import ArtifactInvalid
from slmops.manifest import Manifest, combine


class Registry:
    def __init__(self, store: Store, blobs: BlobStore, repo: Repository):
        self.store = store
        self.blobs = blobs
        self.repo = repo

    def publish(self, manifest_json: bytes) -> Manifest:
        m = Manifest.from_json(manifest_json)
        needs = self._with_base(m)
        for f in m.files:  # every chunk must be stored (a file without a chunk list is its own chunk)
            for i, (sha, _, size) in enumerate(f.chunk_spans()):
                what = f"file {f.path}" + (f" chunk {i}" if f.chunks else "")
                if not self.blobs.has(sha):
                    raise ArtifactInvalid(f"{what} ({sha[:12]}…) was not uploaded")
                actual = self.blobs.size(sha)
                if actual != size:
                    raise ArtifactInvalid(f"{what}: manifest says {size} bytes, blob has {actual}")
        if self.store.model(m.name, m.version) is not None:
            raise ArtifactInvalid(f"{m.ref} is already published; publish a new version instead")
        payload = m.to_json()  # canonical bytes: the target's hash pins exactly these
        sha, _ = self.blobs.put_stream([payload], expected_sha256=hashlib.sha256(payload).hexdigest())
        self.store.add_model(m.name, m.version, payload, sha, m.precision, needs)
        self.repo.add_target(m.name, m.version, payload,
                             {"name": m.name, "version": m.version, "hardware_class": m.hardware_class,
                              "execution_provider": m.execution_provider, "precision": m.precision})
        return m

    def _with_base(self, m: Manifest) -> list[dict]:
        """Every blob a device fetches for `m` (what the Download RPC lets it read). An adapter-only version
        needs its base published first and must fit it; it also lists the base's files and signed manifest
        (installed beside it as base.json)."""
        if not m.base:
            return [f.to_dict() for f in m.files]
        row = self.store.model(m.base["name"], m.base["version"])
        if row is None:
            raise ArtifactInvalid(f"{m.ref} is adapter-only and names base {m.base['name']}@{m.base['version']}, "
                                  f"which is not published: publish the base first")
        base = Manifest.from_json(row["manifest"])
        combined = combine(base, m)
        return [f.to_dict() for f in combined.files] + [
            {"path": "base.json", "sha256": row["manifest_sha256"], "size": len(row["manifest"])}]
