"""The control plane's transport identity: a CA made on first start (keys/ca.pem, keys/ca-key.pem), and a
server certificate for the listen address signed by it at every start. Agents and admin clients pin
keys/ca.pem; plaintext exists only behind an explicit --insecure-loopback-dev on loopback.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pathlib
import socket

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_YEARS = 10
SERVER_DAYS = 90
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


def _write_private(path: pathlib.Path, data: bytes) -> None:
    """Atomic, owner-only."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_ca(keys_dir: pathlib.Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    keys_dir = pathlib.Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = keys_dir / "ca-key.pem", keys_dir / "ca.pem"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SLMOps control plane CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_private(key_path, _pem_key(key))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def server_names(listen_host: str, extra: tuple[str, ...] = ()) -> list[str]:
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *extra]
    if listen_host not in WILDCARD_HOSTS:
        names.insert(0, listen_host.strip("[]"))
    return list(dict.fromkeys(names))


def issue_server_cert(keys_dir: pathlib.Path, names: list[str]) -> tuple[bytes, bytes]:
    """(private key PEM, certificate chain PEM) for `names` (IPs or DNS names), signed by the CA."""
    ca_key, ca_cert = ensure_ca(keys_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    sans = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
    return _pem_key(key), chain


def server_credentials(keys_dir: pathlib.Path, listen_host: str,
                       extra_names: tuple[str, ...] = ()) -> grpc.ServerCredentials:
    key, chain = issue_server_cert(keys_dir, server_names(listen_host, extra_names))
    return grpc.ssl_server_credentials([(key, chain)])
