"""Downloads a model's files into blobs/<sha256>, chunk by chunk.

A file larger than one chunk is listed in the signed manifest as content-addressed chunks (slmops/manifest.py).
For each chunk the plan (pure: `plan_chunks`) picks the cheapest source: a chunk already fetched and verified
(an interrupted download resumes there), the same bytes inside a file the agent already holds (a new version
shares most chunks with the installed one), or the control plane. Missing chunks download in parallel (bounded),
each into .chunks/<sha>.part (a cut mid-chunk resumes from the part's length), is checked against its signed
sha256 as soon as it is whole, and only then renamed. The file is then assembled, checked whole against its
signed size and sha256, and renamed into place. A server that sends more than the signed size is cut off and
refused (endless-data attack); one slower than the floor is refused (slow-retrieval attack).
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from edge_agent.verify import check_file
from slmops.errors import ArtifactInvalid
from slmops.manifest import FileEntry, sha256_file

# fetch_range(sha256, offset) -> iterator of byte chunks of that blob starting at offset
FetchRange = Callable[[str, int], Iterator[bytes]]
# sha256 -> (path of a local file holding those bytes, offset, size)
LocalIndex = dict[str, tuple[pathlib.Path, int, int]]


@dataclass
class FetchStats:
    files: int = 0
    downloaded_chunks: int = 0
    downloaded_bytes: int = 0
    resumed_chunks: int = 0      # already fetched and verified before an interruption
    local_chunks: int = 0        # copied from a file the agent already held
    local_bytes: int = 0
    cached_files: int = 0        # whole files already in the cache

    def add(self, other: "FetchStats") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def describe(self) -> str:
        return (f"downloaded {self.downloaded_bytes} bytes in {self.downloaded_chunks} chunks; "
                f"{self.local_chunks} chunks ({self.local_bytes} bytes) reused from installed files; "
                f"{self.resumed_chunks} chunks resumed from an interrupted download; "
                f"{self.cached_files} files already cached")


@dataclass(frozen=True)
class ChunkPlan:
    resumed: tuple[str, ...]
    local: tuple[str, ...]
    download: tuple[tuple[str, int], ...]   # (sha256, size), each chunk once


def plan_chunks(spans: Iterable[tuple[str, int, int]], have_chunk: Callable[[str, int], bool],
                local: LocalIndex) -> ChunkPlan:
    """Where each distinct chunk of a file comes from: already fetched, a local file, or the network."""
    resumed, from_local, download, seen = [], [], [], set()
    for sha, _, size in spans:
        if sha in seen:
            continue
        seen.add(sha)
        if have_chunk(sha, size):
            resumed.append(sha)
        elif sha in local and local[sha][2] == size:
            from_local.append(sha)
        else:
            download.append((sha, size))
    return ChunkPlan(tuple(resumed), tuple(from_local), tuple(download))


class BlobCache:
    def __init__(self, root: pathlib.Path, parallelism: int = 4):
        self.root = pathlib.Path(root)
        self.chunks = self.root / ".chunks"
        self.chunks.mkdir(parents=True, exist_ok=True)
        self.parallelism = max(1, parallelism)

    def path(self, sha256: str) -> pathlib.Path:
        return self.root / sha256

    def chunk_path(self, sha256: str) -> pathlib.Path:
        return self.chunks / sha256

    def has_verified(self, entry: FileEntry) -> bool:
        p = self.path(entry.sha256)
        return p.exists() and p.stat().st_size == entry.size

    def _have_chunk(self, sha256: str, size: int) -> bool:
        p = self.chunk_path(sha256)
        return p.exists() and p.stat().st_size == size   # only ever renamed into place after its hash matched

    def clear_chunks(self) -> None:
        for p in self.chunks.iterdir():
            p.unlink(missing_ok=True)

    def put_bytes(self, data: bytes) -> pathlib.Path:
        """Stores small verified bytes (a manifest) under their sha256, atomically."""
        dest = self.path(hashlib.sha256(data).hexdigest())
        if not (dest.exists() and dest.stat().st_size == len(data)):
            self._write_atomic(dest, data)
        return dest

    # ---- one file -----------------------------------------------------------------------------------
    def fetch(self, entry: FileEntry, fetch_range: FetchRange, min_rate_bps: int = 0,
              progress: Callable[[int], None] | None = None, local: LocalIndex | None = None) -> pathlib.Path:
        self.fetch_file(entry, fetch_range, min_rate_bps, progress, local)
        return self.path(entry.sha256)

    def fetch_file(self, entry: FileEntry, fetch_range: FetchRange, min_rate_bps: int = 0,
                   progress: Callable[[int], None] | None = None, local: LocalIndex | None = None) -> FetchStats:
        stats = FetchStats(files=1)
        if self.has_verified(entry):
            stats.cached_files = 1
            return stats
        if not entry.chunks:   # a small file is its own chunk
            self._download_chunk(entry.sha256, entry.size, entry.path, fetch_range, min_rate_bps, progress,
                                 dest=self.path(entry.sha256), stats=stats)
            return stats
        local = local or {}
        plan = plan_chunks(entry.chunk_spans(), self._have_chunk, local)
        stats.resumed_chunks = len(plan.resumed)
        download = list(plan.download)
        for sha in plan.local:   # a local copy that fails its hash is fetched instead
            if not self._copy_local(sha, local[sha], stats):
                download.append((sha, local[sha][2]))
        self._download_parallel(entry, download, fetch_range, min_rate_bps, progress, stats)
        self._assemble(entry)
        return stats

    def _copy_local(self, sha: str, source: tuple[pathlib.Path, int, int], stats: FetchStats) -> bool:
        path, offset, size = source
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError:
            return False
        if hashlib.sha256(data).hexdigest() != sha:
            return False   # the local copy is damaged: fetch the chunk instead
        self._write_atomic(self.chunk_path(sha), data)
        stats.local_chunks += 1
        stats.local_bytes += size
        return True

    def _download_parallel(self, entry, download, fetch_range, min_rate_bps, progress, stats) -> None:
        if not download:
            return
        lock = threading.Lock()

        def one(item):
            sha, size = item
            part = FetchStats()
            self._download_chunk(sha, size, entry.path, fetch_range, min_rate_bps, progress,
                                 dest=self.chunk_path(sha), stats=part)
            with lock:
                stats.add(part)

        with ThreadPoolExecutor(max_workers=min(self.parallelism, len(download)),
                                thread_name_prefix="chunk") as pool:
            futures = [pool.submit(one, item) for item in download]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in done:
                f.result()   # re-raises the first failure

    def _download_chunk(self, sha: str, size: int, what: str, fetch_range: FetchRange, min_rate_bps: int,
                        progress, dest: pathlib.Path, stats: FetchStats) -> None:
        part = dest.with_name(dest.name + ".part")
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:   # a part longer than the signed size can only be garbage
            part.unlink()
            offset = 0
        started, got = time.monotonic(), 0
        with open(part, "ab") as f:
            if offset < size:
                for data in fetch_range(sha, offset):
                    if offset + len(data) > size:
                        f.truncate(size)
                        raise ArtifactInvalid(f"endless data: {what}: the server sent more than the signed "
                                              f"{size} bytes for {sha[:12]}…")
                    f.write(data)
                    offset += len(data)
                    got += len(data)
                    if progress:
                        progress(len(data))
                    elapsed = time.monotonic() - started
                    if min_rate_bps and elapsed > 2.0 and got / elapsed < min_rate_bps:
                        raise ArtifactInvalid(f"slow retrieval: {what} arrived at {got / elapsed:.0f} B/s, "
                                              f"below the floor of {min_rate_bps} B/s")
            f.flush()
            os.fsync(f.fileno())
        try:
            check_file(FileEntry(what, sha, size), sha256_file(part), part.stat().st_size)
        except ArtifactInvalid:
            part.unlink()   # wrong bytes: start this chunk over rather than resume garbage
            raise
        os.replace(part, dest)
        stats.downloaded_chunks += 1
        stats.downloaded_bytes += got

    def _assemble(self, entry: FileEntry) -> None:
        final = self.path(entry.sha256)
        tmp = final.with_name(final.name + ".assembling")
        h = hashlib.sha256()
        with open(tmp, "wb") as out:
            for sha, _, size in entry.chunk_spans():
                p = self.chunk_path(sha)
                if not self._have_chunk(sha, size):
                    raise ArtifactInvalid(f"{entry.path}: chunk {sha[:12]}… vanished before assembly")
                data = p.read_bytes()
                h.update(data)
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            check_file(entry, h.hexdigest(), tmp.stat().st_size)
        except ArtifactInvalid:
            tmp.unlink()
            for sha, _, _ in entry.chunk_spans():   # some chunk was bad after all: refetch them all
                self.chunk_path(sha).unlink(missing_ok=True)
            raise
        os.replace(tmp, final)

    @staticmethod
    def _write_atomic(dest: pathlib.Path, data: bytes) -> None:
        tmp = dest.with_name(dest.name + ".copy")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)

    # ---- a whole manifest ---------------------------------------------------------------------------
    def fetch_all(self, files: Iterable[FileEntry], fetch_range: FetchRange, min_rate_bps: int = 0,
                  local: LocalIndex | None = None) -> FetchStats:
        """Every file of a manifest. A chunk file is removed as soon as the last file that uses it is whole, so
        the disk holds at most the assembled files plus the chunks of the file being fetched."""
        files = list(files)
        uses: dict[str, int] = {}
        for f in files:
            for sha in {sha for sha, _ in f.chunks}:
                uses[sha] = uses.get(sha, 0) + 1
        total = FetchStats()
        for f in files:
            total.add(self.fetch_file(f, fetch_range, min_rate_bps, local=local))
            for sha in {sha for sha, _ in f.chunks}:
                uses[sha] -= 1
                if uses[sha] == 0:
                    self.chunk_path(sha).unlink(missing_ok=True)
        return total

    def local_index(self, manifests: Iterable) -> LocalIndex:
        """Chunks of the files of the given (installed) manifests that are whole in the cache."""
        index: LocalIndex = {}
        for m in manifests:
            for f in m.files:
                if f.chunks and self.has_verified(f):
                    for sha, offset, size in f.chunk_spans():
                        index.setdefault(sha, (self.path(f.sha256), offset, size))
        return index
