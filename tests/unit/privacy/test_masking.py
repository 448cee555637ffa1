"""Pairwise masks: they cancel in the sum of all, hide any one, and survive CKKS."""

from __future__ import annotations

import numpy as np
import pytest

from privacy import ckks
from privacy.errors import ConfigError
from privacy.keyshare import generate_x25519_keypair
from privacy.masking import (
    MaskingError,
    combined_mask,
    mask_values,
    modulus_bits,
    pair_keys,
    round_mask,
    unmask_sum,
)

IDS = ("alpha", "bravo", "charlie", "delta")


@pytest.fixture(scope="module")
def keys() -> dict[str, dict[str, bytes]]:
    """Every participant's pair keys, derived from its own private and the others' public."""
    pairs = {pid: generate_x25519_keypair() for pid in IDS}
    return {pid: pair_keys(own_id=pid, own_x25519_private=pairs[pid][0],
                           peers={q: pairs[q][1] for q in IDS if q != pid},
                           federation_id="fed")
            for pid in IDS}


def test_both_ends_of_a_pair_derive_the_same_key_and_other_pairs_differ(keys) -> None:  # type: ignore[no-untyped-def]
    assert keys["alpha"]["bravo"] == keys["bravo"]["alpha"]
    assert keys["alpha"]["bravo"] != keys["alpha"]["charlie"]
    assert len({k for own in keys.values() for k in own.values()}) == 6  # 4 choose 2


def test_the_masks_of_every_participant_cancel_modulo_the_modulus(keys) -> None:  # type: ignore[no-untyped-def]
    bits = 16
    total = sum(combined_mask(keys[pid], own_id=pid, round_id="r1", length=1000, bits=bits)
                for pid in IDS)
    assert not np.any(total % (1 << bits))
    # a proper subset does not cancel
    partial = sum(combined_mask(keys[pid], own_id=pid, round_id="r1", length=1000, bits=bits)
                  for pid in IDS[:3])
    assert np.count_nonzero(partial % (1 << bits)) > 990


def test_a_mask_is_uniform_and_fresh_per_round() -> None:
    key = bytes(range(32))
    bits = 12
    first = round_mask(key, round_id="calib-1", length=200_000, bits=bits)
    second = round_mask(key, round_id="calib-2", length=200_000, bits=bits)
    assert first.max() < 1 << bits and not np.array_equal(first, second)
    counts = np.bincount(first.astype(np.int64), minlength=1 << bits)
    expected = first.size / (1 << bits)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < (1 << bits) + 6 * np.sqrt(2 * (1 << bits))  # df 4095: mean 4095, sd 90
    assert np.array_equal(first, round_mask(key, round_id="calib-1", length=200_000, bits=bits))


def test_masked_values_sum_to_the_clamped_sum_and_one_alone_says_nothing(keys) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    bits, bound, n = 16, 2.0, len(IDS)
    values = {pid: rng.normal(0, 0.5, 500) for pid in IDS}
    values["alpha"][0] = 7.0  # clamped to the bound, and counted
    masked, clamped = {}, 0
    for pid in IDS:
        mask = combined_mask(keys[pid], own_id=pid, round_id="r", length=500, bits=bits)
        masked[pid], c = mask_values(values[pid], mask=mask, bound=bound, participants=n,
                                     bits=bits, rng=rng)
        clamped += c
    assert clamped == 1
    total = unmask_sum(sum(masked.values()), bound=bound, participants=n, bits=bits)
    expected = sum(np.clip(v, -bound, bound) for v in values.values())
    step = n * bound / (1 << (bits - 1))  # one unit of the fixed point, in value terms
    assert np.abs(total - expected).max() <= n * step
    # one contribution alone: uniform residues, uncorrelated with its values
    alone = masked["bravo"]
    assert alone.min() >= 0 and alone.max() < 1 << bits
    assert abs(np.corrcoef(alone, values["bravo"])[0, 1]) < 0.15


def test_stochastic_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(1)
    bits, bound = 12, 1.0
    value = np.full(200_000, 0.3 * bound / (1 << 10))  # 0.3 of a unit, well below one step
    masked, _ = mask_values(value, mask=np.zeros(value.size, dtype=np.uint64), bound=bound,
                            participants=1, bits=bits, rng=rng)
    decoded = unmask_sum(masked, bound=bound, participants=1, bits=bits)
    assert decoded.mean() == pytest.approx(value[0], rel=0.02)


def test_an_aggregate_that_is_not_a_sum_of_encodings_is_refused() -> None:
    with pytest.raises(MaskingError, match="missing, foreign or corrupted"):
        unmask_sum(np.array([1.0, 2.4]), bound=1.0, participants=2, bits=12)
    with pytest.raises(MaskingError):
        unmask_sum(np.array([3 * 4096.0]), bound=1.0, participants=2, bits=12)
    with pytest.raises(MaskingError):
        unmask_sum(np.array([np.nan]), bound=1.0, participants=2, bits=12)


def test_the_modulus_fits_the_ckks_parameters_or_is_refused() -> None:
    params = ckks.CkksParams()
    bits = modulus_bits(participants=10, params=params)
    assert 12 <= bits <= 20  # 10 x 2^b inside 2^(60 - 38 - 1 - 2), decoded to 0.05
    assert ckks.encoding_error_bound(params, n_summands=10, value_bound=2.0**bits) < 0.05
    assert modulus_bits(participants=2, params=params) > bits
    assert modulus_bits(participants=10, params=ckks.CkksParams(global_scale_bits=30)) > bits
    with pytest.raises(ConfigError, match="lower global_scale_bits"):
        modulus_bits(participants=1000, params=params)
    with pytest.raises(ConfigError):
        mask_values(np.ones(3), mask=np.zeros(2, dtype=np.uint64), bound=1.0, participants=1,
                    bits=16, rng=np.random.default_rng())
    with pytest.raises(ConfigError):
        round_mask(bytes(32), round_id="r", length=3, bits=40)


def test_a_masked_sum_survives_ckks_encryption_exactly(keys) -> None:  # type: ignore[no-untyped-def]
    """The fixed-point integers go through CKKS and come back to well under 0.5."""
    params = ckks.CkksParams()
    context = ckks.create_secret_context(params)
    n = len(IDS)
    bits = modulus_bits(participants=n, params=params)
    rng = np.random.default_rng(2)
    values = {pid: rng.uniform(-1, 1, 3000) for pid in IDS}
    contributions = []
    for pid in IDS:
        mask = combined_mask(keys[pid], own_id=pid, round_id="r", length=3000, bits=bits)
        masked, _ = mask_values(values[pid], mask=mask, bound=1.0, participants=n, bits=bits,
                                rng=rng)
        contributions.append(ckks.encrypt_vector(context, masked))
    total = ckks.sum_ciphertexts(context, contributions)
    decrypted = ckks.decrypt_vector(context, total, length=3000)
    assert np.abs(decrypted - np.rint(decrypted)).max() < 0.01
    summed = unmask_sum(decrypted, bound=1.0, participants=n, bits=bits)
    step = n * 1.0 / (1 << (bits - 1))
    assert np.abs(summed - sum(values.values())).max() <= n * step
