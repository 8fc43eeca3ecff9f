"""Writes an offline bundle (see edge_agent/bundle.py) for NAME@VERSION from a control plane data folder:
the signed metadata chain as it is now, the manifest and every blob. `slmops models bundle`. State and blobs are
read where the control plane keeps them (its --state / --blobs; the data folder's by default)."""
from __future__ import annotations

import io
import json
import pathlib
import tarfile

from control_plane.blobs import BlobConfig, open_blobs
from control_plane.sqldb import StateConfig
from control_plane.store import Store
from slmops.errors import ArtifactInvalid
from slmops.manifest import Manifest


class _BlobReader(io.RawIOBase):
    """A blob's byte stream as the file object tarfile reads from (works for the folder and for S3)."""

    def __init__(self, chunks):
        self.chunks, self.rest = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self.rest:
            self.rest = next(self.chunks, None)
            if self.rest is None:
                self.rest = b""
                return 0
        n = min(len(buf), len(self.rest))
        buf[:n], self.rest = self.rest[:n], self.rest[n:]
        return n


def export_bundle(data_dir: pathlib.Path, name: str, version: str, out: pathlib.Path,
                  state: StateConfig | None = None, blob_config: BlobConfig | None = None) -> pathlib.Path:
    data_dir = pathlib.Path(data_dir)
    store = Store(state or data_dir / "control_plane.db")
    blobs = open_blobs(blob_config or BlobConfig(str(data_dir / "blobs")))
    row = store.model(name, version)
    if row is None:
        raise ArtifactInvalid(f"no published model {name}@{version} in {data_dir}")
    m = Manifest.from_json(row["manifest"])
    tmp = out.with_name(out.name + ".part")

    def add_bytes(tar: tarfile.TarFile, arcname: str, data: bytes) -> None:
        info = tarfile.TarInfo(arcname)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(tmp, "w") as tar:
        add_bytes(tar, "bundle.json", json.dumps({"format": 1, "name": name, "version": version}).encode())
        for p in sorted((data_dir / "trust" / "roots").glob("*.root.json")):
            tar.add(p, f"metadata/roots/{p.name}")
        for role in ("timestamp", "snapshot", "targets"):
            raw = store.get_meta(f"tuf_{role}")
            if not raw:
                raise ArtifactInvalid(f"{data_dir} has no signed {role} metadata yet")
            add_bytes(tar, f"metadata/{role}.json", bytes.fromhex(raw))
        for sha in [row["manifest_sha256"], *sorted({sha for f in m.files for sha, _, _ in f.chunk_spans()})]:
            try:
                info = tarfile.TarInfo(f"blobs/{sha}")
                info.size = blobs.size(sha)
            except FileNotFoundError as e:
                raise ArtifactInvalid(f"blob {sha[:12]}… of {name}@{version} is missing from the blob store") from e
            tar.addfile(info, _BlobReader(blobs.read(sha)))
    tmp.rename(out)
    return out
