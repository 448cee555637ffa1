"""Shamir secret sharing of short secrets (keys and seeds) over the prime field 2^521 - 1.

A secret of at most 64 bytes is the constant term of a random polynomial of degree
``threshold - 1``; share ``x`` is the polynomial at ``x`` (``x = 1, 2, ...``). Any
``threshold`` shares give the secret back by Lagrange interpolation at 0; fewer are
jointly uniform, independent of the secret (information-theoretic). The coefficients come
from ``os.urandom`` (``secrets``). Used for dropout recovery of pairwise-masked rounds
(:mod:`privacy.mask_recovery`).

Shares carry no integrity: a wrong share gives a wrong secret, so callers check what they
reconstruct against something public (an announced public key) where they can.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping

from .errors import ConfigError, CryptoError

#: The field's prime, the Mersenne prime 2^521 - 1.
PRIME = (1 << 521) - 1
#: Bytes of an encoded share value (an element of the field).
SHARE_BYTES = 66
#: The longest secret, in bytes: any 64-byte string is below the prime.
MAX_SECRET_BYTES = 64


class ShareError(CryptoError):
    """Shares cannot give a secret back (too few, malformed, duplicated)."""


def split(secret: bytes, *, threshold: int, shares: int) -> dict[int, bytes]:
    """``{x: share}`` for ``x = 1..shares``: any ``threshold`` of them give ``secret`` back.

    Raises:
        ConfigError: ``1 <= threshold <= shares`` fails, or the secret is empty or longer
            than :data:`MAX_SECRET_BYTES`.
    """
    if not 1 <= threshold <= shares:
        raise ConfigError(f"need 1 <= threshold <= shares, got {threshold} of {shares}")
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise ConfigError(f"a secret must be 1..{MAX_SECRET_BYTES} bytes, got {len(secret)}")
    coefficients = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    result = {}
    for x in range(1, shares + 1):
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        result[x] = y.to_bytes(SHARE_BYTES, "big")
    return result


def combine(shares: Mapping[int, bytes], *, threshold: int, secret_bytes: int) -> bytes:
    """The ``secret_bytes``-byte secret from at least ``threshold`` shares ``{x: share}``
    (the first ``threshold`` by ``x`` are used).

    Raises:
        ShareError: fewer than ``threshold`` shares, an ``x`` outside ``1..2^32``, a share
            that is not a field element, or a result that does not fit ``secret_bytes``.
    """
    if len(shares) < threshold or threshold < 1:
        raise ShareError(f"{len(shares)} shares cannot give back a secret of threshold "
                         f"{threshold}")
    points = []
    for x, share in sorted(shares.items())[:threshold]:
        if not isinstance(x, int) or not 1 <= x <= 1 << 32:
            raise ShareError(f"share index {x!r} is not in 1..2^32")
        if len(share) != SHARE_BYTES or int.from_bytes(share, "big") >= PRIME:
            raise ShareError(f"share {x} is not a {SHARE_BYTES}-byte field element")
        points.append((x, int.from_bytes(share, "big")))
    weights = _lagrange_at_zero(tuple(x for x, _ in points))
    secret = sum(w * y for w, (_, y) in zip(weights, points, strict=True)) % PRIME
    if secret >= 1 << (8 * secret_bytes):
        raise ShareError("the shares do not give back a secret of the expected size "
                         "(a wrong or foreign share)")
    return secret.to_bytes(secret_bytes, "big")


@functools.lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """The Lagrange weights that evaluate the polynomial through ``xs`` at 0 (cached: a
    round's reveals use one set of indices for every owner)."""
    weights = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(weights)
