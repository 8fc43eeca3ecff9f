"""Writes an offline bundle (see edge_agent/bundle.py) for NAME@VERSION from a control plane data folder:
the signed metadata chain as it is now, the manifest and every blob. `slmops models bundle`."""
from __future__ import annotations

import io
import json
import pathlib
import tarfile

from control_plane.blobs import BlobStore
from control_plane.store import Store
from slmops.errors import ArtifactInvalid
from slmops.manifest import Manifest


def export_bundle(data_dir: pathlib.Path, name: str, version: str, out: pathlib.Path) -> pathlib.Path:
    data_dir = pathlib.Path(data_dir)
    store = Store(data_dir / "control_plane.db")
    blobs = BlobStore(data_dir / "blobs")
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
        tar.add(blobs.path(row["manifest_sha256"]), f"blobs/{row['manifest_sha256']}")
        for sha in sorted({sha for f in m.files for sha, _, _ in f.chunk_spans()}):
            tar.add(blobs.path(sha), f"blobs/{sha}")
    tmp.rename(out)
    return out
