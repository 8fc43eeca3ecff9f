"""Pure verification: bytes and the pinned key in, a trusted Manifest (or ArtifactInvalid) out.
No network, no disk: the reconciler fetches, this module decides.
"""
from __future__ import annotations

import hashlib

from slmops import signing
from slmops.errors import ArtifactInvalid
from slmops.manifest import FileEntry, Manifest


def verify_manifest(manifest: bytes, signature: bytes, key_id: str, pinned_key: bytes,
                    expected_name: str, expected_version: str) -> Manifest:
    signing.verify(pinned_key, manifest, signature, key_id)
    m = Manifest.from_json(manifest)
    if (m.name, m.version) != (expected_name, expected_version):
        raise ArtifactInvalid(f"signed manifest is for {m.ref}, but {expected_name}@{expected_version} was asked")
    return m


def check_file(entry: FileEntry, data_sha256: str, size: int) -> None:
    if size != entry.size:
        raise ArtifactInvalid(f"{entry.path}: {size} bytes, the signed manifest says {entry.size}")
    if data_sha256 != entry.sha256:
        raise ArtifactInvalid(f"{entry.path}: sha256 {data_sha256[:16]}… does not match the signed "
                              f"{entry.sha256[:16]}…")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
