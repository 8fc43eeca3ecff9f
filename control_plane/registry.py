"""Publishing: a manifest whose files are all in the blob store is validated, signed and registered."""
from __future__ import annotations

from dataclasses import asdict

from control_plane.blobs import BlobStore
from control_plane.store import Store
from slmops import signing
from slmops.errors import ArtifactInvalid
from slmops.manifest import Manifest


class Registry:
    def __init__(self, store: Store, blobs: BlobStore, private_key):
        self.store = store
        self.blobs = blobs
        self.key = private_key
        self.public = signing.public_raw(private_key)
        self.key_id = signing.key_id(self.public)

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
        payload = m.to_json()  # canonical bytes: exactly what the agent will verify
        self.store.add_model(m.name, m.version, payload, signing.sign(self.key, payload), self.key_id,
                             m.precision, [asdict(f) for f in m.files])
        return m
