"""Continuous delivery, in the control plane process: publish a gated bundle (the same checks as
`slmops models publish`: a passing gate.json whose file hashes still match) and roll it out with the fleet's
own rollout engine, then follow the rollout until it completes, halts or is aborted.
"""
from __future__ import annotations

import pathlib

from control_plane import rollout_driver
from control_plane import rollouts as ro
from control_plane.blobs import BlobStore
from control_plane.fleet_admin import GATE_FIELDS
from control_plane.registry import Registry
from control_plane.store import Store


class DeliveryFailed(Exception):
    """Publishing or rolling out was refused or stopped; the message says why."""


def rollout_spec(cfg: dict, name: str, version: str) -> ro.RolloutSpec:
    """Raises rollouts.RolloutInvalid naming the bad setting."""
    def wave(w: dict) -> ro.Wave:
        return ro.Wave(int(w.get("devices", 0)), float(w.get("percent", 0.0)))
    sel = cfg["selector"]
    return ro.RolloutSpec.strategy(
        cfg["strategy"], name, version,
        ro.Selector(dict(sel.get("labels") or {}), tuple(sel.get("hardware_classes") or ()),
                    bool(sel.get("all_devices"))),
        canary=wave(cfg["canary"]) if cfg.get("canary") else None, waves=tuple(wave(w) for w in cfg["waves"]),
        max_per_minute=cfg["max_devices_per_minute"],
        gate=ro.Gate(**{GATE_FIELDS[k]: v for k, v in cfg["gate"].items()}))


def publish(registry: Registry, blobs: BlobStore, store: Store, bundle_dir: str, name: str, version: str) -> dict:
    from slmops.errors import ArtifactInvalid
    from training.publish import publishable_manifest
    from training.quality_gate import GateError

    bundle = pathlib.Path(bundle_dir)
    try:
        m = publishable_manifest(bundle, name, version)
    except (GateError, ArtifactInvalid) as e:
        raise DeliveryFailed(str(e)) from e
    existing = store.model(name, version)
    if existing is not None:
        files = {f.path: f.sha256 for f in m.files}
        same = {r["path"]: r["sha256"] for r in store.db.query(
            "select path, sha256 from model_files where name = ? and version = ?", [name, version])}
        if files != same:
            raise DeliveryFailed(f"{name}@{version} is already published with other files; versions are "
                                 f"immutable (use version: \"v-{{hash}}\" to name each build by its content)")
        return {"model": f"{name}@{version}", "already_published": True}
    for f in m.files:  # only chunks the store does not hold yet are written (versions share chunks)
        blobs.put_file_chunks(bundle / f.path, f)
    try:
        registry.publish(m.to_json())
    except ArtifactInvalid as e:
        raise DeliveryFailed(str(e)) from e
    return {"model": f"{name}@{version}", "precision": m.precision, "files": len(m.files),
            "bytes": m.total_bytes}


def start_rollout(store: Store, cfg: dict, name: str, version: str, who: str) -> str:
    try:
        return rollout_driver.create(store, rollout_spec(cfg, name, version), who).rollout_id
    except rollout_driver.RolloutRefused as e:
        raise DeliveryFailed(str(e)) from e


def abort_rollout(store: Store, rollout_id: str, who: str) -> None:
    def abort(r: ro.Rollout) -> ro.Rollout:
        return r if r.status in ro.TERMINAL or r.status in ro.ROLLING_BACK else ro.operator_event(r, ro.ABORT, who)
    rollout_driver.change(store, rollout_id, abort)
    store.rollouts_changed.set()


def rollout_outcome(store: Store, rollout_id: str) -> tuple[str, str] | None:
    """(status, reason) once the rollout is finished; None while it runs."""
    r = rollout_driver.load(store, rollout_id)
    if r is None:
        return ro.ABORTED, f"rollout {rollout_id} is gone"
    return (r.status, r.reason) if r.status in ro.TERMINAL else None
