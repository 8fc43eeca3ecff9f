"""One way to prepare a publish: the manifest of an exported, gated folder. Used by `slmops models publish`,
the pipelines' publish stage and the demo, so the three cannot drift apart.

A variant that failed (or never ran) the quality gate, or whose files changed since, is never published."""
from __future__ import annotations

import json
import pathlib

from slmops.errors import ArtifactInvalid
from slmops.manifest import DEFAULT_CHUNK_BYTES, Manifest, manifest_for_dir
from training.quality_gate import check_publishable


def publishable_manifest(bundle_dir: pathlib.Path, name: str, version: str,
                         chunk_bytes: int = DEFAULT_CHUNK_BYTES, **extra) -> Manifest:
    """The signed-to-be manifest of `bundle_dir` as NAME@VERSION: its files, chunks, precision and execution
    provider (from export_info.json), the gate's metrics, and its runtime adapters (adapters.json).
    Raises quality_gate.GateError (gate missing, failed, or files changed) or ArtifactInvalid."""
    bundle_dir = pathlib.Path(bundle_dir)
    info = bundle_dir / "export_info.json"
    if not info.exists():
        raise ArtifactInvalid(f"{bundle_dir} has no export_info.json; export it with `slmops export` first")
    try:
        exp = json.loads(info.read_text())
        adapters = bundle_dir / "adapters.json"
        adapter_list = tuple(json.loads(adapters.read_text())) if adapters.exists() else ()
    except ValueError as e:
        raise ArtifactInvalid(f"{bundle_dir}: {e}") from e
    verdict = check_publishable(bundle_dir)
    return manifest_for_dir(bundle_dir, name, version, exp["precision"], chunk_bytes=chunk_bytes,
                            execution_provider=exp["execution_provider"],
                            metrics={"quality_gate": verdict["metrics"], "reference": verdict["reference"]},
                            adapters=adapter_list, **extra)
