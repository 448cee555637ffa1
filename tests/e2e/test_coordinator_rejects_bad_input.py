"""Bad input over real mutual-TLS gRPC: clear status codes, nothing lost, server stays up."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from ceremony import (
    PLAN,
    announce_keys,
    client_for,
    contribution_header,
    key_ceremony,
    publish_request,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from participant.client import CoordinatorClient, TlsFiles
from privacy import ckks, keyshare, payload
from proto.fedctx.v1 import fedctx_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
ROSTER = ("org1", "org2", "org3")


def _setup_keys(pki, port):  # type: ignore[no-untyped-def]
    """The real key ceremony; org2 then opens its sealed key (the relay really works)."""
    clients, context, federation, private_keys = key_ceremony(pki, port, ROSTER)
    response = clients["org2"].fetch_sealed_key()
    data_key = keyshare.open_sealed(
        response.sealed_secret_context, recipient_x25519_private=private_keys["org2"],
        federation_id="fed-test", recipient_id="org2",
        public_context_fingerprint=response.ckks_context_fingerprint,
        sender_certificate_pem=response.keyholder_certificate_pem.encode(),
        ca_certificate_pem=pki.ca_cert.read_bytes(), sender_id="org1")
    opened = keyshare.decrypt_secret_context(
        response.encrypted_secret_context, data_key=data_key, federation_id="fed-test",
        public_context_fingerprint=response.ckks_context_fingerprint)
    assert ckks.context_fingerprint(ckks.serialize_public_context(
        ckks.load_secret_context(opened))) == federation.ckks_context_fingerprint
    return clients, context, federation


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_bad_contributions_are_rejected_and_the_round_goes_on(coordinator_factory, pki) -> None:  # type: ignore[no-untyped-def]
    server = coordinator_factory(roster=ROSTER, max_payload_bytes=8 * 1024 * 1024)
    clients, context, federation = _setup_keys(pki, server.port)
    chunk = federation.chunk_bytes
    length = 3000  # two ciphertexts at 2048 slots
    values = {pid: np.random.default_rng(i).normal(size=length) for i, pid in enumerate(ROSTER)}
    org2 = clients["org2"]

    # Wrong length: header promises 3000 values, ciphertexts carry 2500.
    short = ckks.encrypt_vector(context, values["org2"][:2500])
    assert _code(lambda: org2.submit(contribution_header(federation, length), short,
                                     chunk_bytes=chunk)) \
        == grpc.StatusCode.INVALID_ARGUMENT
    # Foreign CKKS context, honestly labelled: header fingerprint mismatch.
    foreign = ckks.create_secret_context(ckks.CkksParams())
    foreign_fp = ckks.context_fingerprint(ckks.serialize_public_context(foreign))
    blobs = ckks.encrypt_vector(foreign, values["org2"])
    assert _code(lambda: org2.submit(contribution_header(federation, length,
                                                         ckks_context_fingerprint=foreign_fp),
                                     blobs, chunk_bytes=chunk)) == grpc.StatusCode.INVALID_ARGUMENT
    # Foreign parameter set, mislabelled with the federation's fingerprint.
    other = ckks.create_secret_context(ckks.CkksParams(poly_modulus_degree=8192,
                                                       coeff_mod_bit_sizes=(60, 40, 60),
                                                       global_scale_bits=40))
    other_blobs = ckks.encrypt_vector(other, values["org2"][:2048])
    assert _code(lambda: org2.submit(contribution_header(federation, 2048), other_blobs,
                                     chunk_bytes=chunk)) \
        == grpc.StatusCode.INVALID_ARGUMENT
    # Garbage bytes shaped like ciphertexts.
    assert _code(lambda: org2.submit(contribution_header(federation, length),
                                     [b"\x00" * 100, b"x" * 50],
                                     chunk_bytes=chunk)) == grpc.StatusCode.INVALID_ARGUMENT
    # Wrong bindings.
    good = ckks.encrypt_vector(context, values["org2"])
    for change in ({"federation_id": "other"}, {"model_fingerprint": "0" * 64},
                   {"layer_map_fingerprint": "0" * 64}, {"kind": "nonsense"},
                   {"round_id": "bad round id!"}):
        assert _code(lambda c=change: org2.submit(contribution_header(federation, length, **c),
                                                  good, chunk_bytes=chunk)) \
            == grpc.StatusCode.INVALID_ARGUMENT, change
    # Oversized (declared) payload.
    big = contribution_header(federation, length, payload_bytes=10**9, num_ciphertexts=2,
                  payload_sha256=b"\x00" * 32)
    assert _code(lambda: org2.stub.SubmitContribution(
        iter([pb.SubmitContributionRequest(header=big)]), timeout=10)) \
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Truncated stream: header announces more bytes than arrive.
    data = payload.frame(good)
    truncated = contribution_header(federation, length, payload_bytes=len(data), num_ciphertexts=2,
                        payload_sha256=payload.sha256(data))
    assert _code(lambda: org2.stub.SubmitContribution(iter([
        pb.SubmitContributionRequest(header=truncated),
        pb.SubmitContributionRequest(chunk=data[: len(data) // 2])]), timeout=10)) \
        == grpc.StatusCode.INVALID_ARGUMENT
    # Nothing of the above was recorded: the round does not even exist yet.
    assert clients["org1"].round("r1").contributions == 0

    # Valid contributions; a replay is answered as a duplicate and not counted twice.
    first = clients["org1"].submit(contribution_header(federation, length),
                                   ckks.encrypt_vector(context, values["org1"]), chunk_bytes=chunk)
    assert (first.contributions, first.duplicate) == (1, False)
    replay_blobs = ckks.encrypt_vector(context, values["org2"])
    org2.submit(contribution_header(federation, length), replay_blobs, chunk_bytes=chunk)
    again = org2.submit(contribution_header(federation, length), replay_blobs, chunk_bytes=chunk)
    assert (again.duplicate, again.contributions) == (True, 2)
    changed = ckks.encrypt_vector(context, values["org2"] + 1)
    assert _code(lambda: org2.submit(contribution_header(federation, length), changed,
                                     chunk_bytes=chunk)) \
        == grpc.StatusCode.ALREADY_EXISTS
    last = clients["org3"].submit(contribution_header(federation, length),
                                  ckks.encrypt_vector(context, values["org3"]), chunk_bytes=chunk)
    assert last.state == pb.ROUND_STATE_CLOSED

    aggregate = clients["org2"].download_aggregate("r1")
    assert aggregate.contributions == 3
    total = ckks.decrypt_vector(context, aggregate.blobs, length=length)
    np.testing.assert_allclose(total, sum(values.values()), atol=1e-4)
    # Late upload to the closed round.
    late = ckks.encrypt_vector(context, values["org1"] * 2)
    assert _code(lambda: clients["org1"].submit(contribution_header(federation, length), late,
                                                chunk_bytes=chunk)) in (
        grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION)
    # The server is still healthy.
    health = health_pb2_grpc.HealthStub(clients["org1"].channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING


def test_malformed_protocol_plans_are_refused_then_a_valid_one_is_served(  # type: ignore[no-untyped-def]
        coordinator_factory, pki) -> None:
    server = coordinator_factory(roster=ROSTER)
    clients, _ = announce_keys(pki, server.port, ROSTER)
    request, _ = publish_request(pki, clients["org1"], "org1")
    for plan, code in (("not json", grpc.StatusCode.INVALID_ARGUMENT),
                       ("[1, 2]", grpc.StatusCode.INVALID_ARGUMENT),
                       ('{"x": "' + "y" * 5000 + '"}', grpc.StatusCode.RESOURCE_EXHAUSTED)):
        request.protocol_plan = plan
        assert _code(lambda: clients["org1"].publish_keys(request)) == code
        assert clients["org2"].federation().protocol_plan == ""  # nothing half-stored
    request.protocol_plan = PLAN
    clients["org1"].publish_keys(request)
    assert clients["org3"].federation().protocol_plan == PLAN


def test_peers_outside_the_roster_or_pki_are_refused(coordinator_factory, pki, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedctx.provision import provision

    server = coordinator_factory(roster=("org1", "org2"))
    outsider = client_for(pki, "org3", server.port)  # valid certificate, not in the roster
    assert _code(outsider.key_announcements) == grpc.StatusCode.PERMISSION_DENIED
    other_ca = provision(tmp_path / "other-pki", ["org1"])
    cert, key = other_ca.participants["org1"]
    forged = CoordinatorClient(f"127.0.0.1:{server.port}", TlsFiles(cert, key, pki.ca_cert),
                               timeout_s=5, retries=0)
    assert _code(forged.federation) == grpc.StatusCode.UNAVAILABLE
    no_cert = grpc.secure_channel(f"127.0.0.1:{server.port}",
                                  grpc.ssl_channel_credentials(pki.ca_cert.read_bytes()))
    health = health_pb2_grpc.HealthStub(no_cert)
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_restart_mid_round_keeps_accepted_contributions(coordinator_factory, pki, tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "durable"
    server = coordinator_factory(roster=ROSTER, state_dir=state)
    clients, context, federation = _setup_keys(pki, server.port)
    values = {pid: np.full(100, float(i + 1)) for i, pid in enumerate(ROSTER)}
    clients["org1"].submit(contribution_header(federation, 100),
                           ckks.encrypt_vector(context, values["org1"]),
                           chunk_bytes=federation.chunk_bytes)
    server.stop(grace_s=0)

    restarted = coordinator_factory(roster=ROSTER, state_dir=state)
    clients = {pid: client_for(pki, pid, restarted.port) for pid in ROSTER}
    status = clients["org2"].round("r1")
    assert (status.state, status.contributions) == (pb.ROUND_STATE_OPEN, 1)
    for pid in ("org2", "org3"):
        clients[pid].submit(contribution_header(federation, 100),
                            ckks.encrypt_vector(context, values[pid]),
                            chunk_bytes=federation.chunk_bytes)
    aggregate = clients["org1"].download_aggregate("r1")
    assert aggregate.contributions == 3
    np.testing.assert_allclose(ckks.decrypt_vector(context, aggregate.blobs, length=100), 6.0,
                               atol=1e-4)


def test_seven_billion_parameter_sized_vectors_stream_in_chunks(coordinator_factory, pki) -> None:  # type: ignore[no-untyped-def]
    """2 x 32 layers x 4096 = 262,144 values: ~4.2 MB per upload, over gRPC's 4 MB default."""
    server = coordinator_factory(roster=ROSTER)
    clients, context, federation = _setup_keys(pki, server.port)
    length = 2 * 32 * 4096
    values = {pid: np.random.default_rng(i).normal(size=length) for i, pid in enumerate(ROSTER)}
    for pid in ROSTER:
        blobs = ckks.encrypt_vector(context, values[pid])
        assert len(payload.frame(blobs)) > 4 * 1024 * 1024
        receipt = clients[pid].submit(contribution_header(federation, length,
                                                          kind="context_vector"),
                                      blobs, chunk_bytes=federation.chunk_bytes)
    assert receipt.state == pb.ROUND_STATE_CLOSED
    aggregate = clients["org1"].download_aggregate("r1")
    assert aggregate.payload_bytes > 8 * 1024 * 1024  # the sum streams back in chunks too
    np.testing.assert_allclose(ckks.decrypt_vector(context, aggregate.blobs, length=length),
                               sum(values.values()), atol=1e-4)
