"""Standard gRPC tooling works (health, reflection); expired certificates are refused."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from participant.client import CoordinatorClient, TlsFiles

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def test_health_and_reflection(coordinator_factory, pki) -> None:  # type: ignore[no-untyped-def]
    server = coordinator_factory()
    cert, key = pki.participants["org1"]
    with CoordinatorClient(f"127.0.0.1:{server.port}", TlsFiles(cert, key, pki.ca_cert)) as client:
        health = health_pb2_grpc.HealthStub(client.channel)
        for service in ("", "fedctx.v1.Coordinator"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        database = ProtoReflectionDescriptorDatabase(client.channel)
        services = set(database.get_services())
        assert {"fedctx.v1.Coordinator", "grpc.health.v1.Health"} <= services
        descriptor = database.FindFileContainingSymbol("fedctx.v1.Coordinator")
        assert descriptor.package == "fedctx.v1"


def test_expired_client_certificate_is_refused(coordinator_factory, pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = coordinator_factory()
    ca_key = serialization.load_pem_private_key((pki.ca_cert.parent / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "org1")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(past).not_valid_after(past + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (tmp_path / "old.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "old.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    expired = CoordinatorClient(f"127.0.0.1:{server.port}",
                                TlsFiles(tmp_path / "old.pem", tmp_path / "old.key", pki.ca_cert),
                                timeout_s=5, retries=0)
    with pytest.raises(grpc.RpcError) as info:
        expired.federation()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
