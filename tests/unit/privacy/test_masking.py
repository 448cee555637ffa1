"""Pairwise masks: they cancel in the sum of all, hide any one, and survive CKKS; the
fixed point's cost to a distributed-DP guarantee is bounded soundly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privacy import ckks
from privacy.errors import ConfigError
from privacy.keyshare import generate_x25519_keypair
from privacy.masking import (
    MaskingError,
    combined_mask,
    discretization_delta,
    fixed_point_limbs,
    mask_values,
    modulus_bits,
    pair_keys,
    round_mask,
    rounding_tv_bound,
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
        round_mask(bytes(32), round_id="r", length=3, bits=60)  # past MAX_TOTAL_BITS


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


_erf = np.vectorize(math.erf)


def _rounded_law(x: np.ndarray, offset: float, tau: float) -> np.ndarray:
    """P(R(offset + tau Z) = x) as a function of real x, R stochastic rounding: the
    Gaussian against the triangle max(0, 1 - |u|) = r(u + 1) - 2 r(u) + r(u - 1), with
    E[r(m + tau Z)] = m Phi(m / tau) + tau phi(m / tau) for the ramp r."""
    def ramp(m: np.ndarray) -> np.ndarray:
        return m * 0.5 * (1 + _erf(m / (tau * math.sqrt(2)))) \
            + tau * np.exp(-0.5 * (m / tau) ** 2) / math.sqrt(2 * math.pi)
    m = offset - x
    return ramp(m + 1) - 2 * ramp(m) + ramp(m - 1)


def _fft_convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    size = a.size + b.size - 1
    return np.fft.irfft(np.fft.rfft(a, size) * np.fft.rfft(b, size), size)


def _exact_tv(offsets: list[float], tau: float) -> float:
    """TV between the sum of the shares' rounded values (S: discrete convolution of the
    laws on the integers) and the sum rounded once with the h-fold triangle (T: the
    continuous convolution of the same laws, read at the integers)."""
    reach = int(12 * tau * math.sqrt(len(offsets))) + len(offsets) + 3
    ints = np.arange(-reach, reach + 1)
    step = 1 / 200
    grid = np.arange(-reach, reach + step / 2, step)
    law_s, law_t = np.array([1.0]), np.array([1.0])
    for offset in offsets:
        law_s = np.convolve(law_s, _rounded_law(ints.astype(float), offset, tau))
        law_t = _fft_convolve(law_t, _rounded_law(grid, offset, tau))
        law_t = law_t * (step if law_t.size > grid.size else 1.0)
    # law_s[j] is at integer j - h reach; law_t[i] at i step - h reach
    at_integers = law_t[:: int(round(1 / step))][: law_s.size]
    assert law_s.sum() == pytest.approx(1.0, abs=1e-9)
    assert at_integers.sum() == pytest.approx(1.0, abs=1e-6)
    return 0.5 * float(np.abs(law_s - at_integers).sum())


@pytest.mark.parametrize(("offsets", "tau"), [
    ([0.3, 0.77], 0.9), ([0.3, 0.77], 1.0), ([0.3, 0.77], 1.2), ([0.1, 0.45, 0.9], 1.0),
])
def test_rounding_each_share_is_within_the_bound_of_rounding_the_gaussian_sum(
        offsets: list[float], tau: float) -> None:
    """The bound holds against the exact laws, where the discrepancy is measurable (the
    numerical floor of this check is about 1e-11): rounding each share is not free, and
    the bound is not loose by more than the window's factor."""
    exact = _exact_tv(offsets, tau)
    bound = rounding_tv_bound(share_std_units=tau, honest=len(offsets))
    assert 1e-9 < exact <= bound < 1.0
    assert bound < 5e4 * exact


def test_the_fixed_points_delta_is_negligible_at_fedctxs_share_sizes_and_not_below() -> None:
    # 10 participants, 4 colluders: tau 10.5 units at epsilon 8 (docs/privacy.md)
    assert rounding_tv_bound(share_std_units=10.5, honest=6) < 1e-300
    delta = discretization_delta(share_std_units=10.5, honest=6, values=121 * 20, epsilon=8)
    assert 0 < delta < 1e-14  # the clamp term: 6 shares x 2420 values x 1.5e-23 x (1 + e^8)
    # shares a fixed-point step apart: the rounding dominates the sum's noise
    assert discretization_delta(share_std_units=0.5, honest=6, values=121 * 20,
                                epsilon=8) > 1.0
    assert rounding_tv_bound(share_std_units=3.0, honest=200) < 1e-30
    with pytest.raises(ConfigError):
        rounding_tv_bound(share_std_units=0.0, honest=3)


def test_limbs_refine_the_fixed_point_and_still_cancel_through_ckks(keys) -> None:  # type: ignore[no-untyped-def]
    """A value split into two digits base 2^b: the masks (modulo 2^2b) cancel, each
    digit's sum decodes exactly from CKKS, and the step is 2^b times finer."""
    params = ckks.CkksParams()
    context = ckks.create_secret_context(params)
    n, limbs = len(IDS), 2
    bits = modulus_bits(participants=n, params=params)
    rng = np.random.default_rng(3)
    values = {pid: rng.uniform(-1, 1, 500) for pid in IDS}
    contributions = []
    for pid in IDS:
        mask = combined_mask(keys[pid], own_id=pid, round_id="r", length=500,
                             bits=limbs * bits)
        masked, _ = mask_values(values[pid], mask=mask, bound=1.0, participants=n, bits=bits,
                                rng=rng, limbs=limbs)
        assert masked.shape == (limbs * 500,) and masked.max() < 1 << bits
        contributions.append(ckks.encrypt_vector(context, masked))
    decrypted = ckks.decrypt_vector(context, ckks.sum_ciphertexts(context, contributions),
                                    length=limbs * 500)
    summed = unmask_sum(decrypted, bound=1.0, participants=n, bits=bits, limbs=limbs)
    step = n * 1.0 / (1 << (limbs * bits - 1))
    assert np.abs(summed - sum(values.values())).max() <= n * step
    assert step < 1e-7
    with pytest.raises(MaskingError, match="digits"):
        unmask_sum(decrypted[:-1], bound=1.0, participants=n, bits=bits, limbs=limbs)
    with pytest.raises(ConfigError):
        mask_values(np.ones(2), mask=np.zeros(2, dtype=np.uint64), bound=1.0, participants=1,
                    bits=20, rng=rng, limbs=3)  # 60 bits: past int64's exact sums


def test_the_fixed_point_takes_the_limbs_its_noise_shares_need() -> None:
    """The calibration release at epsilon 8 (a weighted share's std 0.0202 at 10
    participants, 0.0045 at 50; bound 3.2; 2,420 values): one limb for 10 participants
    (modulus 2^15, a share about 10 steps), two for 50 (2^13 per limb: a share is a
    quarter of a step on one), refused when no modulus up to 2^52 suffices."""
    limbs, added = fixed_point_limbs([(0.0202, 3.2, 2420)], participants=10, bits=15,
                                     honest=6, epsilon=8.0, delta=1e-5)
    assert limbs == 1 and 0 < added < 1e-14
    limbs, added = fixed_point_limbs([(0.0045, 3.2, 2420)], participants=50, bits=13,
                                     honest=30, epsilon=8.0, delta=1e-5)
    assert limbs == 2 and added < 1e-7
    with pytest.raises(ConfigError, match="fixed-point steps"):
        fixed_point_limbs([(1e-15, 3.2, 2420)], participants=50, bits=13, honest=30,
                          epsilon=8.0, delta=1e-5)
    # 4,000 participants: four 13-bit digits would overflow int64's sums, so three at most
    with pytest.raises(ConfigError, match="2\\^39"):
        fixed_point_limbs([(1e-15, 3.2, 2420)], participants=4000, bits=13, honest=2400,
                          epsilon=8.0, delta=1e-5)
    with pytest.raises(ConfigError, match="overflow"):
        unmask_sum(np.zeros(4), bound=1.0, participants=4000, bits=13, limbs=4)
