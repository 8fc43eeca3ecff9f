"""Atomic install: verified blobs are linked into a staging folder, the trusted manifest is written beside
them, and the folder is renamed to models/<name>/<version>. A crash leaves either nothing or a whole model.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

from slmops.manifest import Manifest


def install(manifest: Manifest, manifest_bytes: bytes, blob_path, models_dir,
            extra: dict[str, bytes] | None = None) -> pathlib.Path:
    """`manifest` lists every file to link (for an adapter-only version: its base's files too); the signed
    `manifest_bytes` become manifest.json, and `extra` files (base.json: the base's signed manifest) sit beside."""
    models_dir = pathlib.Path(models_dir)
    dest = models_dir / manifest.name / manifest.version
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".staging-{manifest.version}-", dir=dest.parent))
    try:
        for f in manifest.files:
            target = staging / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            src = blob_path(f.sha256)
            try:
                os.link(src, target)
            except OSError:
                shutil.copyfile(src, target)
        (staging / "manifest.json").write_bytes(manifest_bytes)
        for name, data in (extra or {}).items():
            (staging / name).write_bytes(data)
        fd = os.open(staging, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def remove_stale_staging(models_dir) -> None:
    for p in pathlib.Path(models_dir).glob("*/.staging-*"):
        shutil.rmtree(p, ignore_errors=True)
