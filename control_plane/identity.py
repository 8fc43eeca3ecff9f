"""A control plane's identity: the trust root its devices pin (DATA_DIR/trust/roots/1.root.json, with the online
keys in DATA_DIR/trust/keys) and the CA its TLS certificates chain to (DATA_DIR/keys/ca.pem, ca-key.pem).

Replicas over one database are one control plane, so they must share both: a replica that made its own would
sign metadata no device accepts, or serve a certificate no agent trusts. The first control plane to start on a
database records the fingerprints of both in it (meta `identity_trust_root`, `identity_tls_ca`); a later one whose
data folder holds other ones, or none while the database already holds signed metadata, is refused before it
makes or signs anything. `copy(src, dest)` (`slmops control-plane copy-identity SRC DEST`) gives a new replica's
data folder the identity of an existing one; each replica still issues its own server certificate (for its own
names) and keeps its own admin-token file unless one is copied.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil

from slmops.errors import ConfigError

TRUST_KEY, CA_KEY = "identity_trust_root", "identity_tls_ca"
COPY_HINT = "give it the identity of a running replica: `slmops control-plane copy-identity REPLICA_DATA_DIR DATA_DIR`"


def _sha(path: pathlib.Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def fingerprints(data_dir: pathlib.Path, tls: bool) -> dict[str, str | None]:
    """{meta key: sha256 of the file in `data_dir`, or None where it is not there yet}; the CA only with `tls`."""
    data = pathlib.Path(data_dir)
    out = {TRUST_KEY: _sha(data / "trust" / "roots" / "1.root.json")}
    if tls:
        out[CA_KEY] = _sha(data / "keys" / "ca.pem")
    return out


WHAT = {TRUST_KEY: "trust root (trust/roots/1.root.json)", CA_KEY: "TLS CA (keys/ca.pem)"}


def verdict(mine: dict[str, str | None], recorded: dict[str, str], signed: bool) -> str:
    """Why this data folder may not serve this database ("" when it may). Pure. `recorded`: the fingerprints the
    database holds; `signed`: whether the database already holds signed trust metadata (from before fingerprints
    were recorded, or a replica that lost the race to record them)."""
    for key, have in mine.items():
        want = recorded.get(key)
        if want and have and have != want:
            return (f"this data folder's {WHAT[key]} is {have[:12]}..., but the database belongs to a control plane "
                    f"whose {WHAT[key].split(' (')[0]} is {want[:12]}...; {COPY_HINT}")
        if want and not have:
            return (f"the database belongs to a control plane with {WHAT[key]} {want[:12]}... and this data folder "
                    f"has none (a new one would not be trusted by its devices); {COPY_HINT}")
    if signed and not recorded.get(TRUST_KEY) and not mine[TRUST_KEY]:
        return f"the database holds signed trust metadata and this data folder has no trust root; {COPY_HINT}"
    return ""


def check(store, data_dir: pathlib.Path, tls: bool) -> None:
    """Before the control plane makes or signs anything: ConfigError (naming the data folder) when this data
    folder's identity is not the database's."""
    mine = fingerprints(data_dir, tls)
    recorded = {k: v for k, v in store.get_metas([TRUST_KEY, CA_KEY]).items() if v}
    why = verdict(mine, recorded, bool(store.get_meta("tuf_signed_with_root")))
    if why:
        raise ConfigError(f"{data_dir}: {why}")


def claim(store, data_dir: pathlib.Path, tls: bool) -> None:
    """Records this data folder's fingerprints in the database where none is recorded yet (the first control plane
    on it; two starting at once: the first write wins); ConfigError when another one was recorded meanwhile."""
    for key, have in fingerprints(data_dir, tls).items():
        if have is None:
            continue
        stored = store.claim_meta(key, have)
        if stored != have:
            raise ConfigError(f"{data_dir}: another control plane recorded its {WHAT[key]} {stored[:12]}... in "
                              f"this database first; this data folder's is {have[:12]}...; {COPY_HINT}")


def copy(src: pathlib.Path, dest: pathlib.Path) -> list[str]:
    """Copies the identity files of data folder `src` into `dest` (made if missing): the trust roots, the online
    keys (and the root key where it lives next to them), the CA and its key; private keys stay 0600. Refuses to
    replace another identity in `dest`. Returns the files copied, relative to `dest`."""
    src, dest = pathlib.Path(src), pathlib.Path(dest)
    if src.resolve() == dest.resolve():
        raise ConfigError(f"{src} and {dest} are the same folder")
    if not (src / "trust" / "roots" / "1.root.json").is_file():
        raise ConfigError(f"{src} has no trust/roots/1.root.json: not a control plane's data folder (or it has "
                          f"not started yet)")
    theirs = fingerprints(src, tls=True)
    for key, have in fingerprints(dest, tls=True).items():
        want = theirs[key]
        if have and have != want:
            raise ConfigError(f"{dest} already has another {WHAT[key]} ({have[:12]}... vs {want[:12]}...); "
                              f"refusing to replace a control plane's identity")
    files = sorted((src / "trust" / "roots").glob("*.root.json")) + sorted((src / "trust" / "keys").glob("*.pem"))
    files += [p for p in (src / "keys" / "ca.pem", src / "keys" / "ca-key.pem") if p.is_file()]
    copied = []
    for p in files:
        rel = p.relative_to(src)
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(out.parent, 0o700)
        tmp = out.with_name(out.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f, open(p, "rb") as r:
            shutil.copyfileobj(r, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        copied.append(str(rel))
    return copied
