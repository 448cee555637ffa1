"""Pairwise-masked aggregation: contributions that no coalition short of everyone can read.

fedctx's participants share the CKKS secret key, so the secure sum hides a contribution
from the coordinator only: any participant that colludes with it can decrypt another's
ciphertext. Pairwise masking (Bonawitz et al., CCS 2017, without dropout recovery) closes
that gap. Every pair of participants ``(i, j)`` derives a key from their announced X25519
keys; per round, each expands it into a mask vector uniform modulo ``2^b``; the one with
the smaller id adds the mask, the other subtracts it. The masks cancel in the sum of all
contributions, and any one contribution, or any sum of a proper subset, is uniform
modulo ``2^b`` to whoever lacks one of the pair keys involved: a coalition of participants
and the coordinator learns the sum of the honest participants' values, nothing finer.

That is what *distributed* DP needs: when at least ``h`` participants are honest, each
may add ``1 / sqrt(h)`` of a release's noise and the sum the coalition can read still
carries all of it (``participant.config.PrivacySettings.max_colluders``).

Values travel as fixed point modulo ``2^b`` inside CKKS: each is clamped to a public
``bound``, scaled so that the sum of ``n`` clamped values fits in ``(-2^(b-1), 2^(b-1))``,
stochastically rounded (unbiased), masked, and encrypted as an integer in ``[0, 2^b)``.
The CKKS sum of ``n`` such integers stays below ``n 2^b``, which :func:`modulus_bits`
keeps far enough inside the ciphertext modulus that decryption returns it to within
0.05, so rounding recovers it exactly and reducing modulo ``2^b`` removes the masks.

Limits (stated, not hidden): every participant of the mask set must contribute to the
round (no dropout recovery: a round with a missing contribution cannot be unmasked and
is refused), and the masks protect against coalitions that follow the protocol; a
participant that changes its masks only spoils the sum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import ckks
from .ckks import CkksParams
from .errors import ConfigError, PrivacyError

_PAIR_TAG = b"fedctx/mask-pair/v1"
_ROUND_TAG = b"fedctx/mask-round/v1"
#: The widest modulus used: masks are 32-bit words of a ChaCha20 keystream.
MAX_MODULUS_BITS = 32
#: Below this, fixed point would be coarser than 1 / 2^11 of the clamp bound.
MIN_MODULUS_BITS = 12
#: The CKKS error bound a masked sum may carry: rounding to integers then recovers it.
_MAX_DECODE_ERROR = 0.05


class MaskingError(PrivacyError):
    """A masked aggregate cannot be unmasked (a missing or foreign contribution)."""


def _lp(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def pair_keys(
    *, own_id: str, own_x25519_private: bytes, peers: Mapping[str, bytes], federation_id: str,
) -> dict[str, bytes]:
    """32-byte mask keys shared with each peer: ``HKDF-SHA256(X25519(own, peer))`` bound to
    the federation and the (ordered) pair of ids.

    Args:
        own_id: this participant's id.
        own_x25519_private: its raw 32-byte X25519 private key (the announced key pair).
        peers: every other participant's id -> raw 32-byte X25519 public key, verified by
            the caller against the participant's certificate.
        federation_id: the federation; keys of different federations are independent.
    """
    if own_id in peers:
        raise ConfigError("peers must not include this participant's own id")
    private = x25519.X25519PrivateKey.from_private_bytes(own_x25519_private)
    keys = {}
    for peer_id, public in peers.items():
        shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(public))
        low, high = sorted((own_id, peer_id))
        info = _lp(_PAIR_TAG, federation_id.encode(), low.encode(), high.encode())
        keys[peer_id] = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                             info=info).derive(shared)
    return keys


def round_mask(pair_key: bytes, *, round_id: str, length: int, bits: int) -> np.ndarray:
    """``[length]`` uint64 values uniform modulo ``2^bits`` for one round: the low bits of a
    ChaCha20 keystream under a per-round key derived from ``pair_key``."""
    _check_bits(bits)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=_lp(_ROUND_TAG, round_id.encode())).derive(pair_key)
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(encryptor.update(bytes(4 * length)), dtype="<u4")
    return words.astype(np.uint64) & np.uint64((1 << bits) - 1)


def combined_mask(
    keys: Mapping[str, bytes], *, own_id: str, round_id: str, length: int, bits: int,
) -> np.ndarray:
    """This participant's net mask modulo ``2^bits``: ``+ m_ij`` for each peer ``j`` whose
    id sorts after ``own_id``, ``- m_ij`` for each before. Summed over every participant
    of the mask set it is 0 modulo ``2^bits``."""
    modulus = np.uint64(1 << bits)
    total = np.zeros(length, dtype=np.uint64)
    for peer_id in sorted(keys):
        mask = round_mask(keys[peer_id], round_id=round_id, length=length, bits=bits)
        total = (total + (mask if own_id < peer_id else modulus - mask)) % modulus
    return total


def modulus_bits(*, participants: int, params: CkksParams) -> int:
    """The mask modulus ``b`` for ``participants`` contributions under CKKS ``params``: the
    largest ``b <= 32`` whose sum of ``participants`` values below ``2^b`` stays within
    the safe CKKS magnitude and decrypts with an error bound
    (:func:`privacy.ckks.encoding_error_bound`) under 0.05, so that rounding recovers it.

    Raises:
        ConfigError: fewer than :data:`MIN_MODULUS_BITS` bits qualify (lower
            ``global_scale_bits`` or use larger ciphertext primes).
    """
    if participants < 1:
        raise ConfigError(f"participants must be >= 1, got {participants}")
    safe = params.max_magnitude / 2.0**ckks.OVERFLOW_MARGIN_BITS
    for bits in range(MAX_MODULUS_BITS, MIN_MODULUS_BITS - 1, -1):
        top = float(1 << bits)
        if participants * top <= safe and ckks.encoding_error_bound(
                params, n_summands=participants, value_bound=top) < _MAX_DECODE_ERROR:
            return bits
    raise ConfigError(
        f"masked aggregation of {participants} contributions needs a {MIN_MODULUS_BITS}-bit "
        f"modulus, which CKKS with a {params.data_modulus_bits}-bit data modulus and scale "
        f"2^{params.global_scale_bits} cannot decode exactly: lower global_scale_bits")


def fixed_point_scale(*, bound: float, participants: int, bits: int) -> float:
    """Units per value: the sum of ``participants`` values in ``[-bound, bound]`` then stays
    strictly inside ``(-2^(bits-1), 2^(bits-1))``."""
    if not (0 < bound < math.inf):
        raise ConfigError(f"bound must be finite and > 0, got {bound}")
    return ((1 << (bits - 1)) - participants) / (participants * bound)


def mask_values(
    values: np.ndarray, *, mask: np.ndarray, bound: float, participants: int, bits: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """``(masked [n] float64 integers in [0, 2^bits), clamped count)``: ``values`` clamped to
    ``[-bound, bound]``, scaled by :func:`fixed_point_scale`, rounded stochastically (the
    expected integer is the scaled value), plus ``mask`` modulo ``2^bits``. Clamping and
    rounding act on an already-noised release: post-processing, no privacy cost."""
    _check_bits(bits)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != mask.shape:
        raise ConfigError(f"values {values.shape} and mask {mask.shape} differ in shape")
    if not np.all(np.isfinite(values)):
        raise ConfigError("masked values must be finite")
    clamped = int(np.count_nonzero(np.abs(values) > bound))
    scaled = np.clip(values, -bound, bound) * fixed_point_scale(
        bound=bound, participants=participants, bits=bits)
    floor = np.floor(scaled)
    integers = (floor + (rng.random(values.shape) < scaled - floor)).astype(np.int64)
    modulus = 1 << bits
    encoded = np.mod(integers, modulus).astype(np.uint64)
    return ((encoded + mask) % np.uint64(modulus)).astype(np.float64), clamped


def unmask_sum(
    decrypted: np.ndarray, *, bound: float, participants: int, bits: int,
    tolerance: float = 0.25,
) -> np.ndarray:
    """The sum of the ``participants`` clamped values from the decrypted CKKS sum of their
    masked contributions ``[n]``: round to integers, reduce modulo ``2^bits`` (the masks
    cancel), centre, unscale.

    Raises:
        MaskingError: a value is more than ``tolerance`` from an integer or outside
            ``[0, participants * 2^bits)`` (a contribution was not an encoding of this
            modulus, or the sum is not of ``participants`` of them).
    """
    _check_bits(bits)
    decrypted = np.asarray(decrypted, dtype=np.float64)
    modulus = 1 << bits
    integers = np.rint(decrypted)
    off = np.abs(decrypted - integers)
    if not np.all(np.isfinite(decrypted)) or off.max(initial=0.0) > tolerance or \
            integers.min(initial=0.0) < 0 or integers.max(initial=0.0) >= participants * modulus:
        raise MaskingError(
            f"the aggregate does not decode as a sum of {participants} masked contributions "
            f"modulo 2^{bits}: a contribution is missing, foreign or corrupted")
    residues = np.mod(integers.astype(np.int64), modulus)
    centred = np.where(residues >= modulus // 2, residues - modulus, residues)
    return centred / fixed_point_scale(bound=bound, participants=participants, bits=bits)


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or \
            not MIN_MODULUS_BITS <= bits <= MAX_MODULUS_BITS:
        raise ConfigError(f"bits must be an int in {MIN_MODULUS_BITS}..{MAX_MODULUS_BITS}")
