"""The control plane's side of the trust model: TUF-style roles (root, targets, snapshot, timestamp) written with
python-tuf's Metadata API and signed with Ed25519 keys (cryptography via securesystemslib's CryptoSigner).

Layout of a trust folder (data_dir/trust):
    roots/N.root.json     every root version ever published (agents walk them to rotate keys)
    keys/<role>.pem       the online keys (targets, snapshot, timestamp); root.pem only when not kept offline
Each published model version is one target, "<name>/<version>/manifest.json", whose hash pins the manifest,
whose hashes pin every file. Targets, snapshot and timestamp are re-signed (new versions) on every publish and
whenever a new root appears; the timestamp is refreshed before it expires.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import pathlib
import threading
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import (Metadata, MetaFile, Role, Root, Snapshot, TargetFile, Targets, Timestamp)

from control_plane.sqldb import TRUST_LOCK
from slmops.errors import ConfigError

ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE = ("targets", "snapshot", "timestamp")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid. A short timestamp bounds how long a device can be frozen."""
    root: dt.timedelta = dt.timedelta(days=365)
    targets: dt.timedelta = dt.timedelta(days=90)
    snapshot: dt.timedelta = dt.timedelta(days=7)
    timestamp: dt.timedelta = dt.timedelta(days=1)

    def __post_init__(self) -> None:
        for role in ROLES:
            if getattr(self, role) < dt.timedelta(seconds=1):
                raise ConfigError(f"{role} expiry must be at least 1 s")


def target_path(name: str, version: str) -> str:
    return f"{name}/{version}/manifest.json"


# ---- keys ---------------------------------------------------------------------------------------------
def write_key(path: pathlib.Path) -> CryptoSigner:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return CryptoSigner(key)


def load_signer(path: pathlib.Path) -> CryptoSigner:
    key = serialization.load_pem_private_key(pathlib.Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return CryptoSigner(key)


def public(signer: CryptoSigner) -> SSlibKey:
    return signer.public_key


def write_atomic(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- offline operations: init and rotation (CLI `slmops keys ...`) ------------------------------------
def init_trust(trust_dir: pathlib.Path, root_key_dir: pathlib.Path | None = None,
               expiry: Expiry = Expiry()) -> Metadata[Root]:
    """Creates a key per role and root v1. The root key goes to `root_key_dir` (keep it offline) or, by
    default, next to the online keys so a single-machine install works out of the box."""
    trust_dir = pathlib.Path(trust_dir)
    if (trust_dir / "roots" / "1.root.json").exists():
        raise ConfigError(f"{trust_dir} already has a root; use `slmops keys rotate` to change keys")
    root_key_dir = pathlib.Path(root_key_dir) if root_key_dir else trust_dir / "keys"
    signers = {role: write_key((root_key_dir if role == "root" else trust_dir / "keys") / f"{role}.pem")
               for role in ROLES}
    root = Root(expires=utcnow() + expiry.root, consistent_snapshot=False)
    for role, signer in signers.items():
        root.add_key(public(signer), role)
    md = Metadata(root)
    md.sign(signers["root"])
    write_atomic(trust_dir / "roots" / "1.root.json", md.to_bytes())
    return md


def latest_root(trust_dir: pathlib.Path) -> tuple[int, bytes]:
    roots = sorted(((int(p.name.split(".")[0]), p) for p in (pathlib.Path(trust_dir) / "roots").glob("*.root.json")))
    if not roots:
        raise ConfigError(f"{trust_dir} has no roots/N.root.json: run `slmops keys init` first")
    version, path = roots[-1]
    return version, path.read_bytes()


def rotate_key(trust_dir: pathlib.Path, role: str, root_key_paths: list[pathlib.Path],
               new_key_dir: pathlib.Path | None = None, threshold: int = 1, extra_keys: int = 0,
               expiry: Expiry = Expiry()) -> Metadata[Root]:
    """Replaces every key of `role` with new ones (revoking the old), as root version N+1 signed by the current
    root keys (the old threshold) and, when root itself rotates, by the new root keys too."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    trust_dir = pathlib.Path(trust_dir)
    version, raw = latest_root(trust_dir)
    md = Metadata[Root].from_bytes(raw)
    old_signers = [load_signer(p) for p in root_key_paths]
    known = {s.public_key.keyid for s in old_signers}
    if len(known & set(md.signed.roles["root"].keyids)) < md.signed.roles["root"].threshold:
        raise ConfigError(f"the given root keys do not meet root's threshold of {md.signed.roles['root'].threshold}")
    default_dir = pathlib.Path(root_key_paths[0]).parent if role == "root" else trust_dir / "keys"
    key_dir = pathlib.Path(new_key_dir) if new_key_dir else default_dir
    for keyid in list(md.signed.roles[role].keyids):
        md.signed.revoke_key(keyid, role)
    new_signers, pending = [], []
    for i in range(1 + extra_keys):
        final = key_dir / (f"{role}.pem" if i == 0 else f"{role}-{i}.pem")
        tmp = key_dir / f".{final.name}.v{version + 1}"
        new_signers.append(write_key(tmp))
        pending.append((tmp, final))
        md.signed.add_key(public(new_signers[-1]), role)
    md.signed.roles[role].threshold = threshold
    md.signed.version = version + 1
    md.signed.expires = utcnow() + expiry.root
    md.signatures.clear()
    for s in old_signers + (new_signers if role == "root" else []):
        md.sign(s, append=True)
    write_atomic(trust_dir / "roots" / f"{version + 1}.root.json", md.to_bytes())
    # the new keys become the live ones only once the root that names them exists
    for tmp, final in pending:
        os.replace(tmp, final)
    return md


# ---- the online repository ----------------------------------------------------------------------------
@dataclass
class RepoState:
    root_version: int = 0
    targets: Metadata | None = None
    snapshot: Metadata | None = None
    timestamp: Metadata | None = None
    raw: dict = field(default_factory=dict)   # role -> bytes served


class Repository:
    """Signs targets/snapshot/timestamp with the online keys and serves every role's bytes.

    Persistence: the current bytes of each online role live in the store's meta table, so a restart keeps
    versions growing (a version that went backwards would be refused by every device)."""

    def __init__(self, trust_dir: pathlib.Path, store, expiry: Expiry = Expiry(), clock=utcnow):
        self.dir = pathlib.Path(trust_dir)
        self.store = store
        self.expiry = expiry
        self.clock = clock
        self.lock = threading.RLock()
        self.state = RepoState()
        if not (self.dir / "roots" / "1.root.json").exists():
            init_trust(self.dir, expiry=expiry)
        with self._signing():
            self.reload()

    def _load(self) -> None:
        """Takes the signed roles from the store when another control plane on the same database signed newer
        ones (replicas): all roles read in one statement, so they are one consistent set."""
        keys = [f"tuf_{role}" for role in ONLINE] + ["tuf_signed_with_root"]
        saved = self.store.get_metas(keys)
        for role in ONLINE:
            raw = bytes.fromhex(saved[f"tuf_{role}"]) if saved.get(f"tuf_{role}") else None
            if raw and raw != self.state.raw.get(role):
                setattr(self.state, role, Metadata.from_bytes(raw))
                self.state.raw[role] = raw
        self.state.root_version = int(saved.get("tuf_signed_with_root") or 0)

    @contextlib.contextmanager
    def _signing(self):
        """What signs new versions: this process's lock, and on PostgreSQL the database's (one replica signs at a
        time, starting from what the last one stored, so versions only grow and no target is lost)."""
        with self.lock, self.store.exclusive(TRUST_LOCK):
            self._load()
            yield

    # -- helpers
    def _root(self) -> Root:
        return Metadata[Root].from_bytes(latest_root(self.dir)[1]).signed

    def _signers(self, role: str) -> list[CryptoSigner]:
        root = self._root()
        wanted = set(root.roles[role].keyids)
        signers = [load_signer(p) for p in sorted((self.dir / "keys").glob(f"{role}*.pem"))]
        signers = [s for s in signers if s.public_key.keyid in wanted]
        if len(signers) < root.roles[role].threshold:
            raise ConfigError(f"only {len(signers)} of the {role} keys named by root v{root.version} are in "
                              f"{self.dir / 'keys'}; {root.roles[role].threshold} needed")
        return signers

    def _sign(self, role: str, md: Metadata) -> None:
        md.signatures.clear()
        for s in self._signers(role):
            md.sign(s, append=True)
        raw = md.to_bytes()
        setattr(self.state, role, md)
        self.state.raw[role] = raw
        self.store.set_meta(f"tuf_{role}", raw.hex())

    def _next(self, role: str, signed_cls, **fields) -> Metadata:
        cur = getattr(self.state, role)
        version = cur.signed.version + 1 if cur else 1
        expires = self.clock() + getattr(self.expiry, role)
        return Metadata(signed_cls(version=version, expires=expires, **fields))

    def _resign_chain(self, targets: dict[str, TargetFile] | None = None) -> None:
        """New targets (when given, or re-signed as is), then snapshot and timestamp pointing at it."""
        cur_targets = self.state.targets.signed.targets if self.state.targets else {}
        t = self._next("targets", Targets, targets=dict(targets if targets is not None else cur_targets))
        self._sign("targets", t)
        traw = self.state.raw["targets"]
        s = self._next("snapshot", Snapshot,
                       meta={"targets.json": MetaFile(version=t.signed.version, length=len(traw),
                                                      hashes=_sha256(traw))})
        self._sign("snapshot", s)
        self._new_timestamp()

    def _new_timestamp(self) -> None:
        sraw = self.state.raw["snapshot"]
        ts = self._next("timestamp", Timestamp,
                        snapshot_meta=MetaFile(version=self.state.snapshot.signed.version, length=len(sraw),
                                               hashes=_sha256(sraw)))
        self._sign("timestamp", ts)

    # -- public
    def reload(self) -> bool:
        """Picks up a new root (key rotation) and re-signs everything with the keys it names."""
        with self.lock:
            version, _ = latest_root(self.dir)
            if version == self.state.root_version and self.state.timestamp is not None:
                return False
            self._resign_chain()
            self.state.root_version = version
            self.store.set_meta("tuf_signed_with_root", str(version))
            return True

    def add_target(self, name: str, version: str, manifest: bytes, custom: dict) -> TargetFile:
        with self._signing():
            tf = TargetFile.from_data(target_path(name, version), manifest, ["sha256"])
            tf.unrecognized_fields["custom"] = custom
            targets = dict(self.state.targets.signed.targets)
            targets[tf.path] = tf
            self._resign_chain(targets)
            return tf

    def refresh(self) -> bool:
        """Re-signs the timestamp (and snapshot/targets) before they expire; picks up new roots."""
        with self._signing():
            if self.reload():
                return True
            now = self.clock()
            changed = False
            for role in ("targets", "snapshot"):
                md = getattr(self.state, role)
                if md.signed.expires - now < getattr(self.expiry, role) / 2:
                    self._resign_chain()
                    return True
            ts = self.state.timestamp
            if ts.signed.expires - now < self.expiry.timestamp / 2:
                self._new_timestamp()
                changed = True
            return changed

    def snapshot_for_device(self, trusted_root_version: int) -> tuple[list[bytes], dict[str, bytes]]:
        """The roots a device must walk plus the online metadata, consistent with each other: a new root
        found on disk is signed into the chain first, and no root newer than the signing one is served."""
        with self.lock:
            self._load()
            if latest_root(self.dir)[0] != self.state.root_version:
                with self._signing():   # a new root on disk: signed into the chain first
                    self.reload()
            upto = self.state.root_version
            roots = [self.root_bytes(v) for v in range(trusted_root_version + 1, upto + 1)]
            return roots, {role: self.state.raw[role] for role in ONLINE}   # as just loaded

    def root_bytes(self, version: int) -> bytes:
        return (self.dir / "roots" / f"{version}.root.json").read_bytes()

    def current(self) -> dict[str, bytes]:
        with self.lock:
            self._load()
            return {role: self.state.raw[role] for role in ONLINE}


def _sha256(data: bytes) -> dict[str, str]:
    import hashlib

    return {"sha256": hashlib.sha256(data).hexdigest()}


__all__ = ["Expiry", "Repository", "init_trust", "rotate_key", "latest_root", "target_path", "Role"]
