"""Provision a throwaway CA and TLS certificates for a coordinator and named participants.

For a real deployment the CA must be run by a party the participants trust (or each
participant pins the others' certificate fingerprints): whoever holds the CA key can
mint identities. Keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True, slots=True)
class Provisioned:
    """Paths of everything written."""

    ca_cert: Path
    coordinator_cert: Path
    coordinator_key: Path
    participants: dict[str, tuple[Path, Path]]


def _write(path: Path, data: bytes, *, secret: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(
    common_name: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *,
    days: int, server_names: list[str] | None,
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server_names is not None:
        alt: list[x509.GeneralName] = []
        for name in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        usage = [ExtendedKeyUsageOID.SERVER_AUTH]
    else:
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def provision(
    out_dir: str | Path, participant_ids: list[str], *, days: int = 30,
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1"),
) -> Provisioned:
    """Create ``ca.pem``/``ca.key``, ``coordinator.pem``/``.key`` and one pair per participant."""
    out = Path(out_dir)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedctx throwaway CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = _write(out / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM), secret=False)
    _write(out / "ca.key", _key_pem(ca_key), secret=True)
    cert, key = _issue("coordinator", ca_key, ca_cert, days=days, server_names=list(server_names))
    coordinator = (_write(out / "coordinator.pem", cert, secret=False),
                   _write(out / "coordinator.key", key, secret=True))
    participants = {}
    for pid in participant_ids:
        cert, key = _issue(pid, ca_key, ca_cert, days=days, server_names=None)
        participants[pid] = (_write(out / "participants" / f"{pid}.pem", cert, secret=False),
                             _write(out / "participants" / f"{pid}.key", key, secret=True))
    return Provisioned(ca_path, coordinator[0], coordinator[1], participants)
