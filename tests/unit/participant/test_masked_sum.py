"""Noise shares of distributed DP: any h honest weighted shares carry each budget's need."""

from __future__ import annotations

import itertools
import math

import pytest

from participant.errors import ProtocolError
from participant.masked_sum import noise_shares


def test_equal_needs_split_the_noise_by_sqrt_h() -> None:
    shares = noise_shares(own=0.6, floor=0.6, participants=10, max_colluders=4)
    assert shares.share == pytest.approx(0.6 / math.sqrt(6))
    assert shares.weight == 1.0 and shares.effective == pytest.approx(0.6)
    local = noise_shares(own=0.6, floor=0.6, participants=10, max_colluders=9)
    assert local.share == pytest.approx(0.6) and local.effective == pytest.approx(0.6)


def test_a_participant_that_needs_more_counts_less_instead_of_adding_everyones_noise() -> None:
    shares = noise_shares(own=2.4, floor=0.6, participants=10, max_colluders=4)
    assert shares.effective == pytest.approx(2.4)
    assert shares.weight == pytest.approx(0.25)
    assert shares.share * shares.weight == pytest.approx(0.6 / math.sqrt(6))  # like everyone's


def test_every_honest_weighted_sum_carries_every_members_need() -> None:
    """Ten participants with different needs (sampling rates); a coalition of t drops any
    t of them. Relative to one record of member k (sensitivity w_k clips in the weighted
    sum), the remaining weighted shares' noise is at least k's own need."""
    needs = [0.6] * 6 + [0.75, 1.1, 2.4, 0.6]
    t = 4
    shares = [noise_shares(own=o, floor=0.6, participants=10, max_colluders=t) for o in needs]
    for honest in itertools.combinations(range(10), 10 - t):
        total = math.sqrt(sum((shares[k].weight * shares[k].share) ** 2 for k in honest))
        for k in honest:
            assert total / shares[k].weight >= needs[k] - 1e-12
            assert total / shares[k].weight >= shares[k].effective - 1e-12
    # below the floor (a smaller cap elsewhere) a participant still adds the floor's share
    low = noise_shares(own=0.3, floor=0.6, participants=10, max_colluders=t)
    assert (low.share, low.weight) == (pytest.approx(0.6 / math.sqrt(6)), 1.0)


def test_no_honest_participant_is_refused() -> None:
    with pytest.raises(ProtocolError, match="leave no honest participant"):
        noise_shares(own=1.0, floor=1.0, participants=3, max_colluders=3)


def test_dropouts_size_the_shares_for_the_honest_participants_left() -> None:
    """With d dropouts the coalition's t and the d missing leave n - t - d honest shares,
    which still carry the whole need."""
    shares = noise_shares(own=0.6, floor=0.6, participants=10, max_colluders=4,
                          max_dropouts=2)
    assert shares.share == pytest.approx(0.6 / 2)
    with pytest.raises(ProtocolError, match="max_dropouts = 6 leave no honest"):
        noise_shares(own=0.6, floor=0.6, participants=10, max_colluders=4, max_dropouts=6)


IDS = ("org1", "org2", "org3")


@pytest.fixture()
def masked_sums(pki):  # type: ignore[no-untyped-def]
    """Three participants' :class:`MaskedSum` with dropout recovery (one may drop), from
    real signed announcements, and their mask-key shares exchanged."""
    from participant.masked_sum import MaskedSum
    from privacy import keyshare
    from privacy.ckks import CkksParams
    from proto.fedctx.v1 import fedctx_pb2 as pb

    rounds = ("r1", "r2")
    keys = {p: (keyshare.generate_x25519_keypair(),
                [keyshare.generate_x25519_keypair() for _ in rounds]) for p in IDS}
    announcements = []
    for pid, ((_, seal_public), masks) in keys.items():
        mask_public = b"".join(public for _, public in masks)
        cert, key = pki.participants[pid]
        sign = dict(federation_id="fed", participant_id=pid, signing_key_pem=key.read_bytes())
        announcements.append(pb.KeyAnnouncement(
            participant_id=pid, x25519_public=seal_public, certificate_pem=cert.read_text(),
            signature=keyshare.sign_key_announcement(x25519_public=seal_public, **sign),
            mask_x25519_public=mask_public,
            mask_signature=keyshare.sign_key_announcement(x25519_public=mask_public,
                                                          purpose="mask", **sign)))
    sums = {pid: MaskedSum(
        own_id=pid, x25519_private=keys[pid][0][0], announcements=announcements, roster=IDS,
        federation_id="fed", ca_certificate_pem=pki.ca_cert.read_bytes(),
        ckks_params=CkksParams(), seed=i, max_dropouts=1, mask_rounds=rounds,
        mask_private=b"".join(private for private, _ in keys[pid][1]))
        for i, pid in enumerate(IDS)}
    deposits = {pid: s.mask_key_shares() for pid, s in sums.items()}
    for pid, s in sums.items():
        s.receive_mask_key_shares([pb.SealedShare(owner_id=o, recipient_id=pid, sealed=d.sealed)
                                   for o, ds in deposits.items() for d in ds
                                   if d.recipient_id == pid])
    return sums


def _round(sums, round_id, survivors, values):  # type: ignore[no-untyped-def]
    """Mask every survivor's values; return (the digits' sum, each survivor's sealed shares
    addressed to each recipient)."""
    from proto.fedctx.v1 import fedctx_pb2 as pb

    total, inbox = 0, {p: [] for p in survivors}
    for pid in survivors:
        masked, sealed = sums[pid].mask(values[pid], round_id=round_id, bound=1.0)
        total = total + masked
        for s in sealed:
            if s.recipient_id in inbox:
                inbox[s.recipient_id].append(pb.SealedShare(owner_id=pid,
                                                            recipient_id=s.recipient_id,
                                                            sealed=s.sealed))
    return total, inbox


def test_a_round_without_one_participant_unmasks_to_the_survivors_sum(masked_sums) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from proto.fedctx.v1 import fedctx_pb2 as pb

    values = {p: np.linspace(-0.3, 0.3, 9) * (i + 1) for i, p in enumerate(IDS)}
    survivors = ("org1", "org2")
    total, inbox = _round(masked_sums, "r1", survivors, values)
    reveals = []
    for pid in survivors:
        for r in masked_sums[pid].reveal("r1", contributors=survivors, sealed=inbox[pid]):
            reveals.append(pb.RevealedShare(revealer_id=pid, owner_id=r.owner_id, kind=r.kind,
                                            share=r.share))
    kinds = {(r.owner_id, r.kind) for r in reveals}
    assert kinds == {("org1", pb.REVEALED_KIND_SELF_MASK), ("org2", pb.REVEALED_KIND_SELF_MASK),
                     ("org3", pb.REVEALED_KIND_MASK_KEY)}  # never both kinds for one member
    one = [r for r in reveals if r.revealer_id == "org1"]
    assert not masked_sums["org1"].ready(one, contributors=survivors)  # threshold 2
    assert masked_sums["org1"].ready(reveals, contributors=survivors)
    total_sum = masked_sums["org1"].unmask(total, contributions=2, bound=1.0, round_id="r1",
                                           contributors=survivors, revealed=reveals)
    np.testing.assert_allclose(total_sum, values["org1"] + values["org2"], atol=1e-3)
    assert masked_sums["org1"].active == set(survivors)
    # the next round masks over the survivors only, and org3 may not come back
    masked_sums["org2"].unmask(total, contributions=2, bound=1.0, round_id="r1",
                               contributors=survivors, revealed=reveals)
    total, inbox = _round(masked_sums, "r2", survivors, values)
    reveals = [pb.RevealedShare(revealer_id=pid, owner_id=r.owner_id, kind=r.kind,
                                share=r.share)
               for pid in survivors
               for r in masked_sums[pid].reveal("r2", contributors=survivors,
                                                sealed=inbox[pid])]
    np.testing.assert_allclose(
        masked_sums["org2"].unmask(total, contributions=2, bound=1.0, round_id="r2",
                                   contributors=survivors, revealed=reveals),
        values["org1"] + values["org2"], atol=1e-3)


def test_reveals_are_refused_when_they_would_break_the_guarantee(masked_sums) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    values = {p: np.zeros(4) for p in IDS}
    _, inbox = _round(masked_sums, "r1", IDS, values)
    org1 = masked_sums["org1"]
    with pytest.raises(ProtocolError, match="fewer than the 2"):
        org1.reveal("r1", contributors=("org1",), sealed=inbox["org1"])
    with pytest.raises(ProtocolError, match="dropped out"):
        org1.reveal("r1", contributors=("org2", "org3"), sealed=inbox["org1"])
    with pytest.raises(ProtocolError, match="out of the mask set"):
        org1.reveal("r1", contributors=("org1", "org9"), sealed=inbox["org1"])
    org1.reveal("r1", contributors=IDS, sealed=inbox["org1"])
    # a coordinator that now calls org3 dropped (to read org3's contribution) is refused
    with pytest.raises(ProtocolError, match="another contributor set"):
        org1.reveal("r1", contributors=("org1", "org2"), sealed=inbox["org1"])
    tampered = [type(s)(owner_id=s.owner_id, recipient_id=s.recipient_id,
                        sealed=s.sealed[:-1] + bytes([s.sealed[-1] ^ 1])) for s in inbox["org2"]]
    with pytest.raises(ProtocolError, match="does not open"):
        masked_sums["org2"].reveal("r1", contributors=IDS, sealed=tampered)


def test_a_participant_restarted_after_contributing_reads_the_others_reveals(masked_sums) -> None:  # type: ignore[no-untyped-def]
    """org3 contributed, then restarted and lost its own self-mask share: it cannot reveal,
    but the other two survivors' reveals (the threshold) unmask the round for it."""
    import numpy as np

    from proto.fedctx.v1 import fedctx_pb2 as pb

    values = {p: np.full(5, 0.1 * (i + 1)) for i, p in enumerate(IDS)}
    total, inbox = _round(masked_sums, "r1", IDS, values)
    masked_sums["org3"]._own_seed_shares.clear()  # what a restart loses
    assert not masked_sums["org3"].holds_seed_share("r1")
    reveals = [pb.RevealedShare(revealer_id=pid, owner_id=r.owner_id, kind=r.kind,
                                share=r.share)
               for pid in ("org1", "org2")
               for r in masked_sums[pid].reveal("r1", contributors=IDS, sealed=inbox[pid])]
    assert masked_sums["org3"].ready(reveals, contributors=IDS)
    np.testing.assert_allclose(
        masked_sums["org3"].unmask(total, contributions=3, bound=1.0, round_id="r1",
                                   contributors=IDS, revealed=reveals),
        sum(values.values()), atol=1e-3)


def test_a_dropout_reveals_only_that_rounds_mask_key(masked_sums) -> None:  # type: ignore[no-untyped-def]
    """org3 contributes to r1 (every survivor's self-mask seed is revealed to unmask r1),
    then drops out of r2, whose reveals give its r2 mask key. With one mask key for every
    round, that key and the r1 seed would open org3's r1 contribution; with a key per
    round, r1's pair masks stay unknown and it reads as noise. org3's r1 key (a control,
    never revealed) opens it."""
    import numpy as np

    from privacy import mask_recovery, shamir
    from privacy.masking import combined_mask, pair_keys, unmask_sum
    from proto.fedctx.v1 import fedctx_pb2 as pb

    values = {p: np.full(6, 0.2) for p in IDS}
    sent = {}
    inbox: dict[str, list[pb.SealedShare]] = {p: [] for p in IDS}
    for pid in IDS:
        sent[pid], sealed = masked_sums[pid].mask(values[pid], round_id="r1", bound=1.0)
        for share in sealed:
            inbox[share.recipient_id].append(pb.SealedShare(
                owner_id=pid, recipient_id=share.recipient_id, sealed=share.sealed))
    reveals = [pb.RevealedShare(revealer_id=pid, owner_id=r.owner_id, kind=r.kind, share=r.share)
               for pid in ("org1", "org2")
               for r in masked_sums[pid].reveal("r1", contributors=IDS, sealed=inbox[pid])]
    org1 = masked_sums["org1"]
    seed_r1 = org1._reconstruct(reveals, owner="org3", kind=pb.REVEALED_KIND_SELF_MASK,
                                survivors=frozenset(IDS))  # public once r1 is unmasked
    key_r2 = shamir.combine(  # org1's and org2's shares of org3's r2 key: r2's reveals
        {org1._index[pid]: masked_sums[pid]._key_shares["org3"][1] for pid in ("org1", "org2")},
        threshold=2, secret_bytes=32)
    assert mask_recovery.mask_private_key_matches(key_r2, org1._mask_publics["org3"][1])
    bits = org1.bits * org1.limbs

    def read_r1(key: bytes) -> np.ndarray:
        peers = {p: org1._mask_publics[p][0] for p in ("org1", "org2")}
        pairs = pair_keys(own_id="org3", own_x25519_private=key, peers=peers,
                          federation_id="fed")
        net = combined_mask(pairs, own_id="org3", round_id="r1", length=6, bits=bits)
        own = mask_recovery.self_mask(seed_r1, round_id="r1", length=6, bits=bits)
        return unmask_sum(sent["org3"], bound=1.0, participants=3, bits=org1.bits,
                          limbs=org1.limbs, correction=(net + own) % np.uint64(1 << bits))

    assert np.abs(read_r1(key_r2) - values["org3"]).max() > 0.05
    np.testing.assert_allclose(read_r1(masked_sums["org3"]._mask_private[0]), values["org3"],
                               atol=1e-3)
