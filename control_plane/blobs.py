"""Content-addressed blobs: every file is stored once under its sha256, in the local folder (the embedded default,
DATA_DIR/blobs/ab/abcdef…) or in an S3-compatible bucket (`--blobs s3://BUCKET/PREFIX --s3-endpoint URL`; boto3).
Either way a blob is whole or absent: the folder writes a temp file, fsyncs and renames it; S3 shows an object
only once its upload completed, and the bytes are hashed before they are sent. A publish adds its model row only
after every blob is stored, so a blob store that fails mid-publish leaves nothing half-published visible.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
import urllib.parse
from dataclasses import dataclass
from typing import Iterable, Iterator

from slmops.errors import ArtifactInvalid, ConfigError, StorageUnavailable


def check_sha(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ArtifactInvalid(f"malformed sha256 {sha256[:80]!r}")
    return sha256


@dataclass(frozen=True)
class BlobConfig:
    """Where blobs live: a folder path, or s3://BUCKET[/PREFIX] with `endpoint_url` (SeaweedFS, Garage, AWS...).
    S3 credentials come from boto3's usual places (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws)."""
    url: str
    endpoint_url: str = ""
    region: str = "us-east-1"
    timeout_s: float = 10.0      # connect and read timeout of one S3 request
    attempts: int = 3            # tries per request (boto3's standard retries) before the store is reported down

    def __post_init__(self) -> None:
        if not self.url or len(self.url) > 2000:
            raise ConfigError("--blobs must be a folder or s3://BUCKET[/PREFIX] (at most 2000 chars)")
        if not 0 < self.timeout_s <= 300 or not 1 <= self.attempts <= 10:
            raise ConfigError("blob store timeout must be in (0, 300] s and attempts 1..10")
        if self.kind == "s3":
            bucket = urllib.parse.urlsplit(self.url).netloc
            if not bucket:
                raise ConfigError(f"--blobs {self.url!r}: name the bucket (s3://BUCKET/PREFIX)")
            if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
                raise ConfigError(f"--s3-endpoint {self.endpoint_url!r} must be an http:// or https:// URL")
        elif self.endpoint_url:
            raise ConfigError("--s3-endpoint is for --blobs s3://...; the blobs are in a local folder")

    @property
    def kind(self) -> str:
        return "s3" if self.url.startswith("s3://") else "folder"

    def describe(self) -> str:
        return f"{self.url} at {self.endpoint_url}" if self.endpoint_url else self.url


def open_blobs(cfg: BlobConfig):
    """The blob store for this config: BlobStore (a folder) or S3BlobStore."""
    return S3BlobStore(cfg) if cfg.kind == "s3" else BlobStore(pathlib.Path(cfg.url))


class BlobStore:
    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> pathlib.Path:
        return self.root / check_sha(sha256)[:2] / sha256

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
        return put_file_chunks(self, path, entry)

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


def put_file_chunks(blobs, path: pathlib.Path, entry) -> tuple[int, int]:
    """Stores the chunks of one manifest file entry read from `path`, skipping those already held.
    Returns (chunks stored, chunks already present)."""
    stored = present = 0
    with open(path, "rb") as f:
        for sha, offset, size in entry.chunk_spans():
            if blobs.has(sha):
                present += 1
                continue
            f.seek(offset)
            blobs.put_stream([f.read(size)], expected_sha256=sha)
            stored += 1
    return stored, present


class S3BlobStore:
    """Blobs as objects PREFIX/ab/abcdef… in one bucket of an S3-compatible store. Every failure to reach it is a
    StorageUnavailable naming the bucket and endpoint."""

    SPOOL_BYTES = 8 << 20    # uploads larger than this are spooled to a temp file while they are hashed

    def __init__(self, cfg: BlobConfig):
        try:
            import boto3
            from botocore.config import Config
        except ImportError as e:
            raise ConfigError("--blobs s3:// needs boto3 (pip install boto3; scripts/setup.sh installs it)") from e
        u = urllib.parse.urlsplit(cfg.url)
        self.cfg, self.bucket, self.prefix = cfg, u.netloc, u.path.strip("/")
        self.client = boto3.client("s3", endpoint_url=cfg.endpoint_url or None, region_name=cfg.region,
                                   config=Config(connect_timeout=cfg.timeout_s, read_timeout=cfg.timeout_s,
                                                 retries={"max_attempts": cfg.attempts, "mode": "standard"}))
        self._call("head_bucket", Bucket=self.bucket)   # an unreachable store or missing bucket is named at start

    def key(self, sha256: str) -> str:
        k = f"{check_sha(sha256)[:2]}/{sha256}"
        return f"{self.prefix}/{k}" if self.prefix else k

    def _call(self, op: str, **kw):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, op)(**kw)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if op in ("head_object", "get_object") and code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(kw.get("Key", "")) from e
            raise StorageUnavailable(f"blob store {self.cfg.describe()}: {op} failed: {code or e}"[:500]) from e
        except BotoCoreError as e:
            raise StorageUnavailable(f"blob store {self.cfg.describe()} unreachable: {e}"[:500]) from e

    def has(self, sha256: str) -> bool:
        try:
            self._call("head_object", Bucket=self.bucket, Key=self.key(sha256))
            return True
        except FileNotFoundError:
            return False

    def size(self, sha256: str) -> int:
        return int(self._call("head_object", Bucket=self.bucket, Key=self.key(sha256))["ContentLength"])

    def put_stream(self, chunks: Iterable[bytes], expected_sha256: str | None = None) -> tuple[str, int]:
        """Hashes the stream while spooling it, refuses it if `expected_sha256` does not match, then uploads it
        under its hash (an object appears only when its upload completed)."""
        h, size = hashlib.sha256(), 0
        with tempfile.SpooledTemporaryFile(max_size=self.SPOOL_BYTES) as spool:
            for chunk in chunks:
                h.update(chunk)
                size += len(chunk)
                spool.write(chunk)
            digest = h.hexdigest()
            if expected_sha256 and digest != expected_sha256:
                raise ArtifactInvalid(f"uploaded bytes hash to {digest}, expected {expected_sha256}")
            if not self.has(digest):
                spool.seek(0)
                self._call("upload_fileobj", Fileobj=spool, Bucket=self.bucket, Key=self.key(digest))
        return digest, size

    def put_file_chunks(self, path: pathlib.Path, entry) -> tuple[int, int]:
        return put_file_chunks(self, path, entry)

    def read(self, sha256: str, offset: int = 0, length: int = 0, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        if offset < 0 or length < 0:
            raise ArtifactInvalid("offset and length must not be negative")
        total = self.size(sha256)
        if offset >= total:
            return
        end = total - 1 if length <= 0 else min(total, offset + length) - 1
        body = self._call("get_object", Bucket=self.bucket, Key=self.key(sha256),
                          Range=f"bytes={offset}-{end}")["Body"]
        try:
            while True:
                data = body.read(chunk_size)
                if not data:
                    return
                yield data
        finally:
            body.close()
