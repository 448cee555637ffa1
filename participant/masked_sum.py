"""The participant's side of pairwise-masked rounds (distributed DP, :mod:`privacy.masking`).

Mask keys come from the same signed X25519 announcements that seal the CKKS key: every
announcement is verified against the federation CA before its key is used, so the relaying
coordinator cannot substitute a key of its own and strip an honest participant's masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from privacy import keyshare
from privacy.ckks import CkksParams
from privacy.masking import combined_mask, mask_values, modulus_bits, pair_keys, unmask_sum
from proto.fedctx.v1 import fedctx_pb2 as pb

from .errors import ProtocolError


@dataclass(frozen=True, slots=True)
class NoiseShares:
    """One participant's part of a distributed-DP calibration release.

    Attributes:
        share: the noise multiplier (of the clip) it adds to each step.
        weight: what it multiplies its update by in the federation's weighted mean, in
            (0, 1]: 1 unless its records need more noise than the floor.
        effective: a lower bound on the noise multiplier, relative to one of its records'
            weighted sensitivity, of any ``h`` honest participants' weighted sum: what its
            ledger records, at least what its budget needs.
    """

    share: float
    weight: float
    effective: float


def noise_shares(*, own: float, floor: float, participants: int,
                 max_colluders: int) -> NoiseShares:
    """Split the noise so that any ``h = participants - max_colluders`` honest participants'
    weighted sum carries what each one's budget needs.

    ``own`` is what this participant's records need on their own (its sampling rate, its
    earlier spending); ``floor`` what the budget needs at the protocol's record cap, the
    least any participant needs (the same for all). Each adds ``max(own, floor) / sqrt(h)``
    and weighs its update by ``w = floor / max(own, floor)``. Every weighted share then has
    the same std, ``floor / sqrt(h)`` clips, so any ``h`` of them sum to ``floor`` clips,
    which is ``max(own, floor)`` times a record's weighted sensitivity ``w`` clips. A
    participant whose few records need more noise counts less in the mean instead of
    adding noise that the others would carry.

    Raises:
        ProtocolError: ``max_colluders`` is not below ``participants``.
    """
    honest = participants - max_colluders
    if honest < 1:
        raise ProtocolError(f"max_colluders = {max_colluders} leaves no honest participant "
                            f"in a federation of {participants}")
    need = max(own, floor)
    return NoiseShares(share=need / math.sqrt(honest), weight=floor / need, effective=need)


class MaskedSum:
    """Masks this participant's contributions and unmasks the round's sum.

    Args:
        own_id: this participant's id.
        x25519_private: its raw X25519 private key (the one it announced).
        announcements: every roster member's key announcement (its own may be included).
        roster: the federation's participant ids: the mask set, all of whom must contribute.
        federation_id, ca_certificate_pem: what each announcement is verified against.
        ckks_params: the federation's CKKS parameters (they bound the modulus).
        seed: seeds the stochastic rounding (from ``os.urandom`` in a deployment: a share
            alone is not private, so its rounding is part of the mechanism).
    """

    def __init__(self, *, own_id: str, x25519_private: bytes,
                 announcements: Sequence[pb.KeyAnnouncement], roster: Sequence[str],
                 federation_id: str, ca_certificate_pem: bytes, ckks_params: CkksParams,
                 seed: int) -> None:
        peers = {}
        for a in announcements:
            if a.participant_id == own_id or a.participant_id not in roster:
                continue
            keyshare.verify_key_announcement(
                federation_id=federation_id, participant_id=a.participant_id,
                x25519_public=a.x25519_public, signature=a.signature,
                certificate_pem=a.certificate_pem.encode(), ca_certificate_pem=ca_certificate_pem,
            )
            peers[a.participant_id] = a.x25519_public
        missing = set(roster) - set(peers) - {own_id}
        if missing:
            raise ProtocolError(f"no key announcement from {sorted(missing)}: their masks "
                                "cannot be derived")
        self.own_id = own_id
        self.participants = len(roster)
        self.bits = modulus_bits(participants=self.participants, params=ckks_params)
        #: digits base 2^bits per value (``privacy.masking.fixed_point_limbs``; public)
        self.limbs = 1
        self._keys = pair_keys(own_id=own_id, own_x25519_private=x25519_private, peers=peers,
                               federation_id=federation_id)
        self._rng = np.random.default_rng(seed)
        #: values clamped to the bound so far (a count, never the values)
        self.clamped = 0

    def mask(self, values: np.ndarray, *, round_id: str, bound: float) -> np.ndarray:
        """``values`` ``[n]`` as fixed point in ``[-bound, bound]``, masked for ``round_id``:
        ``[limbs * n]`` digits."""
        mask = combined_mask(self._keys, own_id=self.own_id, round_id=round_id,
                             length=values.size, bits=self.bits * self.limbs)
        masked, clamped = mask_values(values, mask=mask, bound=bound,
                                      participants=self.participants, bits=self.bits,
                                      rng=self._rng, limbs=self.limbs)
        self.clamped += clamped
        return masked

    def unmask(self, decrypted: np.ndarray, *, contributions: int, bound: float) -> np.ndarray:
        """The sum ``[n]`` of every participant's clamped values from the decrypted
        aggregate ``[limbs * n]``.

        Raises:
            ProtocolError: the round closed without every participant's contribution.
        """
        if contributions != self.participants:
            raise ProtocolError(
                f"a masked round closed with {contributions} of {self.participants} "
                "contributions: the masks cancel only in the sum of all (no dropout "
                "recovery); rerun the federation with every participant")
        return unmask_sum(decrypted, bound=bound, participants=self.participants,
                          bits=self.bits, limbs=self.limbs)
