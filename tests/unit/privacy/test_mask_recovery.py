"""Dropout recovery: the survivors' sum unmasks exactly with the revealed secrets, and a
participant wrongly called dropped stays hidden behind its self-mask."""

from __future__ import annotations

import os

import numpy as np
import pytest

from privacy import keyshare, mask_recovery
from privacy.masking import MaskingError, combined_mask, mask_values, pair_keys, unmask_sum

IDS = ("p1", "p2", "p3", "p4", "p5")
BITS, LIMBS, BOUND, LENGTH = 14, 2, 1.0, 64
FED, ROUND = "fed", "calib-public-3"


@pytest.fixture(scope="module")
def mask_keys() -> dict[str, tuple[bytes, bytes]]:
    return {pid: keyshare.generate_x25519_keypair() for pid in IDS}


def _contribution(pid, values, seed, keys, active):  # type: ignore[no-untyped-def]
    """What ``pid`` sends: its values as fixed point plus its pair masks over ``active``
    and its self-mask (``participant.masked_sum.MaskedSum.mask``)."""
    total_bits = BITS * LIMBS
    peers = {q: keys[q][1] for q in active if q != pid}
    pairs = pair_keys(own_id=pid, own_x25519_private=keys[pid][0], peers=peers,
                      federation_id=FED)
    mask = (combined_mask(pairs, own_id=pid, round_id=ROUND, length=LENGTH, bits=total_bits)
            + mask_recovery.self_mask(seed, round_id=ROUND, length=LENGTH, bits=total_bits)) \
        % np.uint64(1 << total_bits)
    masked, _ = mask_values(values, mask=mask, bound=BOUND, participants=len(IDS), bits=BITS,
                            rng=np.random.default_rng(0), limbs=LIMBS)
    return masked


def test_the_survivors_sum_unmasks_exactly_with_the_revealed_secrets(mask_keys) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    values = {pid: rng.uniform(-0.5, 0.5, LENGTH) for pid in IDS}
    seeds = {pid: os.urandom(32) for pid in IDS}
    survivors, dropped = ("p1", "p3", "p4"), ("p2", "p5")
    total = sum(_contribution(w, values[w], seeds[w], mask_keys, IDS) for w in survivors)
    publics = {pid: mask_keys[pid][1] for pid in IDS}
    correction = mask_recovery.correction(
        federation_id=FED, round_id=ROUND, length=LENGTH, bits=BITS * LIMBS,
        survivor_seeds={w: seeds[w] for w in survivors},
        dropped_keys={u: mask_keys[u][0] for u in dropped}, mask_publics=publics)
    recovered = unmask_sum(total, bound=BOUND, participants=len(IDS), bits=BITS, limbs=LIMBS,
                           correction=correction)
    expected = sum(values[w] for w in survivors)
    np.testing.assert_allclose(recovered, expected, atol=1e-6)
    # without the dropped members' pair masks removed the sum is noise
    partial = mask_recovery.correction(
        federation_id=FED, round_id=ROUND, length=LENGTH, bits=BITS * LIMBS,
        survivor_seeds={w: seeds[w] for w in survivors}, dropped_keys={},
        mask_publics=publics)
    wrong = unmask_sum(total, bound=BOUND, participants=len(IDS), bits=BITS, limbs=LIMBS,
                       correction=partial)
    assert np.abs(wrong - expected).max() > 0.5


def test_a_participant_called_dropped_stays_hidden_by_its_self_mask(mask_keys) -> None:  # type: ignore[no-untyped-def]
    """The coordinator holds p2's contribution yet calls p2 dropped: it learns p2's mask key
    and strips p2's pair masks, but the self-mask (its shares revealed by nobody) leaves
    the digits uniform, nothing like p2's fixed-point values."""
    values = np.full(LENGTH, 0.25)
    seed = os.urandom(32)
    sent = _contribution("p2", values, seed, mask_keys, IDS)
    peers = {q: mask_keys[q][1] for q in IDS if q != "p2"}
    pairs = pair_keys(own_id="p2", own_x25519_private=mask_keys["p2"][0], peers=peers,
                      federation_id=FED)
    net = combined_mask(pairs, own_id="p2", round_id=ROUND, length=LENGTH, bits=BITS * LIMBS)
    read = unmask_sum(sent, bound=BOUND, participants=len(IDS), bits=BITS, limbs=LIMBS,
                      correction=net)
    assert np.abs(read - values).max() > 0.1  # the self-mask still hides it
    self_only = mask_recovery.self_mask(seed, round_id=ROUND, length=LENGTH,
                                        bits=BITS * LIMBS)
    opened = unmask_sum(sent, bound=BOUND, participants=len(IDS), bits=BITS, limbs=LIMBS,
                        correction=(net + self_only) % np.uint64(1 << (BITS * LIMBS)))
    np.testing.assert_allclose(opened, values, atol=1e-6)  # only both secrets open it


def test_self_masks_are_fresh_per_round_and_seed() -> None:
    seed = os.urandom(32)
    one = mask_recovery.self_mask(seed, round_id="r1", length=256, bits=16)
    assert np.array_equal(one, mask_recovery.self_mask(seed, round_id="r1", length=256,
                                                       bits=16))
    assert not np.array_equal(one, mask_recovery.self_mask(seed, round_id="r2", length=256,
                                                           bits=16))
    assert not np.array_equal(one, mask_recovery.self_mask(os.urandom(32), round_id="r1",
                                                           length=256, bits=16))
    assert one.max() < 1 << 16 and len(np.unique(one)) > 200


def test_a_sealed_share_opens_only_for_its_recipient_owner_and_round() -> None:
    key, share = os.urandom(32), os.urandom(66)
    bound = dict(federation_id=FED, round_id=ROUND, owner_id="p1", recipient_id="p2")
    sealed = mask_recovery.seal_share(key, share, **bound)
    assert len(sealed) == mask_recovery.SEALED_SHARE_BYTES
    assert mask_recovery.open_share(key, sealed, **bound) == share
    for change in ({"round_id": "calib-public-4"}, {"owner_id": "p3"},
                   {"recipient_id": "p3"}, {"federation_id": "other"}):
        with pytest.raises(MaskingError, match="does not open"):
            mask_recovery.open_share(key, sealed, **{**bound, **change})
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(MaskingError, match="does not open"):
        mask_recovery.open_share(key, tampered, **bound)
    with pytest.raises(MaskingError, match="bytes"):
        mask_recovery.open_share(key, sealed[:-1], **bound)
    with pytest.raises(MaskingError, match="does not open"):
        mask_recovery.open_share(os.urandom(32), sealed, **bound)


def test_a_reconstructed_mask_key_is_checked_against_the_announced_one() -> None:
    private, public = keyshare.generate_x25519_keypair()
    assert mask_recovery.mask_private_key_matches(private, public)
    assert not mask_recovery.mask_private_key_matches(os.urandom(32), public)
    assert mask_recovery.share_indices(["b", "a", "c"]) == {"a": 1, "b": 2, "c": 3}
