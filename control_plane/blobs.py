"""Content-addressed blob folder: every file is stored once under its sha256 (blobs/ab/abcdef…).
Writes go to a temp file in the same folder, are fsynced and renamed, so a blob is either whole or absent.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from typing import Iterable, Iterator

from slmops.errors import ArtifactInvalid


class BlobStore:
    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> pathlib.Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ArtifactInvalid(f"malformed sha256 {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    def put_stream(self, chunks: Iterable[bytes], expected_sha256: str | None = None) -> tuple[str, int]:
        """Stores a stream of bytes; refuses it if `expected_sha256` is given and does not match."""
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = h.hexdigest()
            if expected_sha256 and digest != expected_sha256:
                raise ArtifactInvalid(f"uploaded bytes hash to {digest}, expected {expected_sha256}")
            dest = self.path(digest)
            dest.parent.mkdir(exist_ok=True)
            os.replace(tmp, dest)
            return digest, size
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_file_chunks(self, path: pathlib.Path, entry) -> tuple[int, int]:
        """Stores the chunks of one manifest file entry read from `path`, skipping those already held.
        Returns (chunks stored, chunks already present)."""
        stored = present = 0
        with open(path, "rb") as f:
            for sha, offset, size in entry.chunk_spans():
                if self.has(sha):
                    present += 1
                    continue
                f.seek(offset)
                self.put_stream([f.read(size)], expected_sha256=sha)
                stored += 1
        return stored, present

    def read(self, sha256: str, offset: int = 0, length: int = 0, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with open(self.path(sha256), "rb") as f:
            f.seek(offset)
            left = length if length > 0 else None
            while True:
                n = chunk_size if left is None else min(chunk_size, left)
                if n == 0:
                    return
                data = f.read(n)
                if not data:
                    return
                if left is not None:
                    left -= len(data)
                yield data
