"""Offline bundles for air-gapped devices: one tar holding the signed metadata chain, the manifest and every
blob. The agent verifies a bundle exactly as it verifies an update from the control plane (trust.update, the
manifest's target hash, every file's sha256): the tar is only a different transport.

    bundle.json                      {"format": 1, "name": ..., "version": ...}
    metadata/roots/N.root.json       every root version
    metadata/{timestamp,snapshot,targets}.json
    blobs/<sha256>                   the manifest and every file
"""
from __future__ import annotations

import json
import pathlib
import shutil
import tarfile
import tempfile
from typing import Iterator

from edge_agent.trust import Fetched
from slmops.errors import ArtifactInvalid

SUFFIX = ".slmops.tar"
MAX_UNPACKED = 64 << 30


def unpack(tar_path: pathlib.Path, work_dir: pathlib.Path) -> tuple[pathlib.Path, str, str]:
    work_dir.mkdir(parents=True, exist_ok=True)
    dest = pathlib.Path(tempfile.mkdtemp(prefix="bundle-", dir=work_dir))
    try:
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            if sum(m.size for m in members) > MAX_UNPACKED:
                raise ArtifactInvalid(f"{tar_path.name} unpacks to more than {MAX_UNPACKED} bytes")
            for m in members:
                if not (m.isfile() or m.isdir()):
                    raise ArtifactInvalid(f"{tar_path.name}: {m.name} is not a plain file")
            tar.extractall(dest, filter="data")  # refuses absolute paths, '..', links outside
        info = json.loads((dest / "bundle.json").read_text())
        if info.get("format") != 1:
            raise ArtifactInvalid(f"{tar_path.name}: bundle format {info.get('format')!r} is not supported")
        return dest, str(info["name"]), str(info["version"])
    except (tarfile.TarError, OSError, ValueError, KeyError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArtifactInvalid(f"{tar_path.name} is not a readable SLMOps bundle: {e}") from e
    except ArtifactInvalid:
        shutil.rmtree(dest, ignore_errors=True)
        raise


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
    path = folder / "blobs" / sha256
    if not path.is_file():
        raise ArtifactInvalid(f"bundle has no blob {sha256[:12]}…")
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 20):
            yield chunk
