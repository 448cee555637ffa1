"""CKKS encryption (TenSEAL) for an add-only secure-aggregation workload.

Participants hold the CKKS *secret* context and encrypt their (noised) context
vectors; the coordinator holds only a *public* context and sums ciphertexts it
cannot decrypt.  Every wire blob produced here is one TenSEAL ``CKKSVector``
serialisation that holds exactly one SEAL ciphertext (at most ``slot_count``
values), so the coordinator can validate and add blobs one by one.

TenSEAL 0.3.18 behaviour this module relies on (measured, see
``benchmarks/ckks_params.py``):

* ``ts.ckks_vector`` silently splits inputs longer than ``slot_count`` into
  several ciphertexts inside one blob (and prints a warning on stdout).  We
  chunk explicitly instead: same bytes, one ciphertext per blob, no stdout.
* A CKKS context always needs at least two primes (the last one is SEAL's
  "special" prime, dropped at the data level), so ciphertexts live modulo the
  product of all primes but the last.
* ``Context.serialize(save_secret_key=False, save_galois_keys=False,
  save_relin_keys=False)`` drops the secret key; loading it gives a context
  with ``has_secret_key() is False`` on which ``decrypt`` raises and ``+``
  between ciphertexts works.
* Loading a ciphertext made under another parameter set fails inside SEAL with
  ``RuntimeError("ciphertext data is invalid")``; one made under the same
  parameters but another key loads fine and decrypts to garbage.  That case
  cannot be detected cryptographically; the protocol binds every contribution
  to :func:`context_fingerprint` in a signed header instead.
* SEAL can serialise *symmetric-key* ciphertexts with the second polynomial
  replaced by a PRNG seed (half the bytes); TenSEAL's high-level API does not.
  :func:`encrypt_vector` makes them through ``tenseal.sealapi`` when the context
  holds the secret key (:mod:`privacy.ckks_seeded`); TenSEAL's ``CKKSVector``
  loader expands the seed transparently.

Blobs are frame-checked (:mod:`privacy.ckks_wire`) before SEAL parses them.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import tenseal as ts

from privacy import ckks_seeded, ckks_wire
from privacy.errors import (
    CiphertextError,
    CkksParameterMismatchError,
    ConfigError,
    CryptoError,
    PrecisionError,
)

__all__ = [
    "CkksParams",
    "EncryptedSum",
    "LoadedVector",
    "check_precision",
    "ciphertext_count",
    "context_fingerprint",
    "create_secret_context",
    "decrypt_vector",
    "encoding_error_bound",
    "encrypt_vector",
    "load_ciphertexts",
    "load_public_context",
    "load_secret_context",
    "serialize_public_context",
    "serialize_secret_context",
    "slot_count",
    "sum_ciphertexts",
    "validate_ciphertexts",
]

#: Largest total coefficient-modulus bit count SEAL accepts for 128-bit
#: classical security (HomomorphicEncryption.org standard, ternary secret).
SEAL_MAX_COEFF_BITS_128: Final[dict[int, int]] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}
_SEAL_MAX_PRIME_BITS: Final = 60
#: Standard deviation of SEAL's error distribution.
_SEAL_NOISE_STD: Final = 3.2
#: Tail factor of the statistical error bound (two-sided Gaussian tail
#: probability at 7 sigma is about 2.6e-12 per slot).
_TAIL_SIGMAS: Final = 7.0
#: Safety margin (bits) kept between the largest sum and the decoding limit.
OVERFLOW_MARGIN_BITS: Final = 2
#: The CKKS error must be at least this factor below the DP noise std.
PRECISION_FACTOR: Final = 100.0
_MIN_SCALE_BITS: Final = 20
_MIN_HEADROOM_BITS: Final = 8
_PARAMS_DOMAIN: Final = b"fedctx/ckks/params/v1\x00"
_CONTEXT_DOMAIN: Final = b"fedctx/ckks/public-context/v1\x00"
_SEAL_INVALID_DATA: Final = "ciphertext data is invalid"
#: Bytes allowed on top of the raw ciphertext size (SEAL header, zstd frame and
#: protobuf framing) before a blob is rejected as oversized.
_BLOB_SLACK_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class CkksParams:
    """CKKS parameter set for summing encrypted float vectors.

    The default ``(4096, (60, 49), 38)`` is the smallest 128-bit-secure set
    that meets the project's requirements (measured in
    ``benchmarks/ckks_params.py``): N=2048 allows only 54 modulus bits, too
    few for both a >= 34-bit scale and 2e5-magnitude sums.  With N=4096 the
    ciphertexts live modulo the 60-bit first prime (the 49-bit prime is SEAL's
    special prime, needed by TenSEAL but dropped at the data level).  A
    2^38 scale leaves 2^(60-38-1) = 2^21 of magnitude (sums of 200 values of
    |1e3| fit with a 2-bit margin) and keeps the conservative error bound of a
    sum of 200 fresh ciphertexts below 4e-6 (measured errors are ~1e-8).

    Attributes:
        poly_modulus_degree: Ring dimension N (power of two, 1024..32768);
            each ciphertext carries N/2 values.
        coeff_mod_bit_sizes: Bit sizes of the RNS primes; the last one is the
            special prime.  Their sum must respect SEAL's 128-bit bound.
        global_scale_bits: log2 of the CKKS scale used for encoding.
    """

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 49)
    global_scale_bits: int = 38

    def __post_init__(self) -> None:
        """Validate the parameter set.

        Raises:
            ConfigError: If any field is out of range or the set is not
                128-bit secure.
        """
        degree = self.poly_modulus_degree
        if not _is_int(degree) or degree not in SEAL_MAX_COEFF_BITS_128:
            raise ConfigError(
                "poly_modulus_degree must be a power of two in "
                f"{sorted(SEAL_MAX_COEFF_BITS_128)}, got {degree!r}"
            )
        bits = self.coeff_mod_bit_sizes
        if isinstance(bits, list):
            bits = tuple(bits)
            object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        if not isinstance(bits, tuple) or not all(_is_int(b) for b in bits):
            raise ConfigError("coeff_mod_bit_sizes must be a tuple of ints")
        if len(bits) < 2:
            raise ConfigError(
                "coeff_mod_bit_sizes needs at least two primes (TenSEAL requires a "
                "special prime for its key-switching keys)"
            )
        min_prime_bits = degree.bit_length() + 1  # primes must be 1 mod 2N
        for b in bits:
            if not min_prime_bits <= b <= _SEAL_MAX_PRIME_BITS:
                raise ConfigError(
                    f"each prime must have {min_prime_bits}..{_SEAL_MAX_PRIME_BITS} "
                    f"bits for N={degree}, got {b}"
                )
        limit = SEAL_MAX_COEFF_BITS_128[degree]
        if sum(bits) > limit:
            raise ConfigError(
                f"coeff_mod_bit_sizes sum to {sum(bits)} bits; 128-bit security "
                f"allows at most {limit} for N={degree}"
            )
        scale_bits = self.global_scale_bits
        if not _is_int(scale_bits) or scale_bits < _MIN_SCALE_BITS:
            raise ConfigError(f"global_scale_bits must be an int >= {_MIN_SCALE_BITS}")
        if scale_bits + _MIN_HEADROOM_BITS > self.data_modulus_bits:
            raise ConfigError(
                f"global_scale_bits={scale_bits} leaves less than "
                f"{_MIN_HEADROOM_BITS} bits of headroom below the "
                f"{self.data_modulus_bits}-bit data modulus"
            )

    @property
    def slot_count(self) -> int:
        """Number of values one ciphertext carries (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def data_modulus_bits(self) -> int:
        """Bits of the modulus ciphertexts live in (all primes but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def scale(self) -> float:
        """The CKKS scale 2**global_scale_bits."""
        return float(2**self.global_scale_bits)

    @property
    def max_magnitude(self) -> float:
        """Largest absolute slot value that still decodes: 2^(q_bits - s - 1)."""
        return float(2 ** (self.data_modulus_bits - self.global_scale_bits - 1))

    def fingerprint(self) -> str:
        """Return the SHA-256 hex digest of a canonical encoding of the parameters.

        Returns:
            64 lowercase hex characters.
        """
        canonical = (
            f"scheme=ckks;N={self.poly_modulus_degree};"
            f"q={','.join(str(b) for b in self.coeff_mod_bit_sizes)};"
            f"scale_bits={self.global_scale_bits}"
        ).encode("ascii")
        return hashlib.sha256(_PARAMS_DOMAIN + canonical).hexdigest()


# --------------------------------------------------------------------------- contexts


def create_secret_context(params: CkksParams) -> ts.Context:
    """Create a fresh CKKS context holding a new secret and public key.

    TenSEAL also generates relinearisation keys in memory (it cannot be told
    not to); they are never serialised by this module.

    Args:
        params: The parameter set.

    Returns:
        A TenSEAL context with secret key, public key and global scale set.

    Raises:
        ConfigError: If ``params`` is not a :class:`CkksParams` or SEAL rejects it.
    """
    if not isinstance(params, CkksParams):
        raise ConfigError("params must be a CkksParams")
    try:
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
        ctx.global_scale = params.scale
    except Exception as exc:  # TenSEAL/SEAL raise ValueError or RuntimeError
        raise ConfigError(f"SEAL rejected the CKKS parameters: {exc}") from None
    return ctx


def serialize_secret_context(ctx: ts.Context) -> bytes:
    """Serialise a context *including* its secret key (for sealing to participants).

    Only the public key, the secret key and the scale are written: no Galois or
    relinearisation keys (an add-only workload never needs them).

    Args:
        ctx: A context holding the secret key.

    Returns:
        The serialised context.

    Raises:
        CryptoError: If the context holds no secret or public key.
    """
    _require_context(ctx)
    if not ctx.has_secret_key():
        raise CryptoError("context holds no secret key")
    if not _has_public_key(ctx):
        raise CryptoError("context holds no public key")
    return bytes(
        ctx.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
    )


def load_secret_context(data: bytes) -> ts.Context:
    """Load a context serialised by :func:`serialize_secret_context`.

    Args:
        data: Serialised secret context.

    Returns:
        The context, with secret key.

    Raises:
        CryptoError: If the bytes are malformed, not a CKKS public-key context,
            or hold no secret key.
    """
    fields = ckks_wire.parse_context_proto(data)
    if 3 not in fields:
        raise CryptoError("serialised context holds no secret key")
    ctx = _deserialize_context(data)
    if not ctx.has_secret_key() or not ctx.is_private():
        raise CryptoError("serialised context holds no secret key")
    return ctx


def serialize_public_context(ctx: ts.Context) -> bytes:
    """Serialise the public part of a context for the coordinator.

    The output holds the encryption parameters, the global scale and the public
    key, and nothing else: no secret key, no Galois or relinearisation keys.
    The public key is kept (about 125 kB at N=4096) although the coordinator
    never encrypts, because it is what makes :func:`context_fingerprint`
    identify the key set; without it the context would be 84 bytes.

    Args:
        ctx: A secret or public context holding a public key.

    Returns:
        The serialised public context.

    Raises:
        CryptoError: If the context holds no public key.
    """
    _require_context(ctx)
    if not _has_public_key(ctx):
        raise CryptoError("context holds no public key")
    data = bytes(
        ctx.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
    )
    if 3 in ckks_wire.parse_context_proto(data):  # defence in depth: never ship a secret
        raise CryptoError("public context serialisation unexpectedly holds private data")
    return data


def load_public_context(data: bytes) -> ts.Context:
    """Load a public context from untrusted bytes (coordinator side).

    Args:
        data: Bytes from :func:`serialize_public_context`.

    Returns:
        A context without secret key.

    Raises:
        CryptoError: If the bytes are malformed, hold secret-key material or
            evaluation keys, lack a public key, or are not CKKS.
    """
    fields = ckks_wire.parse_context_proto(data)
    if 3 in fields:
        raise CryptoError("public context must not contain a secret key")
    public_raw = fields[2][-1][1] if 2 in fields else b""
    public = ckks_wire.parse_proto(
        public_raw if isinstance(public_raw, bytes) else b"", CryptoError
    )
    for field_no, name in ((4, "relinearisation"), (5, "Galois")):
        if any(value for _, value in public.get(field_no, [])):
            raise CryptoError(f"public context must not contain {name} keys")
    ctx = _deserialize_context(data)
    if ctx.has_secret_key() or not ctx.is_public():
        raise CryptoError("public context must not contain a secret key")
    return ctx


def context_fingerprint(public_context_bytes: bytes) -> str:
    """Identify a key set: SHA-256 over the canonical public context.

    The bytes are loaded and re-serialised first, so equivalent encodings of
    the same parameters, scale and public key give the same fingerprint, while
    two key sets with identical parameters differ (their public keys differ).

    Args:
        public_context_bytes: Output of :func:`serialize_public_context`.

    Returns:
        64 lowercase hex characters.

    Raises:
        CryptoError: If the bytes are not a valid public context.
    """
    canonical = serialize_public_context(load_public_context(public_context_bytes))
    return hashlib.sha256(_CONTEXT_DOMAIN + canonical).hexdigest()


# --------------------------------------------------------------------------- vectors


def ciphertext_count(length: int, *, params: CkksParams) -> int:
    """Return the number of ciphertexts (blobs) needed for ``length`` values.

    Args:
        length: Vector length, >= 1.
        params: The parameter set.

    Returns:
        ``ceil(length / params.slot_count)``.

    Raises:
        ConfigError: If ``length`` is not a positive int.
    """
    if not isinstance(params, CkksParams):
        raise ConfigError("params must be a CkksParams")
    return _chunk_count(length, params.slot_count)


def encrypt_vector(
    ctx: ts.Context, values: np.ndarray, *, seeded: bool | None = None
) -> list[bytes]:
    """Encrypt a 1-D float vector into one serialised ciphertext per ``slot_count`` values.

    Args:
        ctx: A context that can encrypt (secret context, or a context with a
            public key).
        values: 1-D array of finite real numbers, any non-zero length.
        seeded: ``None`` (default): use seeded symmetric-key encryption (half
            the bytes) when ``ctx`` holds the secret key and the platform
            supports it, else public-key encryption.  ``True``: require seeded
            encryption.  ``False``: always use public-key encryption.

    Returns:
        ``ciphertext_count(len(values))`` blobs; all but the last hold exactly
        ``slot_count`` values.

    Raises:
        ConfigError: If ``values`` is not a non-empty 1-D array of finite reals.
        PrecisionError: If a value is too large to be encoded at this scale.
        CryptoError: If the context cannot encrypt or encryption fails.
    """
    _require_context(ctx)
    arr = _as_vector(values)
    geom = _geometry(ctx)
    peak = float(np.max(np.abs(arr)))
    if peak >= geom.max_magnitude:
        raise PrecisionError(
            f"max |value| {peak:.3g} exceeds the representable magnitude "
            f"{geom.max_magnitude:.3g} of this context"
        )
    use_seeded = ckks_seeded.select_seeded(ctx, seeded)
    slots = geom.slot_count
    chunks = [arr[i : i + slots] for i in range(0, arr.size, slots)]
    try:
        if use_seeded:
            encryptor = ckks_seeded.seeded_encryptor(ctx)
            return [encryptor.encrypt(chunk, geom.scale) for chunk in chunks]
        if not _has_public_key(ctx):
            raise CryptoError("context holds neither a secret nor a public key")
        return [bytes(ts.ckks_vector(ctx, chunk.tolist()).serialize()) for chunk in chunks]
    except CryptoError:
        raise
    except Exception as exc:
        raise CryptoError(f"CKKS encryption failed: {type(exc).__name__}") from None


def validate_ciphertexts(ctx: ts.Context, blobs: list[bytes], *, expected_length: int) -> None:
    """Check untrusted ciphertext blobs before they are summed.

    Checks, in order: the number of blobs, each blob's framing, its declared
    slot count (all full except the last), its scale, that it deserialises under
    ``ctx``, and that it is a fresh-shaped ciphertext (two polynomials, top data
    level, not transparent).  It never lets a TenSEAL/SEAL exception escape.

    Args:
        ctx: The (public) context.
        blobs: Serialised ciphertexts, as from :func:`encrypt_vector`.
        expected_length: The vector length they must encode.

    Raises:
        ConfigError: If ``expected_length`` is not a positive int.
        CiphertextError: Wrong count, malformed, truncated, oversized or
            wrongly shaped ciphertext.
        CkksParameterMismatchError: Ciphertext from another parameter set or
            at another scale.
    """
    _load_all(ctx, blobs, expected_length)


@dataclass(frozen=True, slots=True, eq=False)
class LoadedVector:
    """An encrypted vector whose blobs passed :func:`load_ciphertexts`' checks.

    Attributes:
        length: Number of encoded values.
        context: The context it was loaded under (identity-checked on addition).
    """

    length: int
    context: ts.Context
    _vectors: tuple[ts.CKKSVector, ...]


def load_ciphertexts(ctx: ts.Context, blobs: list[bytes], *, expected_length: int) -> LoadedVector:
    """Validate untrusted blobs exactly as :func:`validate_ciphertexts` and keep them loaded.

    The result can be added to an :class:`EncryptedSum` later without a second
    deserialisation (the costly part of a sum: it expands every seeded polynomial).

    Raises:
        The errors of :func:`validate_ciphertexts`.
    """
    return LoadedVector(expected_length, ctx, tuple(_load_all(ctx, blobs, expected_length)))


class EncryptedSum:
    """Running homomorphic sum of encrypted vectors; needs only a public context.

    Holds one vector's ciphertexts whatever the number of summands, so a coordinator
    can fold each contribution in as it arrives (its memory stays that of one
    contribution) and serialise the total at close. Addition modulo the ciphertext
    modulus is exact, so the total does not depend on the order of the additions.
    """

    def __init__(self, ctx: ts.Context, *, vector_length: int) -> None:
        """Start an empty sum of vectors of ``vector_length`` values under ``ctx``.

        Raises:
            ConfigError: If ``vector_length`` is not a positive int.
        """
        _require_context(ctx)
        if not _is_int(vector_length) or vector_length < 1:
            raise ConfigError("vector_length must be a positive int")
        self._ctx = ctx
        self.vector_length = vector_length
        # The first summand is only referenced (TenSEAL's copy costs ~16 ms a ciphertext);
        # the second addition creates the total, which later additions update in place.
        self._first: LoadedVector | None = None
        self._total: list[ts.CKKSVector] | None = None
        self._count = 0
        self._broken = False

    @property
    def count(self) -> int:
        """Number of vectors added so far."""
        return self._count

    def add(self, vector: LoadedVector) -> None:
        """Add one loaded vector (it is not modified and may be reused).

        Raises:
            CiphertextError: If ``vector`` is not a :class:`LoadedVector` of this
                sum's length and context, or an addition fails (the sum is then
                unusable and :meth:`serialize` refuses it).
        """
        if not isinstance(vector, LoadedVector) or vector.context is not self._ctx:
            raise CiphertextError("only vectors loaded under this sum's context can be added")
        if vector.length != self.vector_length:
            raise CiphertextError(
                f"a vector of {vector.length} values cannot join a sum of {self.vector_length}"
            )
        if self._broken:
            raise CiphertextError("this sum failed an earlier addition; rebuild it")
        try:
            if self._first is None:
                self._first = vector
            elif self._total is None:
                pairs = zip(self._first._vectors, vector._vectors, strict=True)
                self._total = [first + part for first, part in pairs]
            else:
                for total, part in zip(self._total, vector._vectors, strict=True):
                    total.add_(part)
        except Exception as exc:
            self._broken = True
            raise CiphertextError(f"cannot add ciphertexts: {type(exc).__name__}") from None
        self._count += 1

    def serialize(self) -> list[bytes]:
        """Blobs of the total, shaped like each summand.

        Raises:
            CiphertextError: If nothing was added or an addition failed.
            CryptoError: If serialisation fails.
        """
        if self._broken or self._first is None:
            raise CiphertextError("no complete sum to serialise")
        total = self._first._vectors if self._total is None else self._total
        try:
            return [bytes(vec.serialize()) for vec in total]
        except Exception as exc:
            raise CryptoError(f"cannot serialise the sum: {type(exc).__name__}") from None


def sum_ciphertexts(ctx: ts.Context, contributions: list[list[bytes]]) -> list[bytes]:
    """Homomorphically add several participants' encrypted vectors.

    Works with a public context.  Every contribution is validated like
    :func:`validate_ciphertexts`, with the vector length taken from the first
    contribution.

    Args:
        ctx: The (public) context.
        contributions: One list of blobs per participant; all must have the
            same shape.

    Returns:
        Blobs of the element-wise sum, shaped like each contribution.

    Raises:
        CiphertextError: No contributions, shape mismatch or malformed blobs.
        CkksParameterMismatchError: Blobs from another parameter set or scale.
    """
    _require_context(ctx)
    if not isinstance(contributions, Sequence) or isinstance(contributions, (bytes, str)):
        raise CiphertextError("contributions must be a list of blob lists")
    if not contributions:
        raise CiphertextError("no contributions to sum")
    first = contributions[0]
    if not isinstance(first, Sequence) or isinstance(first, (bytes, str)) or not first:
        raise CiphertextError("contribution 0 is not a non-empty list of blobs")
    sizes = [_declared_size(blob, index=i) for i, blob in enumerate(first)]
    total = EncryptedSum(ctx, vector_length=sum(sizes))
    for k, contribution in enumerate(contributions):
        if not isinstance(contribution, Sequence) or len(contribution) != len(first):
            raise CiphertextError(
                f"contribution {k} has a different number of ciphertexts than contribution 0"
            )
        total.add(load_ciphertexts(ctx, contribution, expected_length=total.vector_length))
    return total.serialize()


def decrypt_vector(ctx: ts.Context, blobs: list[bytes], *, length: int) -> np.ndarray:
    """Decrypt blobs back into a float64 vector.

    Args:
        ctx: A context holding the secret key.
        blobs: Serialised ciphertexts (fresh or summed).
        length: Length of the encoded vector.

    Returns:
        float64 array of ``length`` values.

    Raises:
        CryptoError: If ``ctx`` has no secret key or decryption fails.
        CiphertextError: If the blobs are malformed or wrongly shaped.
        CkksParameterMismatchError: If they belong to another parameter set.
    """
    _require_context(ctx)
    if not ctx.has_secret_key():
        raise CryptoError("decryption needs the secret context; this context is public")
    vectors = _load_all(ctx, blobs, length)
    parts: list[np.ndarray] = []
    for i, vec in enumerate(vectors):
        try:
            parts.append(np.asarray(vec.decrypt(), dtype=np.float64))
        except Exception as exc:
            raise CryptoError(f"cannot decrypt ciphertext {i}: {type(exc).__name__}") from None
    out = np.concatenate(parts)
    if out.shape != (length,):
        raise CiphertextError(f"decrypted {out.size} values, expected {length}")
    return out


# --------------------------------------------------------------------------- precision


def encoding_error_bound(params: CkksParams, *, n_summands: int, value_bound: float) -> float:
    """Conservative bound on the absolute CKKS error per value of a decrypted sum.

    Model (all terms in units of the scale Delta = 2^s, N = ring dimension,
    sigma = 3.2 SEAL's error std, secret and ephemeral keys uniform ternary):

    * A fresh public-key encryption decrypts to ``Delta*m + r + e*u + e1 + e2*s``
      with ``r`` the encoding rounding (variance 1/12 per coefficient).  Its
      coefficient variance is at most ``(4N/3 + 1) sigma^2 + 1/12``.  SEAL in
      fact divides the ``e`` terms by the special prime; the bound ignores
      that reduction, and symmetric (seeded) encryption has only ``e``, so it
      covers every encryption path here with a large margin.
    * Decoding maps coefficients to a slot by a sum over N coefficients with
      unit-modulus weights, so the real part of a slot has variance
      ``N/2 * var(coefficient)``.
    * Summing ``n`` independently encrypted ciphertexts adds variances: the std
      grows as sqrt(n).  The bound is ``7 * sqrt(n) * std / Delta`` (two-sided
      Gaussian tail ~2.6e-12 per slot).
    * Plus float64 encode/decode (FFT) rounding:
      ``n * value_bound * (log2(N) + 1) * 2^-52``.

    Measured errors (benchmarks/ckks_params.py) are 10-100x below this bound.

    Args:
        params: The parameter set.
        n_summands: Number of fresh ciphertexts added (>= 1).
        value_bound: Bound on |value| of each summand (>= 0).

    Returns:
        The absolute error bound per value.

    Raises:
        ConfigError: If an argument is out of range.
    """
    _check_sum_args(params, n_summands, value_bound)
    degree = params.poly_modulus_degree
    coeff_var = (4.0 * degree / 3.0 + 1.0) * _SEAL_NOISE_STD**2 + 1.0 / 12.0
    slot_std = math.sqrt(degree / 2.0 * coeff_var) / params.scale
    noise = _TAIL_SIGMAS * math.sqrt(n_summands) * slot_std
    fft = n_summands * value_bound * (math.log2(degree) + 1.0) * 2.0**-52
    return noise + fft


def check_precision(
    params: CkksParams, *, n_summands: int, value_bound: float, noise_std: float | None
) -> None:
    """Refuse parameter sets that would overflow or drown the DP noise in CKKS error.

    Args:
        params: The parameter set.
        n_summands: Number of encrypted vectors that will be summed.
        value_bound: Bound on |value| of each summand.
        noise_std: Standard deviation of the DP noise carried by the decrypted
            sum, in the same units as the summed values (pass a smaller value,
            e.g. one participant's noise std, for a stricter check), or ``None``
            to skip the precision check.

    Raises:
        PrecisionError: If ``n_summands * value_bound`` exceeds
            ``params.max_magnitude / 2**OVERFLOW_MARGIN_BITS`` (decoding would
            wrap around), or if ``noise_std`` is given and the CKKS error bound
            is not at least ``PRECISION_FACTOR`` (100) times below it.
        ConfigError: If an argument is out of range.
    """
    _check_sum_args(params, n_summands, value_bound)
    total = n_summands * value_bound
    safe = params.max_magnitude / 2.0**OVERFLOW_MARGIN_BITS
    if total > safe:
        raise PrecisionError(
            f"sum of {n_summands} values bounded by {value_bound:.3g} may reach "
            f"{total:.3g}, above the safe CKKS magnitude {safe:.3g} "
            f"(2^({params.data_modulus_bits}-{params.global_scale_bits}-1-"
            f"{OVERFLOW_MARGIN_BITS})); lower global_scale_bits or enlarge the modulus"
        )
    if noise_std is None:
        return
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)):
        raise ConfigError("noise_std must be a float or None")
    if not math.isfinite(noise_std) or noise_std < 0:
        raise ConfigError("noise_std must be finite and >= 0")
    bound = encoding_error_bound(params, n_summands=n_summands, value_bound=value_bound)
    if bound * PRECISION_FACTOR > noise_std:
        raise PrecisionError(
            f"CKKS error bound {bound:.3g} is not {PRECISION_FACTOR:g}x below the DP "
            f"noise std {noise_std:.3g}; raise global_scale_bits"
        )


# --------------------------------------------------------------------------- internals


@dataclass(frozen=True, slots=True)
class _Geometry:
    """What the ciphertext checks need to know about a loaded context."""

    slot_count: int
    poly_modulus_degree: int
    data_prime_count: int
    scale: float
    max_magnitude: float
    first_parms_id: tuple[int, ...]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_context(ctx: object) -> None:
    if not isinstance(ctx, ts.Context):
        raise CryptoError("expected a tenseal.Context")


def _has_public_key(ctx: ts.Context) -> bool:
    try:
        return bool(ctx.has_public_key())
    except Exception:  # symmetric-type contexts raise here
        return False


def _geometry(ctx: ts.Context) -> _Geometry:
    try:
        seal_ctx = ctx.seal_context().data
        first = seal_ctx.first_context_data()
        parms = first.parms()
        if parms.scheme() != ts.SCHEME_TYPE.CKKS.value or not seal_ctx.parameters_set():
            raise CryptoError("context is not a valid CKKS context")
        degree = int(parms.poly_modulus_degree())
        data_bits = int(first.total_coeff_modulus_bit_count())
        chain_index = int(first.chain_index())
        scale = float(ctx.global_scale)
        parms_id = tuple(int(x) for x in seal_ctx.first_parms_id())
    except CryptoError:
        raise
    except Exception as exc:
        raise CryptoError(f"unusable CKKS context: {type(exc).__name__}") from None
    if not (math.isfinite(scale) and scale > 1.0):
        raise CryptoError("context has no valid global scale")
    return _Geometry(
        slot_count=degree // 2,
        poly_modulus_degree=degree,
        data_prime_count=chain_index + 1,
        scale=scale,
        max_magnitude=2.0 ** (data_bits - 1) / scale,
        first_parms_id=parms_id,
    )


def _deserialize_context(data: bytes) -> ts.Context:
    try:
        ctx = ts.context_from(bytes(data))
    except Exception as exc:
        raise CryptoError(f"malformed CKKS context: {type(exc).__name__}") from None
    _geometry(ctx)  # scheme, parameter validity (SEAL enforces 128-bit security), scale
    if not _has_public_key(ctx):
        raise CryptoError("CKKS context holds no public key")
    return ctx


def _chunk_count(length: int, slots: int) -> int:
    if not _is_int(length) or length < 1:
        raise ConfigError(f"vector length must be a positive int, got {length!r}")
    return -(-length // slots)


def _check_sum_args(params: CkksParams, n_summands: int, value_bound: float) -> None:
    if not isinstance(params, CkksParams):
        raise ConfigError("params must be a CkksParams")
    if not _is_int(n_summands) or n_summands < 1:
        raise ConfigError("n_summands must be a positive int")
    if isinstance(value_bound, bool) or not isinstance(value_bound, (int, float)):
        raise ConfigError("value_bound must be a float")
    if not math.isfinite(value_bound) or value_bound < 0:
        raise ConfigError("value_bound must be finite and >= 0")


def _as_vector(values: object) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except Exception:
        raise ConfigError("values must be a 1-D numeric array") from None
    if arr.ndim != 1:
        raise ConfigError(f"values must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ConfigError(f"values must be real numbers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ConfigError("cannot encrypt an empty vector")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ConfigError("values contain NaN or infinity")
    return arr


def _declared_size(blob: object, *, index: int) -> int:
    return ckks_wire.decode_vector_frame(blob, index=index)[0]


def _load_all(ctx: ts.Context, blobs: object, expected_length: int) -> list[ts.CKKSVector]:
    _require_context(ctx)
    geom = _geometry(ctx)
    count = _chunk_count(expected_length, geom.slot_count)
    if not isinstance(blobs, Sequence) or isinstance(blobs, (bytes, bytearray, str)):
        raise CiphertextError("ciphertexts must be a list of bytes")
    if len(blobs) != count:
        raise CiphertextError(
            f"expected {count} ciphertexts for {expected_length} values, got {len(blobs)}"
        )
    last = expected_length - (count - 1) * geom.slot_count
    max_bytes = 2 * geom.poly_modulus_degree * geom.data_prime_count * 8 + _BLOB_SLACK_BYTES
    return [
        _load_one(
            ctx,
            geom,
            blob,
            index=i,
            size=geom.slot_count if i < count - 1 else last,
            max_bytes=max_bytes,
        )
        for i, blob in enumerate(blobs)
    ]


def _load_one(
    ctx: ts.Context, geom: _Geometry, blob: object, *, index: int, size: int, max_bytes: int
) -> ts.CKKSVector:
    declared, scale = ckks_wire.decode_vector_frame(blob, index=index)
    if len(blob) > max_bytes:  # type: ignore[arg-type]
        raise CkksParameterMismatchError(
            f"ciphertext {index} is larger than any ciphertext of this parameter set"
        )
    if declared != size:
        raise CiphertextError(f"ciphertext {index} holds {declared} values, expected {size}")
    if scale != geom.scale:
        raise CkksParameterMismatchError(
            f"ciphertext {index} has scale 2^{_log2(scale)}, context uses 2^{_log2(geom.scale)}"
        )
    try:
        vec = ts.ckks_vector_from(ctx, bytes(blob))  # type: ignore[arg-type]
        cts = vec.ciphertext()
        if len(cts) != 1 or vec.size() != size:
            raise CiphertextError(f"ciphertext {index} has the wrong shape")
        ct = cts[0]
        parms_id = tuple(int(x) for x in ct.parms_id())
        poly_count = int(ct.size())
        transparent = bool(ct.is_transparent())
        ct_scale = float(ct.scale)
    except CiphertextError:
        raise
    except Exception as exc:
        # SEAL reports unknown parameters and out-of-range coefficients alike.
        # Ciphertexts of this context carry its parms_id verbatim (SEAL stores
        # incompressible data uncompressed), so its presence means corruption.
        own_parms_id = _parms_id_bytes(geom) in bytes(blob)  # type: ignore[arg-type]
        if _SEAL_INVALID_DATA in str(exc) and not own_parms_id:
            raise CkksParameterMismatchError(
                f"ciphertext {index} does not belong to this context's parameter set"
            ) from None
        raise CiphertextError(
            f"ciphertext {index} cannot be deserialised: {type(exc).__name__}"
        ) from None
    if parms_id != geom.first_parms_id:
        raise CiphertextError(f"ciphertext {index} is not at the top data level")
    if poly_count != 2 or transparent:
        raise CiphertextError(f"ciphertext {index} is not a fresh-shaped ciphertext")
    if ct_scale != geom.scale:
        raise CkksParameterMismatchError(
            f"ciphertext {index} has scale 2^{_log2(ct_scale)}, context uses 2^{_log2(geom.scale)}"
        )
    return vec


def _parms_id_bytes(geom: _Geometry) -> bytes:
    return struct.pack(f"<{len(geom.first_parms_id)}Q", *geom.first_parms_id)


def _log2(value: float) -> str:
    return f"{math.log2(value):.2f}" if value > 0 and math.isfinite(value) else "?"


def slot_count(ctx: ts.Context) -> int:
    """Values per ciphertext under ``ctx`` (public or secret): ``poly_modulus_degree / 2``."""
    _require_context(ctx)
    return _geometry(ctx).slot_count
