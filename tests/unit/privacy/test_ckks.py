"""Unit tests for privacy.ckks (TenSEAL CKKS, add-only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import tenseal as ts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privacy import ckks
from privacy.errors import (
    CiphertextError,
    CkksParameterMismatchError,
    ConfigError,
    CryptoError,
    PrecisionError,
)

PARAMS = ckks.CkksParams()
SLOTS = PARAMS.slot_count


@dataclass(frozen=True)
class Keys:
    """One key set: secret context, its public bytes and the coordinator's context."""

    secret: ts.Context
    secret_bytes: bytes
    public_bytes: bytes
    public: ts.Context


def _make_keys(params: ckks.CkksParams = PARAMS) -> Keys:
    secret = ckks.create_secret_context(params)
    public_bytes = ckks.serialize_public_context(secret)
    return Keys(
        secret=secret,
        secret_bytes=ckks.serialize_secret_context(secret),
        public_bytes=public_bytes,
        public=ckks.load_public_context(public_bytes),
    )


@pytest.fixture(scope="module")
def keys() -> Keys:
    return _make_keys()


@pytest.fixture(scope="module")
def blobs_2049(keys: Keys) -> list[bytes]:
    values = np.random.default_rng(7).uniform(-200, 200, 2049)
    return ckks.encrypt_vector(keys.secret, values)


# --------------------------------------------------------------------------- params


def test_default_params_are_valid_and_documented() -> None:
    assert PARAMS.poly_modulus_degree == 4096
    assert PARAMS.coeff_mod_bit_sizes == (60, 49)
    assert PARAMS.slot_count == 2048
    assert PARAMS.data_modulus_bits == 60
    assert PARAMS.max_magnitude == 2.0 ** (60 - PARAMS.global_scale_bits - 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"poly_modulus_degree": 3000},
        {"poly_modulus_degree": 512, "coeff_mod_bit_sizes": (14, 12)},
        {"poly_modulus_degree": True},
        {"coeff_mod_bit_sizes": (60,)},
        {"coeff_mod_bit_sizes": (60, 50)},  # 110 > 109 bits at N=4096
        {"coeff_mod_bit_sizes": (61, 40)},  # SEAL primes are at most 60 bits
        {"coeff_mod_bit_sizes": (60, 10)},  # too small to be 1 mod 2N
        {"coeff_mod_bit_sizes": (60.0, 49)},
        {"global_scale_bits": 19},
        {"global_scale_bits": 53},  # leaves < 8 bits of headroom under 60
        {"poly_modulus_degree": 2048, "coeff_mod_bit_sizes": (30, 30)},
    ],
)
def test_invalid_params_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ckks.CkksParams(**kwargs)  # type: ignore[arg-type]


def test_params_fingerprint_is_canonical() -> None:
    same = ckks.CkksParams(4096, [60, 49], 38)  # type: ignore[arg-type]
    assert same.coeff_mod_bit_sizes == (60, 49)
    assert same.fingerprint() == PARAMS.fingerprint()
    assert len(PARAMS.fingerprint()) == 64
    assert ckks.CkksParams(global_scale_bits=37).fingerprint() != PARAMS.fingerprint()
    assert ckks.CkksParams(8192, (60, 40, 40, 60), 40).fingerprint() != PARAMS.fingerprint()


def test_slot_count_of_contexts(keys: Keys) -> None:
    assert ckks.slot_count(keys.secret) == SLOTS
    assert ckks.slot_count(keys.public) == SLOTS


def test_ciphertext_count() -> None:
    assert ckks.ciphertext_count(1, params=PARAMS) == 1
    assert ckks.ciphertext_count(2048, params=PARAMS) == 1
    assert ckks.ciphertext_count(2049, params=PARAMS) == 2
    assert ckks.ciphertext_count(34_560, params=PARAMS) == 17
    with pytest.raises(ConfigError):
        ckks.ciphertext_count(0, params=PARAMS)


# --------------------------------------------------------------------------- round trips


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=hnp.arrays(
        np.float64,
        st.integers(1, 300),
        elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    )
)
def test_roundtrip_property_small(keys: Keys, values: np.ndarray) -> None:
    blobs = ckks.encrypt_vector(keys.secret, values)
    out = ckks.decrypt_vector(keys.secret, blobs, length=values.size)
    bound = ckks.encoding_error_bound(PARAMS, n_summands=1, value_bound=1e3)
    assert out.dtype == np.float64
    assert np.max(np.abs(out - values)) <= bound


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    length=st.integers(1, 3 * SLOTS + 7),
    magnitude=st.sampled_from([1e-3, 1.0, 200.0, 1e4]),
    seed=st.integers(0, 2**32 - 1),
    seeded=st.booleans(),
)
def test_roundtrip_property_long(
    keys: Keys, length: int, magnitude: float, seed: int, seeded: bool
) -> None:
    values = np.random.default_rng(seed).uniform(-magnitude, magnitude, length)
    blobs = ckks.encrypt_vector(keys.secret, values, seeded=seeded)
    assert len(blobs) == ckks.ciphertext_count(length, params=PARAMS)
    out = ckks.decrypt_vector(keys.secret, blobs, length=length)
    bound = ckks.encoding_error_bound(PARAMS, n_summands=1, value_bound=magnitude)
    assert np.max(np.abs(out - values)) <= bound


@pytest.mark.parametrize("length", [1, 2047, 2048, 2049, 4097, 34_560])
def test_lengths_not_multiple_of_slot_count(keys: Keys, length: int) -> None:
    values = np.linspace(-150.0, 150.0, length)
    blobs = ckks.encrypt_vector(keys.secret, values)
    assert len(blobs) == math.ceil(length / SLOTS)
    ckks.validate_ciphertexts(keys.public, blobs, expected_length=length)
    out = ckks.decrypt_vector(keys.secret, blobs, length=length)
    assert out.shape == (length,)
    assert np.allclose(out, values, atol=1e-6, rtol=0)


def test_roundtrip_after_secret_context_reload(keys: Keys) -> None:
    reloaded = ckks.load_secret_context(keys.secret_bytes)
    values = np.arange(10, dtype=np.float64)
    out = ckks.decrypt_vector(reloaded, ckks.encrypt_vector(keys.secret, values), length=10)
    assert np.allclose(out, values, atol=1e-6, rtol=0)


def test_seeded_ciphertexts_are_about_half_size(keys: Keys) -> None:
    values = np.zeros(SLOTS)
    seeded = ckks.encrypt_vector(keys.secret, values, seeded=True)[0]
    full = ckks.encrypt_vector(keys.secret, values, seeded=False)[0]
    assert len(seeded) < 0.55 * len(full)


# --------------------------------------------------------------------------- summation


@pytest.mark.parametrize("seeded", [True, False])
def test_homomorphic_sum_equals_plaintext_sum(keys: Keys, seeded: bool) -> None:
    rng = np.random.default_rng(3)
    length = 2 * SLOTS + 100
    parts = [rng.uniform(-200, 200, length) for _ in range(10)]
    contributions = [ckks.encrypt_vector(keys.secret, v, seeded=seeded) for v in parts]
    total = ckks.sum_ciphertexts(keys.public, contributions)
    assert len(total) == 3
    out = ckks.decrypt_vector(keys.secret, total, length=length)
    err = float(np.max(np.abs(out - np.sum(parts, axis=0))))
    assert err <= ckks.encoding_error_bound(PARAMS, n_summands=10, value_bound=200.0)
    assert err <= 1e-5


def test_sum_mixes_seeded_and_public_key_ciphertexts(keys: Keys) -> None:
    a = np.full(5, 1.5)
    b = np.full(5, -0.25)
    total = ckks.sum_ciphertexts(
        keys.public,
        [ckks.encrypt_vector(keys.secret, a), ckks.encrypt_vector(keys.secret, b, seeded=False)],
    )
    assert np.allclose(ckks.decrypt_vector(keys.secret, total, length=5), 1.25, atol=1e-6)


def test_public_only_context_can_encrypt_and_sum(keys: Keys) -> None:
    blobs = ckks.encrypt_vector(keys.public, np.ones(3))
    with pytest.raises(CryptoError):
        ckks.encrypt_vector(keys.public, np.ones(3), seeded=True)
    total = ckks.sum_ciphertexts(keys.public, [blobs, blobs])
    assert np.allclose(ckks.decrypt_vector(keys.secret, total, length=3), 2.0, atol=1e-6)


def test_sum_rejects_shape_mismatch(keys: Keys) -> None:
    one = ckks.encrypt_vector(keys.secret, np.ones(SLOTS + 1))
    two = ckks.encrypt_vector(keys.secret, np.ones(SLOTS + 2))
    three = ckks.encrypt_vector(keys.secret, np.ones(3 * SLOTS))
    with pytest.raises(CiphertextError):
        ckks.sum_ciphertexts(keys.public, [one, two])
    with pytest.raises(CiphertextError):
        ckks.sum_ciphertexts(keys.public, [one, three])
    with pytest.raises(CiphertextError):
        ckks.sum_ciphertexts(keys.public, [])
    with pytest.raises(CiphertextError):
        ckks.sum_ciphertexts(keys.public, [[]])
    with pytest.raises(CiphertextError):
        ckks.sum_ciphertexts(keys.public, [one, [b"garbage", one[1]]])


# --------------------------------------------------------------------------- key separation


def test_public_context_cannot_decrypt(keys: Keys, blobs_2049: list[bytes]) -> None:
    assert not keys.public.has_secret_key()
    assert keys.public.is_public()
    with pytest.raises(CryptoError):
        ckks.decrypt_vector(keys.public, blobs_2049, length=2049)
    # Not just a guard in our code: TenSEAL itself has no key to decrypt with.
    raw = ts.ckks_vector_from(keys.public, blobs_2049[0])
    with pytest.raises(ValueError, match="secret"):
        raw.decrypt()
    summed = ckks.sum_ciphertexts(keys.public, [blobs_2049, blobs_2049])
    summed_vector = ts.ckks_vector_from(keys.public, summed[0])
    with pytest.raises(ValueError, match="secret"):
        summed_vector.decrypt()


def test_public_context_bytes_hold_no_secret(keys: Keys) -> None:
    with pytest.raises(CryptoError):
        ckks.load_secret_context(keys.public_bytes)
    assert len(keys.public_bytes) < len(keys.secret_bytes)
    reserialised = keys.public.serialize(
        save_public_key=True, save_secret_key=True, save_galois_keys=True, save_relin_keys=True
    )
    assert reserialised == keys.public_bytes  # nothing more to leak even if asked


def test_load_public_context_rejects_secret_key(keys: Keys) -> None:
    with pytest.raises(CryptoError):
        ckks.load_public_context(keys.secret_bytes)
    with pytest.raises(CryptoError):  # TenSEAL's default serialisation (secret + flags)
        ckks.load_public_context(keys.secret.serialize(save_secret_key=True))


def test_load_public_context_rejects_evaluation_keys(keys: Keys) -> None:
    with_relin = keys.secret.serialize(save_secret_key=False)  # TenSEAL default keeps relin keys
    with pytest.raises(CryptoError):
        ckks.load_public_context(with_relin)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b"",
        lambda b: b[: len(b) // 2],
        lambda b: b[:-5],
        lambda b: np.random.default_rng(1).bytes(len(b)),
        lambda b: b"\x0a\x00",
    ],
)
def test_load_contexts_reject_malformed(keys: Keys, mutate) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CryptoError):
        ckks.load_public_context(mutate(keys.public_bytes))
    with pytest.raises(CryptoError):
        ckks.load_secret_context(mutate(keys.secret_bytes))


def test_context_fingerprints(keys: Keys) -> None:
    fp = ckks.context_fingerprint(keys.public_bytes)
    assert len(fp) == 64
    reloaded = ckks.load_secret_context(keys.secret_bytes)
    assert ckks.context_fingerprint(ckks.serialize_public_context(reloaded)) == fp
    other = _make_keys()  # same parameters, fresh keys
    assert ckks.context_fingerprint(other.public_bytes) != fp
    with pytest.raises(CryptoError):
        ckks.context_fingerprint(keys.secret_bytes)


def test_other_key_same_params_is_not_detectable(keys: Keys) -> None:
    """Same parameters, other key: loads and sums, decrypts to garbage.

    This is why contributions are bound to context_fingerprint in a signed header.
    """
    other = _make_keys()
    values = np.ones(4)
    foreign = ckks.encrypt_vector(other.secret, values)
    ckks.validate_ciphertexts(keys.public, foreign, expected_length=4)
    out = ckks.decrypt_vector(keys.secret, foreign, length=4)
    assert np.max(np.abs(out - values)) > 1.0


# --------------------------------------------------------------------------- validation


def test_validate_accepts_good_input(keys: Keys, blobs_2049: list[bytes]) -> None:
    ckks.validate_ciphertexts(keys.public, blobs_2049, expected_length=2049)
    ckks.validate_ciphertexts(keys.secret, blobs_2049, expected_length=2049)


def test_validate_rejects_wrong_count_and_length(keys: Keys, blobs_2049: list[bytes]) -> None:
    with pytest.raises(CiphertextError):
        ckks.validate_ciphertexts(keys.public, blobs_2049[:1], expected_length=2049)
    with pytest.raises(CiphertextError):
        ckks.validate_ciphertexts(keys.public, blobs_2049 + blobs_2049[:1], expected_length=2049)
    with pytest.raises(CiphertextError):  # last chunk declares 1 value, 2 expected
        ckks.validate_ciphertexts(keys.public, blobs_2049, expected_length=2050)
    with pytest.raises(CiphertextError):  # chunks swapped: first is not full
        ckks.validate_ciphertexts(keys.public, blobs_2049[::-1], expected_length=2049)
    not_bytes: list = [blobs_2049[0], "text"]
    with pytest.raises(CiphertextError):
        ckks.validate_ciphertexts(keys.public, not_bytes, expected_length=2049)
    with pytest.raises(ConfigError):
        ckks.validate_ciphertexts(keys.public, blobs_2049, expected_length=0)


def test_validate_rejects_random_and_truncated_bytes(keys: Keys, blobs_2049: list[bytes]) -> None:
    rng = np.random.default_rng(11)
    first = blobs_2049[0]
    bad_blobs = [
        rng.bytes(len(first)),
        rng.bytes(100),
        b"",
        first[:10],
        first[: len(first) // 2],
        first[:-1],
        first[:-9],  # scale field cut off
        first + b"\x00",
    ]
    for bad in bad_blobs:
        with pytest.raises(CiphertextError):
            ckks.validate_ciphertexts(keys.public, [bad, blobs_2049[1]], expected_length=2049)


def test_validate_rejects_multi_ciphertext_blob(keys: Keys) -> None:
    vec = ts.ckks_vector(keys.secret, np.ones(SLOTS + 1).tolist())  # TenSEAL auto-splits
    with pytest.raises(CiphertextError):
        ckks.validate_ciphertexts(keys.public, [vec.serialize()], expected_length=SLOTS + 1)


@pytest.mark.parametrize(
    ("degree", "bits"), [(8192, [60, 40, 40, 60]), (4096, [50, 50]), (2048, [40, 14])]
)
def test_validate_rejects_other_parameter_set(keys: Keys, degree: int, bits: list[int]) -> None:
    foreign_ctx = ts.context(
        ts.SCHEME_TYPE.CKKS, poly_modulus_degree=degree, coeff_mod_bit_sizes=bits
    )
    foreign_ctx.global_scale = PARAMS.scale  # same scale: only SEAL's parms_id differs
    blobs = ckks.encrypt_vector(foreign_ctx, np.ones(7))
    with pytest.raises(CkksParameterMismatchError):
        ckks.validate_ciphertexts(keys.public, blobs, expected_length=7)
    with pytest.raises(CkksParameterMismatchError):
        ckks.sum_ciphertexts(keys.public, [ckks.encrypt_vector(keys.secret, np.ones(7)), blobs])


def test_validate_rejects_other_scale(keys: Keys) -> None:
    rescaled = ckks.load_secret_context(keys.secret_bytes)
    rescaled.global_scale = 2.0**30
    for seeded in (True, False):
        blobs = ckks.encrypt_vector(rescaled, np.ones(7), seeded=seeded)
        with pytest.raises(CkksParameterMismatchError):
            ckks.validate_ciphertexts(keys.public, blobs, expected_length=7)


def test_validate_rejects_lower_level_ciphertext() -> None:
    params = ckks.CkksParams(8192, (60, 40, 40, 60), 40)
    k = _make_keys(params)
    vec = ts.ckks_vector(k.secret, [1.0, 2.0])
    product = vec * vec  # rescaled to a lower level, scale kept at 2^40
    with pytest.raises(CryptoError):
        ckks.validate_ciphertexts(k.public, [product.serialize()], expected_length=2)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_validate_never_crashes_on_mutations(
    keys: Keys, blobs_2049: list[bytes], data: st.DataObject
) -> None:
    blob = bytearray(blobs_2049[1])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        ckks.validate_ciphertexts(
            keys.public, [blobs_2049[0], bytes(blob[:cut])], expected_length=2049
        )
    except CryptoError:
        pass


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "values",
    [
        np.array([1.0, np.nan]),
        np.array([np.inf]),
        np.array([-np.inf, 0.0]),
        np.ones((2, 3)),
        np.array(1.0),
        np.array([], dtype=np.float64),
        np.array([1 + 2j]),
        np.array(["a"]),
    ],
)
def test_encrypt_rejects_bad_input(keys: Keys, values: np.ndarray) -> None:
    with pytest.raises(ConfigError):
        ckks.encrypt_vector(keys.secret, values)


def test_encrypt_rejects_unrepresentable_magnitude(keys: Keys) -> None:
    with pytest.raises(PrecisionError):
        ckks.encrypt_vector(keys.secret, np.array([PARAMS.max_magnitude * 2]))


def test_encrypt_accepts_integer_and_float32_arrays(keys: Keys) -> None:
    for values in (np.arange(5), np.arange(5, dtype=np.float32)):
        out = ckks.decrypt_vector(keys.secret, ckks.encrypt_vector(keys.secret, values), length=5)
        assert np.allclose(out, np.arange(5), atol=1e-6)


# --------------------------------------------------------------------------- precision


def test_check_precision_accepts_project_workload() -> None:
    ckks.check_precision(PARAMS, n_summands=10, value_bound=200.0, noise_std=1e-3)
    ckks.check_precision(PARAMS, n_summands=200, value_bound=1e3, noise_std=1e-3)
    ckks.check_precision(PARAMS, n_summands=200, value_bound=1e3, noise_std=None)
    assert ckks.encoding_error_bound(PARAMS, n_summands=10, value_bound=200.0) <= 1e-5


def test_check_precision_refuses_overflow() -> None:
    with pytest.raises(PrecisionError):
        ckks.check_precision(PARAMS, n_summands=1000, value_bound=1e3, noise_std=None)
    big_scale = ckks.CkksParams(global_scale_bits=40)  # 2^19 magnitude: 2e5 sums too tight
    with pytest.raises(PrecisionError):
        ckks.check_precision(big_scale, n_summands=200, value_bound=1e3, noise_std=None)


def test_check_precision_refuses_too_small_noise() -> None:
    with pytest.raises(PrecisionError):
        ckks.check_precision(PARAMS, n_summands=10, value_bound=200.0, noise_std=1e-5)
    with pytest.raises(PrecisionError):
        ckks.check_precision(PARAMS, n_summands=10, value_bound=200.0, noise_std=0.0)
    coarse = ckks.CkksParams(global_scale_bits=24)
    with pytest.raises(PrecisionError):
        ckks.check_precision(coarse, n_summands=10, value_bound=200.0, noise_std=1e-3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_summands": 0, "value_bound": 1.0, "noise_std": None},
        {"n_summands": 2, "value_bound": -1.0, "noise_std": None},
        {"n_summands": 2, "value_bound": math.nan, "noise_std": None},
        {"n_summands": 2, "value_bound": 1.0, "noise_std": -1.0},
        {"n_summands": 2, "value_bound": 1.0, "noise_std": math.nan},
    ],
)
def test_check_precision_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ckks.check_precision(PARAMS, **kwargs)  # type: ignore[arg-type]


def test_error_bound_grows_with_summands_and_shrinks_with_scale() -> None:
    b1 = ckks.encoding_error_bound(PARAMS, n_summands=1, value_bound=1.0)
    b100 = ckks.encoding_error_bound(PARAMS, n_summands=100, value_bound=1.0)
    assert b100 == pytest.approx(10 * b1, rel=1e-3)
    finer = ckks.CkksParams(global_scale_bits=PARAMS.global_scale_bits + 2)
    assert ckks.encoding_error_bound(finer, n_summands=1, value_bound=1.0) < b1 / 3.9


def test_running_sum_is_exact_and_order_free(keys: Keys) -> None:
    rng = np.random.default_rng(8)
    length = SLOTS + 7
    blobs = [ckks.encrypt_vector(keys.secret, rng.normal(0, 3, length)) for _ in range(4)]
    loaded = [ckks.load_ciphertexts(keys.public, b, expected_length=length) for b in blobs]
    forward, backward = (ckks.EncryptedSum(keys.public, vector_length=length) for _ in range(2))
    for vector in loaded:
        forward.add(vector)
    for vector in reversed(loaded):
        backward.add(vector)
    assert forward.count == backward.count == 4
    # Addition modulo q is exact: the same bytes whatever the order, and sum_ciphertexts'.
    assert forward.serialize() == backward.serialize() == ckks.sum_ciphertexts(keys.public, blobs)
    # A loaded vector is not consumed: adding it again adds it again.
    again = ckks.EncryptedSum(keys.public, vector_length=length)
    again.add(loaded[0])
    again.add(loaded[0])
    twice = ckks.decrypt_vector(keys.secret, again.serialize(), length=length)
    once = ckks.decrypt_vector(keys.secret, blobs[0], length=length)
    assert np.allclose(twice, 2 * once, atol=1e-5)


def test_running_sum_rejects_what_it_cannot_add(keys: Keys) -> None:
    other = ckks.load_public_context(ckks.serialize_public_context(keys.secret))
    blobs = ckks.encrypt_vector(keys.secret, np.ones(5))
    total = ckks.EncryptedSum(keys.public, vector_length=5)
    with pytest.raises(CiphertextError):
        total.serialize()  # nothing added yet
    with pytest.raises(CiphertextError, match="context"):
        total.add(ckks.load_ciphertexts(other, blobs, expected_length=5))
    with pytest.raises(CiphertextError, match="context"):
        total.add(blobs)  # type: ignore[arg-type]
    with pytest.raises(CiphertextError, match="values"):
        total.add(ckks.load_ciphertexts(keys.public, ckks.encrypt_vector(keys.secret, np.ones(6)),
                                        expected_length=6))
    with pytest.raises(ConfigError):
        ckks.EncryptedSum(keys.public, vector_length=0)
    assert total.count == 0
