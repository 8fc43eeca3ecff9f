"""What is installed under models/<name>/<version>: reading an install's manifest (re-checked against trusted
metadata when asked), loading it after re-hashing every file, forgetting a damaged one, and garbage
collection (current + previous are kept). Disk only; the decisions are the reconciler's."""
from __future__ import annotations

import pathlib
import shutil

from edge_agent import trust
from edge_agent.fetcher import BlobCache
from edge_agent.verify import check_file
from slmops.errors import ArtifactInvalid
from slmops.manifest import Manifest, combine, sha256_file


class Installs:
    def __init__(self, models_dir: pathlib.Path, blobs: BlobCache, trusted, engine_factory):
        self.models_dir, self.blobs, self.trusted, self.engine_factory = models_dir, blobs, trusted, engine_factory

    def path(self, name: str, version: str) -> pathlib.Path:
        return self.models_dir / name / version

    def manifest(self, path: pathlib.Path, check_trust: bool = False) -> Manifest:
        """The manifest of an install folder; an adapter-only version is combined with base.json, its base's
        signed manifest. With check_trust, both must be what the last trusted targets metadata named."""
        raw = (path / "manifest.json").read_bytes()
        m = Manifest.from_json(raw)
        if check_trust:
            trust.installed_is_trusted(self.trusted(), m.name, m.version, raw)
        if not m.base:
            return m
        base_raw = (path / "base.json").read_bytes()
        if check_trust:
            trust.installed_is_trusted(self.trusted(), m.base["name"], m.base["version"], base_raw)
        return combine(Manifest.from_json(base_raw), m)

    def load(self, name: str, version: str):
        """(engine, manifest) of an installed version, after re-checking its manifest and every file's hash."""
        path = self.path(name, version)
        m = self.manifest(path, check_trust=True)
        for f in m.files:
            check_file(f, sha256_file(path / f.path), (path / f.path).stat().st_size)
        return self.engine_factory(path, m), m

    def forget(self, name: str, version: str) -> None:
        path = self.path(name, version)
        try:
            m = self.manifest(path)
            for f in m.files:  # installed files are hard links to blobs: a corrupt one is corrupt in both
                self.blobs.path(f.sha256).unlink(missing_ok=True)
        except (OSError, ArtifactInvalid):
            pass
        shutil.rmtree(path, ignore_errors=True)

    def manifests(self) -> list[Manifest]:
        """Manifests of the versions installed on disk (their files are the local source of shared chunks)."""
        out = []
        for p in self.models_dir.glob("*/*/manifest.json"):
            try:
                out.append(self.manifest(p.parent))
            except (OSError, ArtifactInvalid):
                pass
        return out

    def collect_garbage(self, keep: list[dict]) -> None:
        """Keep the given versions ({"name", "version"}) and their blobs; remove every other install and blob."""
        keep_dirs = {self.path(k["name"], k["version"]) for k in keep}
        keep_blobs = set()
        for d in keep_dirs:
            try:
                m = self.manifest(d)
                keep_blobs |= {f.sha256 for f in m.files}
                keep_blobs |= {trust.sha256_bytes((d / n).read_bytes()) for n in ("manifest.json", "base.json")
                               if (d / n).exists()}
            except (OSError, ArtifactInvalid):
                pass
        for d in self.models_dir.glob("*/*"):
            if d.is_dir() and d not in keep_dirs and not d.name.startswith(".staging"):
                shutil.rmtree(d, ignore_errors=True)
        for b in self.blobs.root.iterdir():
            if b.is_file() and b.suffix != ".part" and b.name not in keep_blobs:
                b.unlink(missing_ok=True)
        self.blobs.clear_chunks()   # chunks left by an update that did not finish
