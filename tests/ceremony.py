"""The real key ceremony over gRPC, for tests that drive the coordinator directly."""

from __future__ import annotations

from typing import Any

from participant.client import CoordinatorClient, TlsFiles
from privacy import ckks, keyshare
from proto.fedctx.v1 import fedctx_pb2 as pb

FEDERATION = "fed-test"
MODEL_FP = "m" * 64
LAYER_FP = "l" * 64


def client_for(pki: Any, pid: str, port: int, **options: Any) -> CoordinatorClient:
    """A mutual-TLS client with ``pid``'s certificate; no retries unless asked."""
    cert, key = pki.participants[pid]
    options = {"timeout_s": 10, "retries": 0, **options}
    return CoordinatorClient(f"127.0.0.1:{port}", TlsFiles(cert, key, pki.ca_cert), **options)


PLAN = '{"protocol":"test"}'


def announce_keys(
    pki: Any, port: int, roster: tuple[str, ...]
) -> tuple[dict[str, CoordinatorClient], dict[str, bytes]]:
    """Every member announces a signed X25519 key; ``(clients, x25519 private keys)``."""
    clients = {pid: client_for(pki, pid, port) for pid in roster}
    private_keys = {}
    for pid, client in clients.items():
        private, public = keyshare.generate_x25519_keypair()
        private_keys[pid] = private
        client.announce_key(pb.AnnounceKeyRequest(
            federation_id=FEDERATION, x25519_public=public,
            signature=keyshare.sign_key_announcement(
                federation_id=FEDERATION, participant_id=pid, x25519_public=public,
                signing_key_pem=pki.participants[pid][1].read_bytes()),
            certificate_pem=pki.participants[pid][0].read_text()))
    return clients, private_keys


def publish_request(
    pki: Any, holder: CoordinatorClient, holder_id: str
) -> tuple[pb.PublishKeysRequest, Any]:
    """The keyholder's valid ``PublishKeysRequest`` (plan ``PLAN``) and its secret context."""
    context = ckks.create_secret_context(ckks.CkksParams())
    public = ckks.serialize_public_context(context)
    fingerprint = ckks.context_fingerprint(public)
    data_key, encrypted = keyshare.encrypt_secret_context(
        ckks.serialize_secret_context(context), federation_id=FEDERATION,
        public_context_fingerprint=fingerprint)
    sealed = [
        pb.SealedKey(recipient_id=a.participant_id, sealed_secret_context=keyshare.seal(
            data_key, recipient_x25519_public=a.x25519_public, federation_id=FEDERATION,
            recipient_id=a.participant_id, public_context_fingerprint=fingerprint,
            sender_signing_key_pem=pki.participants[holder_id][1].read_bytes()))
        for a in holder.key_announcements() if a.participant_id != holder_id
    ]
    return pb.PublishKeysRequest(
        federation_id=FEDERATION, public_context=public,
        ckks_params_fingerprint=ckks.CkksParams().fingerprint(), model_fingerprint=MODEL_FP,
        layer_map_fingerprint=LAYER_FP, sealed_keys=sealed, encrypted_secret_context=encrypted,
        protocol_plan=PLAN), context


def key_ceremony(
    pki: Any, port: int, roster: tuple[str, ...]
) -> tuple[dict[str, CoordinatorClient], Any, pb.GetFederationResponse, dict[str, bytes]]:
    """Announce every member's key; ``roster[0]`` seals the secret context and publishes.

    Returns ``(clients, secret context, federation, x25519 private keys)``.
    """
    clients, private_keys = announce_keys(pki, port, roster)
    holder = roster[0]
    request, context = publish_request(pki, clients[holder], holder)
    clients[holder].publish_keys(request)
    return clients, context, clients[holder].federation(), private_keys


def contribution_header(federation: pb.GetFederationResponse, length: int,
                        **changes: Any) -> pb.ContributionHeader:
    """A valid header for round ``r1`` (override any field with ``changes``)."""
    header = pb.ContributionHeader(
        federation_id=FEDERATION, round_id="r1", model_fingerprint=MODEL_FP,
        layer_map_fingerprint=LAYER_FP,
        ckks_context_fingerprint=federation.ckks_context_fingerprint, vector_length=length,
        kind="context_vector")
    for key, value in changes.items():
        setattr(header, key, value)
    return header
