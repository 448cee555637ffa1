"""Dropout recovery's RPCs under bad input over real mutual-TLS gRPC: clear status codes,
nothing stored from a refused call, the coordinator stays up."""

from __future__ import annotations

import os

import grpc
import numpy as np
import pytest
from ceremony import FEDERATION, announce_keys, contribution_header, publish_request

from privacy import ckks, keyshare
from privacy.mask_recovery import SEALED_SHARE_BYTES
from proto.fedctx.v1 import fedctx_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
ROSTER = ("org1", "org2", "org3")
SELF, KEY = pb.REVEALED_KIND_SELF_MASK, pb.REVEALED_KIND_MASK_KEY


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def _announce_mask(pki, client, pid, *, purpose="mask", mask_public=None):  # type: ignore[no-untyped-def]
    """Re-announce ``pid``'s sealing key with a signed mask key beside it."""
    own = next(a for a in client.key_announcements() if a.participant_id == pid)
    mask_public = mask_public or keyshare.generate_x25519_keypair()[1]
    client.announce_key(pb.AnnounceKeyRequest(
        federation_id=FEDERATION, x25519_public=own.x25519_public, signature=own.signature,
        certificate_pem=own.certificate_pem, mask_x25519_public=mask_public,
        mask_signature=keyshare.sign_key_announcement(
            federation_id=FEDERATION, participant_id=pid, x25519_public=mask_public,
            signing_key_pem=pki.participants[pid][1].read_bytes(), purpose=purpose)))


def _sealed(*recipients: str, size: int = SEALED_SHARE_BYTES) -> list[pb.SealedShare]:
    return [pb.SealedShare(recipient_id=r, sealed=os.urandom(size)) for r in recipients]


def test_recovery_rpcs_refuse_bad_input_and_keep_what_was_accepted(
        coordinator_factory, pki) -> None:  # type: ignore[no-untyped-def]
    server = coordinator_factory(roster=ROSTER, quorum=2, round_timeout_s=2.0)
    clients, _ = announce_keys(pki, server.port, ROSTER)
    org1, org2, org3 = (clients[p] for p in ROSTER)

    # a mask key must be signed as one (a sealing-key signature does not stand for it)
    assert _code(lambda: _announce_mask(pki, org1, "org1", purpose="seal")) == \
        grpc.StatusCode.INVALID_ARGUMENT
    deposit = pb.DepositMaskSharesRequest(federation_id=FEDERATION,
                                          shares=_sealed("org2", "org3"))
    assert _code(lambda: org1.deposit_mask_shares(deposit)) == \
        grpc.StatusCode.FAILED_PRECONDITION  # no mask key announced yet
    for pid in ("org1", "org2"):
        _announce_mask(pki, clients[pid], pid)
    request, context = publish_request(pki, org1, "org1")
    org1.publish_keys(request)
    federation = org1.federation()

    for bad in (_sealed("org2"), _sealed("org2", "org2"), _sealed("org2", "org9"),
                _sealed("org1", "org2", "org3"), _sealed("org2", "org3", size=93)):
        assert _code(lambda bad=bad: org1.deposit_mask_shares(pb.DepositMaskSharesRequest(
            federation_id=FEDERATION, shares=bad))) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: org1.deposit_mask_shares(pb.DepositMaskSharesRequest(
        federation_id="other", shares=deposit.shares))) == grpc.StatusCode.INVALID_ARGUMENT
    org1.deposit_mask_shares(deposit)
    org1.deposit_mask_shares(deposit)  # an identical retry
    assert _code(lambda: org1.deposit_mask_shares(pb.DepositMaskSharesRequest(
        federation_id=FEDERATION, shares=_sealed("org2", "org3")))) == \
        grpc.StatusCode.ALREADY_EXISTS
    assert [s.owner_id for s in org3.mask_shares("").sealed] == ["org1"]
    assert org1.mask_shares("").sealed == []  # nobody else deposited

    values = ckks.encrypt_vector(context, np.zeros(8))
    header = contribution_header(federation, 8)
    # a depositor's contribution needs its self-mask shares, to every other member
    assert _code(lambda: org1.submit(header, values, chunk_bytes=federation.chunk_bytes)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    header.mask_shares.extend(_sealed("org2"))
    assert _code(lambda: org1.submit(header, values, chunk_bytes=federation.chunk_bytes)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    header.mask_shares.extend(_sealed("org3"))
    org1.submit(header, values, chunk_bytes=federation.chunk_bytes)
    # and a participant that deposited nothing sends none
    assert _code(lambda: org3.submit(header, values, chunk_bytes=federation.chunk_bytes)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: org1.mask_shares("r1")) == grpc.StatusCode.FAILED_PRECONDITION
    assert _code(lambda: org1.mask_shares("r9")) == grpc.StatusCode.NOT_FOUND
    plain = contribution_header(federation, 8)
    org3.submit(plain, values, chunk_bytes=federation.chunk_bytes)
    org1.wait_for_round("r1", timeout_s=20)  # closes at its deadline with org1 and org3

    found = org3.mask_shares("r1")
    assert list(found.contributors) == ["org1", "org3"] and not found.retired
    assert [(s.owner_id, len(s.sealed)) for s in found.sealed] == [("org1", SEALED_SHARE_BYTES)]
    share = os.urandom(66)

    def reveal(client, shares):  # type: ignore[no-untyped-def]
        return client.reveal_mask_shares(pb.RevealMaskSharesRequest(round_id="r1", shares=[
            pb.RevealedShare(owner_id=o, kind=k, share=s) for o, k, s in shares]))

    right = [("org1", SELF, share), ("org2", KEY, share), ("org3", SELF, share)]
    assert _code(lambda: reveal(org2, right)) == grpc.StatusCode.PERMISSION_DENIED
    for bad in (right[:2], [("org1", SELF, share), ("org2", SELF, share), ("org3", SELF, share)],
                [("org1", KEY, share), ("org2", KEY, share), ("org3", SELF, share)],
                [*right, ("org1", SELF, share)],
                [("org1", SELF, share[:65]), *right[1:]]):
        assert _code(lambda bad=bad: reveal(org1, bad)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: reveal(org1, [("org1", pb.REVEALED_KIND_UNSPECIFIED, share),
                                       *right[1:]])) == grpc.StatusCode.INVALID_ARGUMENT
    assert org3.mask_shares("r1").revealed == []  # nothing kept from a refused call
    assert reveal(org1, right) == 1
    assert reveal(org1, right) == 1  # an identical retry
    assert _code(lambda: reveal(org1, [("org1", SELF, os.urandom(66)), *right[1:]])) == \
        grpc.StatusCode.ALREADY_EXISTS
    assert reveal(org3, right) == 2
    assert {(r.revealer_id, r.owner_id) for r in org2.mask_shares("r1").revealed} == {
        (a, o) for a in ("org1", "org3") for o in ROSTER}
    counted = org2.mask_shares("r1", omit_revealed=True)
    assert (counted.revealers, list(counted.revealed)) == (2, [])  # a cheap poll

    # org2's mask key is revealed: it is out of later rounds, which close without it
    header.round_id = plain.round_id = "r2"
    del header.mask_shares[:]
    header.mask_shares.extend(_sealed("org3"))
    late = contribution_header(federation, 8, round_id="r2")
    late.mask_shares.extend(_sealed("org1", "org3"))
    assert _code(lambda: org2.submit(late, values, chunk_bytes=federation.chunk_bytes)) == \
        grpc.StatusCode.INVALID_ARGUMENT  # org2 deposited nothing; its shares are refused
    org1.submit(header, values, chunk_bytes=federation.chunk_bytes)
    org3.submit(plain, values, chunk_bytes=federation.chunk_bytes)
    assert org1.round("r2").state == pb.ROUND_STATE_CLOSED  # at once, not at the deadline
    assert list(org1.mask_shares("r2").retired) == ["org2"]
    assert org2.federation().federation_id == FEDERATION  # still up
