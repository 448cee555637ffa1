"""Pairwise-masked aggregation: contributions that no coalition short of everyone can read.

fedctx's participants share the CKKS secret key, so the secure sum hides a contribution
from the coordinator only: any participant that colludes with it can decrypt another's
ciphertext. Pairwise masking (Bonawitz et al., CCS 2017; their dropout recovery is
:mod:`privacy.mask_recovery`) closes
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

Why the fixed point keeps the guarantee (docs/privacy.md, "Distributed DP"): a share
alone carries too little noise to be private, so its rounding is not post-processing of
a private release. What the coalition reads is the sum ``S`` of the honest participants'
rounded values ``R(a_i + z_i)`` (``z_i`` each participant's Gaussian share, ``std`` tau
in fixed-point units). Compare ``T``: the continuous sum ``A + G`` of the same shares,
rounded once with an ``h``-fold triangular kernel, which *is* post-processing of the
Gaussian mechanism ``A + G``. By Poisson summation the two laws differ only by aliasing
of the shares' Fourier transforms at the half-integers, of order ``exp(-pi^2 tau^2)``
(:func:`rounding_tv_bound`; checked against the exact laws in the tests). Clamping adds
the chance that a share's noise passes :data:`HEADROOM_STDS` stds. Both enter the
guarantee as an addition to its delta (:func:`discretization_delta`), which a
participant computes before it releases anything and refuses above 1% of the budget's
delta: for 10 participants (tau of 10 and more) it is about 1e-15.

Limits (stated, not hidden): every participant of the mask set must contribute to the
round unless :mod:`privacy.mask_recovery` removes the missing ones' masks (opt-in), and
the masks protect against coalitions that follow the protocol; a participant that changes
its masks only spoils the sum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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
#: The widest modulus one CKKS slot carries (a limb): :func:`modulus_bits` at most.
MAX_MODULUS_BITS = 32
#: The widest modulus of a value split over limbs: sums of it stay exact in int64.
MAX_TOTAL_BITS = 52
#: Below this, fixed point would be coarser than 1 / 2^11 of the clamp bound.
MIN_MODULUS_BITS = 12
#: The CKKS error bound a masked sum may carry: rounding to integers then recovers it.
_MAX_DECODE_ERROR = 0.05
#: A release's public bound leaves this many stds of a noise share above the share's
#: noise-free range, so a value is clamped with probability ``erfc(10 / sqrt 2)``, 1.5e-23.
HEADROOM_STDS = 10
#: The most the fixed point may add to a guarantee's delta, as a fraction of the delta.
MAX_DELTA_FRACTION = 0.01
#: Tail cut of :func:`rounding_tv_bound`'s window, in stds of the summed noise.
_WINDOW_STDS = 40.0


class MaskingError(PrivacyError):
    """A masked aggregate cannot be unmasked (a missing or foreign contribution)."""


def _lp(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def pair_keys(
    *, own_id: str, own_x25519_private: bytes, peers: Mapping[str, bytes], federation_id: str,
    purpose: bytes = _PAIR_TAG,
) -> dict[str, bytes]:
    """32-byte mask keys shared with each peer: ``HKDF-SHA256(X25519(own, peer))`` bound to
    the ``purpose`` (a domain-separation tag), the federation and the (ordered) pair of ids.

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
        info = _lp(purpose, federation_id.encode(), low.encode(), high.encode())
        keys[peer_id] = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                             info=info).derive(shared)
    return keys


def round_mask(pair_key: bytes, *, round_id: str, length: int, bits: int) -> np.ndarray:
    """``[length]`` uint64 values uniform modulo ``2^bits`` for one round: the low bits of
    32-bit (64-bit above 32 bits) words of a ChaCha20 keystream under a per-round key
    derived from ``pair_key``."""
    _check_total_bits(bits)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=_lp(_ROUND_TAG, round_id.encode())).derive(pair_key)
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    word = 4 if bits <= 32 else 8
    words = np.frombuffer(encryptor.update(bytes(word * length)), dtype=f"<u{word}")
    return words.astype(np.uint64) & np.uint64((1 << bits) - 1)


def combined_mask(
    keys: Mapping[str, bytes], *, own_id: str, round_id: str, length: int, bits: int,
) -> np.ndarray:
    """This participant's net mask modulo ``2^bits`` (a value's whole modulus, limbs
    included): ``+ m_ij`` for each peer ``j`` whose id sorts after ``own_id``, ``- m_ij``
    for each before. Summed over every participant of the mask set it is 0 modulo
    ``2^bits``."""
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
    if (1 << (bits - 1)) <= participants:
        raise ConfigError(f"a 2^{bits} modulus cannot hold the sum of {participants} values")
    return ((1 << (bits - 1)) - participants) / (participants * bound)


def mask_values(
    values: np.ndarray, *, mask: np.ndarray, bound: float, participants: int, bits: int,
    rng: np.random.Generator, limbs: int = 1,
) -> tuple[np.ndarray, int]:
    """``(masked [limbs * n] float64 integers in [0, 2^bits), clamped count)``: ``values``
    ``[n]`` clamped to ``[-bound, bound]``, scaled by :func:`fixed_point_scale` for the
    modulus ``2^(limbs * bits)``, rounded stochastically (the expected integer is the
    scaled value), plus ``mask`` (modulo ``2^(limbs * bits)``), then split into ``limbs``
    digits base ``2^bits``, least significant first, one block of ``n`` per digit. Each
    digit is summed in its own CKKS slot, so ``limbs`` multiplies the fixed point's
    resolution by ``2^bits`` per limb at the cost of ``limbs`` slots per value.

    A share alone is not private, so clamping and rounding it are not free
    post-processing: what they cost is :func:`discretization_delta`."""
    _check_bits(bits)
    total_bits = _check_total_bits(bits * limbs)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != mask.shape:
        raise ConfigError(f"values {values.shape} and mask {mask.shape} differ in shape")
    if not np.all(np.isfinite(values)):
        raise ConfigError("masked values must be finite")
    clamped = int(np.count_nonzero(np.abs(values) > bound))
    scaled = np.clip(values, -bound, bound) * fixed_point_scale(
        bound=bound, participants=participants, bits=total_bits)
    floor = np.floor(scaled)
    integers = (floor + (rng.random(values.shape) < scaled - floor)).astype(np.int64)
    modulus = 1 << total_bits
    encoded = (np.mod(integers, modulus).astype(np.uint64) + mask) % np.uint64(modulus)
    digit = np.uint64((1 << bits) - 1)
    digits = [(encoded >> np.uint64(bits * j)) & digit for j in range(limbs)]
    return np.concatenate(digits).astype(np.float64), clamped


def unmask_sum(
    decrypted: np.ndarray, *, bound: float, participants: int, bits: int,
    tolerance: float = 0.25, limbs: int = 1, correction: np.ndarray | None = None,
) -> np.ndarray:
    """The sum ``[n]`` of the ``participants`` clamped values from the decrypted CKKS sum of
    their masked contributions ``[limbs * n]`` (:func:`mask_values`): round every digit's
    sum to integers, recombine the digits, subtract ``correction`` (``[n]`` modulo
    ``2^(limbs * bits)``: the masks that do not cancel, after a dropout,
    :mod:`privacy.mask_recovery`), reduce modulo ``2^(limbs * bits)`` (the masks cancel),
    centre, unscale. ``participants`` is the federation's size, which fixed the scale; a
    round may sum fewer.

    Raises:
        MaskingError: a value is more than ``tolerance`` from an integer or outside
            ``[0, participants * 2^bits)`` (a contribution was not an encoding of this
            modulus, or the sum is not of ``participants`` of them).
    """
    _check_bits(bits)
    total_bits = _check_total_bits(bits * limbs)
    if not _sums_fit_int64(participants=participants, total_bits=total_bits):
        raise ConfigError(f"{participants} sums of a 2^{total_bits} modulus overflow int64")
    decrypted = np.asarray(decrypted, dtype=np.float64)
    if decrypted.size % limbs:
        raise MaskingError(f"an aggregate of {decrypted.size} values is not {limbs} digits "
                           "per value")
    modulus = 1 << bits
    integers = np.rint(decrypted)
    off = np.abs(decrypted - integers)
    if not np.all(np.isfinite(decrypted)) or off.max(initial=0.0) > tolerance or \
            integers.min(initial=0.0) < 0 or integers.max(initial=0.0) >= participants * modulus:
        raise MaskingError(
            f"the aggregate does not decode as a sum of {participants} masked contributions "
            f"modulo 2^{bits}: a contribution is missing, foreign or corrupted")
    digits = integers.astype(np.int64).reshape(limbs, -1)
    recombined = sum(digits[j] << (bits * j) for j in range(limbs))  # < n 2^total: int64
    modulus = 1 << total_bits
    residues = np.mod(recombined, modulus)
    if correction is not None:
        if correction.shape != residues.shape:
            raise ConfigError(f"a correction of shape {correction.shape} for "
                              f"{residues.shape} values")
        residues = np.mod(residues - np.mod(correction.astype(np.int64), modulus), modulus)
    centred = np.where(residues >= modulus // 2, residues - modulus, residues)
    return centred / fixed_point_scale(bound=bound, participants=participants,
                                       bits=total_bits)


def rounding_tv_bound(*, share_std_units: float, honest: int) -> float:
    """Per value and release, an upper bound on the total variation distance between the
    sum of ``honest`` stochastically rounded noisy shares and post-processing of the
    continuous Gaussian sum (the module docstring's ``S`` and ``T``).

    Every share is ``a_i + z_i`` with ``z_i ~ N(0, share_std_units^2)`` (the same std for
    every share, as in fedctx's weighted and label-bias shares) and any real ``a_i``. With
    ``g(u) = exp(-2 pi^2 tau^2 u^2)`` bounding each share's rounded law's Fourier transform,
    the two laws' transforms differ by the sum over non-constant aliasing vectors, at most
    ``eps = (h - 1) P2 s^(h-2)`` where ``s = sum_j exp(-pi^2 tau^2 j^2 / 2)`` (j >= 0) and
    ``P2 = 2 sum_{d>=1} exp(-pi^2 tau^2 d^2) sum_{j>=0} exp(-pi^2 tau^2 j^2)``. Parseval
    and Cauchy-Schwarz over the ``2K + 1`` integers within ``K = h + 40 sqrt(h) tau`` of the
    noise-free sum, and both laws' Gaussian tails beyond, give
    ``TV <= (sqrt(2K + 1) eps) / 2 + erfc(40 / sqrt 2)``.
    """
    if honest < 1 or not share_std_units > 0:
        raise ConfigError("rounding_tv_bound needs honest >= 1 and share_std_units > 0")
    if honest == 1:  # one rounded share is exactly the one-fold kernel's rounding
        return 0.0
    if share_std_units < 0.2:  # below, the bound exceeds 1: a distance's trivial bound
        return 1.0
    tau2 = math.pi**2 * share_std_units**2
    terms = range(0, int(math.ceil(math.sqrt(1600.0 / tau2))) + 2)  # until e^-800: 0.0
    s = sum(math.exp(-tau2 * j * j / 2) for j in terms)
    s2 = sum(math.exp(-tau2 * j * j) for j in terms)
    p2 = 2 * sum(math.exp(-tau2 * d * d) for d in terms if d) * s2
    eps = (honest - 1) * p2 * s ** (honest - 2)
    window = honest + _WINDOW_STDS * math.sqrt(honest) * share_std_units
    return min(1.0, math.sqrt(2 * window + 1) * eps / 2
               + math.erfc(_WINDOW_STDS / math.sqrt(2)))


def discretization_delta(*, share_std_units: float, honest: int, values: int,
                         epsilon: float) -> float:
    """What the fixed point adds to the delta of an ``(epsilon, delta)`` guarantee over
    ``values`` noisy values released (every round's, summed): if every release is within
    total variation ``eta`` of a private one, the protocol is
    ``(epsilon, delta + (1 + e^epsilon) eta)``-DP, with ``eta`` the rounding bound
    (:func:`rounding_tv_bound`) plus the chance that a share is clamped (its noise past
    :data:`HEADROOM_STDS` stds), per value and honest share.

    ``share_std_units``: the std of one share's noise in fixed-point units (the noise std
    times :func:`fixed_point_scale`)."""
    if values < 0:
        raise ConfigError(f"values must be >= 0, got {values}")
    clamp = math.erfc(HEADROOM_STDS / math.sqrt(2))
    per_value = rounding_tv_bound(share_std_units=share_std_units, honest=honest) \
        + honest * clamp
    return (1 + math.exp(min(epsilon, 700.0))) * values * per_value  # e^700: no overflow


def fixed_point_limbs(releases: Sequence[tuple[float, float, int]], *, participants: int,
                      bits: int, honest: int, epsilon: float, delta: float) -> tuple[int, float]:
    """``(limbs, delta added)``: the fewest digits base ``2^bits`` per value
    (:func:`mask_values`) for which the fixed point adds at most
    :data:`MAX_DELTA_FRACTION` of ``delta`` to a distributed-DP guarantee
    (:func:`discretization_delta`), over ``releases``, each ``(a share's noise std, the
    release's public bound, noisy values released)``. A participant settles it before it
    releases anything; every input is public, so every participant settles the same.

    Raises:
        ConfigError: no number of limbs up to ``MAX_TOTAL_BITS`` suffices.
    """
    limbs, added, tau = 0, math.inf, 0.0
    while added > MAX_DELTA_FRACTION * delta and (limbs + 1) * bits <= MAX_TOTAL_BITS \
            and _sums_fit_int64(participants=participants, total_bits=(limbs + 1) * bits):
        limbs += 1
        added, taus = 0.0, []
        for noise_std, bound, values in releases:
            taus.append(noise_std * fixed_point_scale(bound=bound, participants=participants,
                                                      bits=limbs * bits))
            added += discretization_delta(share_std_units=taus[-1], honest=honest,
                                          values=values, epsilon=epsilon)
        tau = min(taus, default=math.inf)
    if added > MAX_DELTA_FRACTION * delta:
        raise ConfigError(
            f"distributed DP with {participants} participants: even at 2^{limbs * bits} a "
            f"noise share is {tau:.3g} fixed-point steps, so rounding would add {added:.3g} "
            f"to delta {delta:g} (at most {MAX_DELTA_FRACTION:g} of it); use fewer "
            "participants or CKKS parameters that leave more bits (lower global_scale_bits)")
    return limbs, added


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or \
            not MIN_MODULUS_BITS <= bits <= MAX_MODULUS_BITS:
        raise ConfigError(f"bits must be an int in {MIN_MODULUS_BITS}..{MAX_MODULUS_BITS}")


def _sums_fit_int64(*, participants: int, total_bits: int) -> bool:
    """Whether a recombined sum of ``participants`` values below ``2^total_bits`` is exact
    in int64 (:func:`unmask_sum`)."""
    return participants.bit_length() + total_bits <= 62


def _check_total_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or \
            not MIN_MODULUS_BITS <= bits <= MAX_TOTAL_BITS:
        raise ConfigError(f"a value's modulus must be 2^{MIN_MODULUS_BITS}..2^{MAX_TOTAL_BITS}"
                          f" (limbs x bits), got 2^{bits}")
    return bits
