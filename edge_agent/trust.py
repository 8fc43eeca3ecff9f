"""Pure verification of TUF-style metadata: trusted bytes + fetched bytes + a reference time in, a verdict out.

python-tuf's TrustedMetadataSet does the specification's checks (signatures and thresholds, root rotation,
rollback of any role, expiry, snapshot/targets consistency). Around it this module adds what an edge fleet
needs: a bound on version jumps (an attacker with a stolen online key cannot fast-forward a device out of
reach of legitimate updates), the lookup of a model's target, and the hardware/EP fit. No network, no disk.

Every refusal is an ArtifactInvalid whose message starts with the attack it stopped.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, Targets, TargetFile
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet
from tuf.ngclient.config import EnvelopeType

from slmops.errors import ArtifactInvalid

MAX_ROOT_ROTATIONS = 32
MAX_VERSION_JUMP = 100_000      # an hourly timestamp for ~11 years; anything beyond is an inflation attack
MAX_BYTES = {"root": 512 << 10, "timestamp": 64 << 10, "snapshot": 4 << 20, "targets": 32 << 20}


@dataclass(frozen=True)
class Trusted:
    """What a device trusts, persisted as raw bytes (re-verified on load)."""
    root: bytes
    timestamp: bytes | None = None
    snapshot: bytes | None = None
    targets: bytes | None = None


@dataclass(frozen=True)
class Fetched:
    roots: tuple[bytes, ...]       # every root newer than the trusted one, in version order
    timestamp: bytes
    snapshot: bytes
    targets: bytes


def _label(e: Exception) -> str:
    if isinstance(e, tuf_exc.ExpiredMetadataError):
        return "freeze (expired metadata)"
    if isinstance(e, tuf_exc.BadVersionNumberError):
        return "rollback (version went backwards or does not match)"
    if isinstance(e, tuf_exc.UnsignedMetadataError):
        return "untrusted signature (unknown key or below threshold)"
    if isinstance(e, tuf_exc.LengthOrHashMismatchError):
        return "mix-and-match (metadata does not belong together)"
    return "invalid metadata"


def _version(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return Metadata.from_bytes(raw).signed.version
    except Exception as e:  # noqa: BLE001 - any parse failure is the same verdict
        raise ArtifactInvalid(f"invalid metadata: cannot parse ({e})") from e


def update(trusted: Trusted, fetched: Fetched, now: dt.datetime) -> tuple[Trusted, Targets]:
    """Verifies `fetched` against `trusted` at time `now`. Returns the new trusted state and the targets."""
    if len(fetched.roots) > MAX_ROOT_ROTATIONS:
        raise ArtifactInvalid(f"invalid metadata: {len(fetched.roots)} root rotations at once "
                              f"(at most {MAX_ROOT_ROTATIONS})")
    for role, data in (("timestamp", fetched.timestamp), ("snapshot", fetched.snapshot),
                       ("targets", fetched.targets), *(("root", r) for r in fetched.roots)):
        if len(data) > MAX_BYTES[role]:
            raise ArtifactInvalid(f"endless data: {role} metadata of {len(data)} bytes exceeds "
                                  f"{MAX_BYTES[role]}")
    for role in ("timestamp", "snapshot", "targets"):
        old, new = _version(getattr(trusted, role)), _version(getattr(fetched, role))
        if old is not None and new - old > MAX_VERSION_JUMP:
            raise ArtifactInvalid(f"fast-forward (inflated version): {role} v{new} jumps more than "
                                  f"{MAX_VERSION_JUMP} past trusted v{old}")
    try:
        tms = TrustedMetadataSet(trusted.root, EnvelopeType.METADATA)
        tms.reference_time = now
        roots = [trusted.root]
        for raw in fetched.roots:
            tms.update_root(raw)
            roots.append(raw)
        # Trusted copies first, for rollback protection; a copy no longer valid under a rotated root is
        # dropped (that is how TUF recovers from a fast-forward attack once the stolen key is rotated out).
        if trusted.timestamp:
            try:
                tms.update_timestamp(trusted.timestamp)
            except tuf_exc.RepositoryError:
                pass
        try:
            tms.update_timestamp(fetched.timestamp)
            ts_raw = fetched.timestamp
        except tuf_exc.EqualVersionNumberError:
            ts_raw = trusted.timestamp
        snap_raw = None
        if trusted.snapshot:
            try:
                tms.update_snapshot(trusted.snapshot, trusted=True)
                snap_raw = trusted.snapshot
            except tuf_exc.RepositoryError:
                pass
        if snap_raw is None:
            tms.update_snapshot(fetched.snapshot)
            snap_raw = fetched.snapshot
        targets_raw = None
        if trusted.targets and snap_raw == trusted.snapshot:
            try:
                tms.update_targets(trusted.targets)
                targets_raw = trusted.targets
            except tuf_exc.RepositoryError:
                pass
        if targets_raw is None:
            tms.update_targets(fetched.targets)
            targets_raw = fetched.targets
    except tuf_exc.RepositoryError as e:
        raise ArtifactInvalid(f"{_label(e)}: {e}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactInvalid(f"invalid metadata: {e}") from e
    return Trusted(roots[-1], ts_raw, snap_raw, targets_raw), tms.targets


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def root_version(trusted: Trusted) -> int:
    return Metadata.from_bytes(trusted.root).signed.version


def find_target(targets: Targets, name: str, version: str) -> TargetFile:
    path = f"{name}/{version}/manifest.json"
    tf = targets.targets.get(path)
    if tf is None:
        raise ArtifactInvalid(f"not in signed targets: {name}@{version} was never published by the trusted "
                              "repository")
    return tf


def check_fit(target: TargetFile, hardware_class: str, providers: list[str]) -> None:
    """Wrong-software defence: a bundle built for other hardware or another execution provider is refused."""
    custom = target.custom or {}
    want_hw, want_ep = custom.get("hardware_class", "cpu"), custom.get("execution_provider", "cpu")
    if want_hw != hardware_class and not (want_hw == "cpu" and "cpu" in providers):
        raise ArtifactInvalid(f"wrong software: {target.path} is for hardware class {want_hw!r}, this device is "
                              f"{hardware_class!r}")
    if want_ep not in providers:
        raise ArtifactInvalid(f"wrong software: {target.path} targets execution provider {want_ep!r}; this "
                              f"device has {', '.join(providers)}")


def check_manifest(target: TargetFile, manifest: bytes) -> None:
    try:
        target.verify_length_and_hashes(manifest)
    except tuf_exc.LengthOrHashMismatchError as e:
        raise ArtifactInvalid(f"arbitrary software: manifest bytes do not match the signed target: {e}") from e


def installed_is_trusted(trusted: Trusted, name: str, version: str, manifest: bytes) -> None:
    """At start-up, offline: the installed manifest must be the one the last trusted targets named. Expiry is
    not checked here on purpose: a device that was offline keeps serving what it verified."""
    if trusted.targets is None:
        raise ArtifactInvalid("no trusted targets metadata on this device")
    tms_targets = Metadata[Targets].from_bytes(trusted.targets).signed
    check_manifest(find_target(tms_targets, name, version), manifest)
