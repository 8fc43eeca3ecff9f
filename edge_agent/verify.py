"""Pure file checks against a trusted manifest entry (size first, then sha256)."""
from __future__ import annotations

from slmops.errors import ArtifactInvalid
from slmops.manifest import FileEntry


def check_file(entry: FileEntry, data_sha256: str, size: int) -> None:
    if size != entry.size:
        raise ArtifactInvalid(f"arbitrary software: {entry.path}: {size} bytes, the signed manifest says "
                              f"{entry.size}")
    if data_sha256 != entry.sha256:
        raise ArtifactInvalid(f"arbitrary software: {entry.path}: sha256 {data_sha256[:16]}… does not match the "
                              f"signed {entry.sha256[:16]}…")
