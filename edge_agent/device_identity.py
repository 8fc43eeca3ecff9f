"""The device's identity on the wire: an Ed25519 key pair made on the device at first start
(DATA_DIR/identity/device-key.pem, owner-only), whose public half is sent at enrollment; every later call
carries a signature bound to that call: the method, the sha256 of the request body, a timestamp, a fresh nonce
and the device token (checked by control_plane/auth.py, which refuses a nonce it has seen). The channel
is TLS pinned to the control plane's CA (copied to DATA_DIR/identity/ca.pem at first start and never
silently replaced); plaintext only for --insecure-loopback-dev.
"""
from __future__ import annotations

import collections
import hashlib
import os
import secrets
import pathlib
import time
from collections.abc import Callable

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from slmops.errors import ConfigError

SIG_HEADER, TS_HEADER, NONCE_HEADER = "x-slmops-device-sig", "x-slmops-device-ts", "x-slmops-device-nonce"
SIG_VERSION = "slmops-device-v2"


def body_sha256(request) -> str:
    """Must match control_plane/auth.py body_sha256."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


def signed_payload(method: str, ts_ms: int, nonce: str, token: str, body_sha: str) -> bytes:
    """Must match control_plane/auth.py signed_payload."""
    return "\n".join((SIG_VERSION, method, str(ts_ms), nonce, hashlib.sha256(token.encode()).hexdigest(),
                      body_sha)).encode()


def sign_call(key: Ed25519PrivateKey, token: str, method: str, request) -> list[tuple[str, str]]:
    """The metadata that proves this call comes from the device's key: one nonce per call."""
    ts, nonce = int(time.time() * 1000), secrets.token_hex(16)
    sig = key.sign(signed_payload(method, ts, nonce, token, body_sha256(request)))
    return [(TS_HEADER, str(ts)), (NONCE_HEADER, nonce), (SIG_HEADER, sig.hex())]


def _write_private(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)   # a leftover .tmp keeps its old mode through O_CREAT
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_or_create_key(path: pathlib.Path | None) -> Ed25519PrivateKey:
    """The device key at `path`, made here on first use; in memory only when `path` is None (tests)."""
    if path is not None and path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    if path is not None:
        _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return key


def public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def pin_ca(pinned: pathlib.Path, given: pathlib.Path | None) -> bytes:
    """The CA to trust: the pinned copy, after checking `given` (if any) is the same; pins `given` first."""
    if pinned.exists():
        data = pinned.read_bytes()
        if given is not None and pathlib.Path(given).read_bytes() != data:
            raise ConfigError(f"--ca-cert {given} differs from the CA pinned at first start ({pinned}); "
                              "remove the pinned file only if the control plane's CA really changed")
        return data
    if given is None:
        raise ConfigError("no CA pinned yet: pass --ca-cert")
    data = pathlib.Path(given).read_bytes()
    _write_private(pinned, data)
    return data


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


class DeviceSigner(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Signs every call (method + request body + timestamp + nonce) once the device has a token. Every device
    RPC takes a single request message, so there is always a body to bind."""

    def __init__(self, key: Ed25519PrivateKey, token: Callable[[], str]):
        self.key, self.token = key, token

    def _sign(self, d, request):
        token = self.token()
        if not token:
            return d
        method = d.method.decode() if isinstance(d.method, bytes) else d.method
        md = list(d.metadata or ()) + sign_call(self.key, token, method, request)
        return _Details(d.method, d.timeout, md, d.credentials, getattr(d, "wait_for_ready", None),
                        getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._sign(details, request), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._sign(details, request), request)


def open_channel(address: str, ca_pem: bytes | None, signer: DeviceSigner, options=()) -> grpc.Channel:
    base = (grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca_pem), options)
            if ca_pem else grpc.insecure_channel(address, options))
    return grpc.intercept_channel(base, signer)
