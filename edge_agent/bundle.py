"""Offline bundles for air-gapped devices: one plain (uncompressed) tar holding the signed metadata chain, the
manifest and every blob. The agent verifies a bundle exactly as it verifies an update from the control plane
(trust.update, the manifest's target hash, every file's sha256): the tar is only a different transport.

    bundle.json                      {"format": 1, "name": ..., "version": ...}
    metadata/roots/N.root.json       every root version
    metadata/{timestamp,snapshot,targets}.json
    blobs/<sha256>                   the manifest and every file

Nothing but the small metadata is unpacked: `unpack` reads the tar's headers (no data), refuses anything that
is not a regular file or folder, a compressed tar (a decompression bomb needs no signature), a member that
claims more bytes than the file holds, and copies out only bundle.json and metadata/ (each within the size caps
of trust.py). Blobs are read straight from the tar by `read_blob`, so what lands on disk is only what the signed
manifest lists, through the fetcher's size caps and after the free-disk check.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import stat
import tarfile
import tempfile
from typing import Iterator

from edge_agent.trust import MAX_BYTES, Fetched
from slmops.errors import ArtifactInvalid

SUFFIX = ".slmops.tar"
MAX_MEMBERS = 100_000
MAX_BUNDLE_JSON = 64 << 10
MAX_METADATA_TOTAL = 64 << 20
MIN_FREE_FOR_METADATA = 16 << 20
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_BLOB = re.compile(r"^blobs/([0-9a-f]{64})$")
_ROOT = re.compile(r"^metadata/roots/([0-9]{1,9})\.root\.json$")
_ROLES = {f"metadata/{r}.json": r for r in ("timestamp", "snapshot", "targets")}
INDEX = "index.json"


def open_regular(path: pathlib.Path):
    """Opens `path` for reading only if it is a regular file: never follows a symlink, never blocks on a FIFO,
    never reads a device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise ArtifactInvalid(f"{path.name} cannot be opened as a regular file (a symlink, or unreadable): "
                              f"{e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ArtifactInvalid(f"{path.name} is not a regular file (a FIFO, device, socket or folder)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st.st_size


def _member_limit(name: str) -> int | None:
    """The most bytes a member may hold, or None when the name has no place in a bundle."""
    if name == "bundle.json":
        return MAX_BUNDLE_JSON
    if name in _ROLES:
        return MAX_BYTES[_ROLES[name]]
    if _ROOT.match(name):
        return MAX_BYTES["root"]
    if _BLOB.match(name):
        return 1 << 62    # bounded later by the signed manifest, never by the tar's own claim
    return None


def scan(f, file_size: int, label: str) -> dict[str, tuple[int, int]]:
    """Reads a plain tar's headers only: {member name: (data offset, size)} for its regular files, each name
    and size checked; folders are allowed; anything else is refused."""
    head = f.read(8)
    f.seek(0)
    for magic, what in _COMPRESSED:
        if head.startswith(magic):
            raise ArtifactInvalid(f"{label} is {what}-compressed: bundles are plain tar (`slmops models bundle` "
                                  "writes them so); a compressed one is refused before anything is unpacked")
    members: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for n, m in enumerate(tar):
                if n >= MAX_MEMBERS:
                    raise ArtifactInvalid(f"{label} has more than {MAX_MEMBERS} members")
                name = m.name[2:] if m.name.startswith("./") else m.name
                if m.isdir():
                    continue
                if not m.isfile():
                    raise ArtifactInvalid(f"{label}: {m.name!r} is not a plain file (links, FIFOs and devices "
                                          "are refused)")
                limit = _member_limit(name)
                if limit is None:
                    raise ArtifactInvalid(f"{label}: {m.name!r} has no place in a bundle")
                if m.size > limit:
                    raise ArtifactInvalid(f"{label}: {name} claims {m.size} bytes, at most {limit}")
                if m.offset_data + m.size > file_size:
                    raise ArtifactInvalid(f"{label} is truncated: {name} claims {m.size} bytes past the end")
                if name in members:
                    raise ArtifactInvalid(f"{label}: {name} appears twice")
                members[name] = (m.offset_data, m.size)
    except tarfile.TarError as e:
        raise ArtifactInvalid(f"{label} is not a readable tar (truncated or damaged): {e}") from None
    return members


def unpack(tar_path: pathlib.Path, work_dir: pathlib.Path) -> tuple[pathlib.Path, str, str]:
    """Checks the bundle's structure and copies out its metadata into a work folder (with an index of where
    each blob sits in the tar). Returns (folder, name, version) as bundle.json states them (unverified: the
    signed manifest must agree)."""
    tar_path = pathlib.Path(tar_path).absolute()
    label = tar_path.name
    f, size = open_regular(tar_path)
    dest = None
    try:
        with f:
            members = scan(f, size, label)
            meta = {n: s for n, s in members.items() if not n.startswith("blobs/")}
            if "bundle.json" not in meta:
                raise ArtifactInvalid(f"{label} has no bundle.json")
            meta_bytes = sum(s for _, s in meta.values())
            if meta_bytes > MAX_METADATA_TOTAL:
                raise ArtifactInvalid(f"{label}: its metadata is larger than {MAX_METADATA_TOTAL} bytes")
            work_dir.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(work_dir).free
            if free < meta_bytes + MIN_FREE_FOR_METADATA:
                raise ArtifactInvalid(f"{label}: {free} bytes free, its metadata needs {meta_bytes} (and "
                                      f"{MIN_FREE_FOR_METADATA} must stay free)")
            dest = pathlib.Path(tempfile.mkdtemp(prefix="bundle-", dir=work_dir))
            for name, (offset, length) in meta.items():
                f.seek(offset)
                data = f.read(length)
                if len(data) != length:
                    raise ArtifactInvalid(f"{label} is truncated inside {name}")
                out = dest / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
        name, version = _bundle_info((dest / "bundle.json").read_bytes(), label)
        blobs = {_BLOB.match(n).group(1): s for n, s in members.items() if n.startswith("blobs/")}
        (dest / INDEX).write_text(json.dumps({"tar": str(tar_path), "blobs": blobs}))
        return dest, name, version
    except ArtifactInvalid:
        if dest is not None:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    except OSError as e:
        if dest is not None:
            shutil.rmtree(dest, ignore_errors=True)
        raise ArtifactInvalid(f"{label} could not be read: {e}") from None


def _bundle_info(raw: bytes, label: str) -> tuple[str, str]:
    try:
        info = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ArtifactInvalid(f"{label}: bundle.json is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(info, dict):
        raise ArtifactInvalid(f"{label}: bundle.json must be a JSON object, not {type(info).__name__}")
    if info.get("format") != 1:
        raise ArtifactInvalid(f"{label}: bundle format {str(info.get('format'))[:40]!r} is not supported")
    name, version = info.get("name"), info.get("version")
    if not all(isinstance(v, str) and _NAME.match(v) for v in (name, version)):
        raise ArtifactInvalid(f"{label}: bundle.json needs a model name and version matching {_NAME.pattern}")
    return name, version


def read_metadata(folder: pathlib.Path, trusted_root_version: int) -> Fetched:
    md = folder / "metadata"
    try:
        roots = sorted((int(p.name.split(".")[0]), p) for p in (md / "roots").glob("*.root.json"))
        return Fetched(tuple(p.read_bytes() for v, p in roots if v > trusted_root_version),
                       (md / "timestamp.json").read_bytes(), (md / "snapshot.json").read_bytes(),
                       (md / "targets.json").read_bytes())
    except (OSError, ValueError) as e:
        raise ArtifactInvalid(f"bundle metadata is incomplete: {e}") from e


def read_blob(folder: pathlib.Path, sha256: str, offset: int) -> Iterator[bytes]:
    """The bytes of one blob from `offset`, read from the tar in place (the fetcher cuts them at the signed size
    and checks their hash)."""
    try:
        index = json.loads((folder / INDEX).read_text())
    except (OSError, ValueError) as e:
        raise ArtifactInvalid(f"bundle work folder {folder.name} is damaged: {e}") from None
    where = index["blobs"].get(sha256)
    if where is None:
        raise ArtifactInvalid(f"bundle has no blob {sha256[:12]}…")
    start, size = where
    f, _ = open_regular(pathlib.Path(index["tar"]))
    with f:
        f.seek(start + offset)
        left = size - offset
        while left > 0:
            chunk = f.read(min(1 << 20, left))
            if not chunk:
                raise ArtifactInvalid(f"bundle blob {sha256[:12]}… ends early (the tar changed or is truncated)")
            left -= len(chunk)
            yield chunk
