"""Dropout recovery for pairwise-masked rounds (Bonawitz et al., CCS 2017, "double masking").

:mod:`privacy.masking` alone needs every participant of the mask set in every round: a
missing contribution leaves its pair masks in the sum. With recovery, a participant

* holds a separate *mask key pair* (X25519) for every masked round of the protocol: the
  pair masks of round ``i`` come from the ``i``-th, not from the key that seals the CKKS
  context, because a dropped participant's mask private key for the round it dropped in
  is reconstructed and made public. One key for every round would be unsafe: every
  earlier round's self-mask seed was revealed to unmask that round, so the revealed key
  would open all of the participant's earlier contributions;
* before the first masked round, splits each private key into Shamir shares
  (:mod:`privacy.shamir`), and seals every roster member's shares of all of them to it;
* in every round adds a *self-mask*, a fresh 32-byte seed expanded like a pair mask, and
  sends Shamir shares of the seed, sealed per recipient, with its contribution.

After the round closes with survivors ``S``, every survivor reveals, for each member of
``S``, its share of that member's self-mask seed and, for each member that dropped, its
share of the dropped member's mask private key, never both for the same member and round.
Whoever holds ``threshold`` reveals removes the survivors' self-masks and the dropped
members' pair masks with the survivors (:func:`correction`). A coordinator that calls a
participant dropped although its contribution arrived learns its mask key, not its
self-mask: the contribution stays uniform. The threshold is the fewest survivors the
noise plan allows (``participants - max_dropouts``), so a coordinator that tells the
survivors different survivor sets cannot collect both kinds of share for one member
while the honest participants outnumber twice the dropouts.

Shares are sealed with ChaCha20-Poly1305 under a key from the pair's *sealing* X25519
keys (the announced, certificate-signed ones; their own HKDF purpose), bound to the
federation, round, owner and recipient. Nothing here logs or formats a key or a share.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import shamir
from .masking import MaskingError, _lp, combined_mask, pair_keys, round_mask

SHARE_SEAL_PURPOSE = b"fedctx/mask-share-seal/v1"
_SELF_MASK_TAG = b"fedctx/self-mask/v1"
_AAD_TAG = b"fedctx/mask-share/aad/v1"
_NONCE_BYTES = 12
#: Bytes of a sealed share: nonce, share, Poly1305 tag.
SEALED_SHARE_BYTES = _NONCE_BYTES + shamir.SHARE_BYTES + 16


def sealed_bytes(shares: int) -> int:
    """Bytes of ``shares`` shares sealed together (:func:`seal_share`)."""
    return SEALED_SHARE_BYTES + (shares - 1) * shamir.SHARE_BYTES
#: The round id of the mask private key's shares (they belong to no round).
MASK_KEY_ROUND = ""
SEED_BYTES = 32


def share_indices(roster: Sequence[str]) -> dict[str, int]:
    """Each roster member's Shamir ``x`` (1-based, by sorted id): the same for everyone."""
    return {pid: i for i, pid in enumerate(sorted(roster), start=1)}


def seal_share(key: bytes, share: bytes, *, federation_id: str, round_id: str,
               owner_id: str, recipient_id: str) -> bytes:
    """``share`` (one or more concatenated shares) encrypted for ``recipient_id`` under
    their pair's sealing ``key`` (``pair_keys(..., purpose=SHARE_SEAL_PURPOSE)``), bound
    to the federation, the round (:data:`MASK_KEY_ROUND` for the mask keys) and the
    owner."""
    nonce = os.urandom(_NONCE_BYTES)
    aad = _lp(_AAD_TAG, federation_id.encode(), round_id.encode(), owner_id.encode(),
              recipient_id.encode())
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, share, aad)


def open_share(key: bytes, sealed: bytes, *, federation_id: str, round_id: str,
               owner_id: str, recipient_id: str, shares: int = 1) -> bytes:
    """The ``shares`` concatenated shares in ``sealed`` (:func:`seal_share`).

    Raises:
        MaskingError: the blob is not that many shares sealed for this recipient, owner
            and round (tampered, replayed from another round, or foreign).
    """
    if len(sealed) != sealed_bytes(shares):
        raise MaskingError(f"a sealed share from {owner_id!r} has {len(sealed)} bytes, not "
                           f"{sealed_bytes(shares)}")
    aad = _lp(_AAD_TAG, federation_id.encode(), round_id.encode(), owner_id.encode(),
              recipient_id.encode())
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], aad)
    except InvalidTag:
        raise MaskingError(f"the share from {owner_id!r} for round {round_id!r} does not "
                           "open: tampered, replayed or sealed to someone else") from None


def self_mask(seed: bytes, *, round_id: str, length: int, bits: int) -> np.ndarray:
    """``[length]`` values uniform modulo ``2^bits``: the self-mask a participant adds to
    its contribution to ``round_id`` (its own domain, apart from every pair mask)."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=_SELF_MASK_TAG).derive(seed)
    return round_mask(key, round_id=round_id, length=length, bits=bits)


def public_of(private: bytes) -> bytes:
    """The raw X25519 public key of a raw private key."""
    return x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def mask_private_key_matches(private: bytes, public: bytes) -> bool:
    """Whether a reconstructed X25519 ``private`` key is the one behind ``public``."""
    try:
        return public_of(private) == public
    except ValueError:
        return False


def correction(*, federation_id: str, round_id: str, length: int, bits: int,
               survivor_seeds: Mapping[str, bytes], dropped_keys: Mapping[str, bytes],
               mask_publics: Mapping[str, bytes]) -> np.ndarray:
    """``[length]`` values modulo ``2^bits`` to subtract from the sum of the survivors'
    contributions (:func:`privacy.masking.unmask_sum`'s ``correction``): their self-masks,
    plus the pair masks they share with the dropped participants, which do not cancel.

    Survivor ``w``'s net pair mask holds ``+-m_wu`` for each dropped ``u``; summed over
    the survivors that is minus each dropped ``u``'s net mask over the survivors, which
    ``u``'s reconstructed mask key (``dropped_keys[u]``) recomputes.

    Args:
        survivor_seeds: each survivor's reconstructed self-mask seed.
        dropped_keys: each dropped participant's reconstructed mask private key for this
            round.
        mask_publics: every survivor's announced mask public key for this round
            (verified).
    """
    modulus = np.uint64(1 << bits)
    total = np.zeros(length, dtype=np.uint64)
    for seed in survivor_seeds.values():
        total = (total + self_mask(seed, round_id=round_id, length=length, bits=bits)) % modulus
    survivors = {w: mask_publics[w] for w in survivor_seeds}
    for dropped, private in dropped_keys.items():
        keys = pair_keys(own_id=dropped, own_x25519_private=private, peers=survivors,
                         federation_id=federation_id)
        net = combined_mask(keys, own_id=dropped, round_id=round_id, length=length, bits=bits)
        total = (total + modulus - net) % modulus
    return total
