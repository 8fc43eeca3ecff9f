"""Downloads content-addressed blobs into blobs/ with resume: bytes go to <sha>.part; a restart continues
from the part file's length; the whole file is checked against the signed size and sha256 before it is
renamed to <sha>. A download longer than declared is cut off and refused (endless-data attack).
"""
from __future__ import annotations

import os
import pathlib
import time
from typing import Callable, Iterator

from edge_agent.verify import check_file
from slmops.errors import ArtifactInvalid
from slmops.manifest import FileEntry, sha256_file

# fetch_range(sha256, offset) -> iterator of byte chunks starting at offset
FetchRange = Callable[[str, int], Iterator[bytes]]


class BlobCache:
    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> pathlib.Path:
        return self.root / sha256

    def has_verified(self, entry: FileEntry) -> bool:
        p = self.path(entry.sha256)
        return p.exists() and p.stat().st_size == entry.size

    def fetch(self, entry: FileEntry, fetch_range: FetchRange, min_rate_bps: int = 0,
              progress: Callable[[int], None] | None = None) -> pathlib.Path:
        final = self.path(entry.sha256)
        if self.has_verified(entry):
            return final
        part = final.with_suffix(".part")
        offset = part.stat().st_size if part.exists() else 0
        if offset > entry.size:  # a part file longer than the signed size can only be garbage
            part.unlink()
            offset = 0
        started, got = time.monotonic(), 0
        with open(part, "ab") as f:
            if offset < entry.size:
                for chunk in fetch_range(entry.sha256, offset):
                    if offset + len(chunk) > entry.size:
                        f.truncate(entry.size)
                        raise ArtifactInvalid(f"endless data: {entry.path}: the server sent more than the "
                                              f"signed {entry.size} bytes")
                    f.write(chunk)
                    offset += len(chunk)
                    got += len(chunk)
                    if progress:
                        progress(len(chunk))
                    elapsed = time.monotonic() - started
                    if min_rate_bps and elapsed > 2.0 and got / elapsed < min_rate_bps:
                        raise ArtifactInvalid(f"slow retrieval: {entry.path} arrived at {got / elapsed:.0f} B/s, "
                                              f"below the floor of {min_rate_bps} B/s")
            f.flush()
            os.fsync(f.fileno())
        try:
            check_file(entry, sha256_file(part), part.stat().st_size)
        except ArtifactInvalid:
            part.unlink()  # wrong bytes: start over next time rather than resume garbage
            raise
        os.replace(part, final)
        return final

