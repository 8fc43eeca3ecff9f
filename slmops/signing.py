"""Ed25519 signatures over canonical manifest bytes (cryptography). Pure functions: bytes in, verdict out.

The full TUF-style role model (root/targets/snapshot/timestamp, rotation) is a later layer; this module is
the primitive it builds on.
"""
from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from slmops.errors import ArtifactInvalid


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


def public_raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(private: Ed25519PrivateKey, payload: bytes) -> bytes:
    return private.sign(payload)


def verify(public: bytes, payload: bytes, signature: bytes, claimed_key_id: str) -> None:
    """Raises ArtifactInvalid unless `signature` is a valid Ed25519 signature of `payload` by `public`."""
    if len(public) != 32:
        raise ArtifactInvalid(f"pinned signing key has {len(public)} bytes, expected 32")
    if claimed_key_id != key_id(public):
        raise ArtifactInvalid(f"manifest signed by unknown key {claimed_key_id[:16]}…, "
                              f"pinned key is {key_id(public)[:16]}…")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, payload)
    except InvalidSignature as e:
        raise ArtifactInvalid("manifest signature does not verify against the pinned key") from e


def load_or_create_private(path) -> Ed25519PrivateKey:
    """Loads a PEM Ed25519 key, or creates one (mode 0600) on first use."""
    import os
    import pathlib

    path = pathlib.Path(path)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ArtifactInvalid(f"{path} is not an Ed25519 private key")
        return key
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
    return key
