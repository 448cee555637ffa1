"""The participant's side of pairwise-masked rounds (distributed DP, :mod:`privacy.masking`).

Mask keys come from signed X25519 announcements: without dropout recovery, the same key
that seals the CKKS key; with it (``max_dropouts > 0``, :mod:`privacy.mask_recovery`),
separate mask keys, one per masked round, announced beside it. Every announcement is
verified against the federation CA before its key is used, so the relaying coordinator
cannot substitute a key of its own and strip an honest participant's masks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from privacy import keyshare, mask_recovery, shamir
from privacy.ckks import CkksParams
from privacy.errors import FedCtxError
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
                 max_colluders: int, max_dropouts: int = 0) -> NoiseShares:
    """Split the noise so that any ``h = participants - max_colluders - max_dropouts``
    honest participants' weighted sum carries what each one's budget needs (with
    dropouts, the honest participants that are left).

    ``own`` is what this participant's records need on their own (its sampling rate, its
    earlier spending); ``floor`` what the budget needs at the protocol's record cap, the
    least any participant needs (the same for all). Each adds ``max(own, floor) / sqrt(h)``
    and weighs its update by ``w = floor / max(own, floor)``. Every weighted share then has
    the same std, ``floor / sqrt(h)`` clips, so any ``h`` of them sum to ``floor`` clips,
    which is ``max(own, floor)`` times a record's weighted sensitivity ``w`` clips. A
    participant whose few records need more noise counts less in the mean instead of
    adding noise that the others would carry.

    Raises:
        ProtocolError: ``max_colluders + max_dropouts`` is not below ``participants``.
    """
    honest = participants - max_colluders - max_dropouts
    if honest < 1:
        raise ProtocolError(f"max_colluders = {max_colluders} and max_dropouts = "
                            f"{max_dropouts} leave no honest participant in a federation of "
                            f"{participants}")
    need = max(own, floor)
    return NoiseShares(share=need / math.sqrt(honest), weight=floor / need, effective=need)


class MaskedSum:
    """Masks this participant's contributions and unmasks the round's sum.

    Args:
        own_id: this participant's id.
        x25519_private: its raw X25519 private key (the one it announced to be sealed to).
        announcements: every roster member's key announcement (its own may be included).
        roster: the federation's participant ids: the mask set.
        federation_id, ca_certificate_pem: what each announcement is verified against.
        ckks_params: the federation's CKKS parameters (they bound the modulus).
        seed: seeds the stochastic rounding (from ``os.urandom`` in a deployment: a share
            alone is not private, so its rounding is part of the mechanism).
        mask_private: dropout recovery only: its raw mask private keys, one per masked
            round, concatenated (the mask keys it announced); round ``mask_rounds[i]``'s
            pair masks come from the ``i``-th keys.
        mask_rounds: dropout recovery only: the protocol's masked round ids, in order.
        max_dropouts: how many participants may drop out over the federation (0: every
            one must contribute to every round; no recovery).
    """

    def __init__(self, *, own_id: str, x25519_private: bytes,
                 announcements: Sequence[pb.KeyAnnouncement], roster: Sequence[str],
                 federation_id: str, ca_certificate_pem: bytes, ckks_params: CkksParams,
                 seed: int, mask_private: bytes | None = None,
                 mask_rounds: Sequence[str] = (), max_dropouts: int = 0) -> None:
        rounds = len(mask_rounds)
        if max_dropouts and (mask_private is None or not rounds
                             or len(mask_private) != 32 * rounds):
            raise ProtocolError("dropout recovery needs this participant's mask keys, one "
                                "per masked round")
        peers, mask_peers = {}, {}
        for a in announcements:
            if a.participant_id == own_id or a.participant_id not in roster:
                continue
            verify = dict(federation_id=federation_id, participant_id=a.participant_id,
                          certificate_pem=a.certificate_pem.encode(),
                          ca_certificate_pem=ca_certificate_pem)
            keyshare.verify_key_announcement(x25519_public=a.x25519_public,
                                             signature=a.signature, **verify)
            peers[a.participant_id] = a.x25519_public
            if max_dropouts:
                keyshare.verify_key_announcement(x25519_public=a.mask_x25519_public,
                                                 signature=a.mask_signature, purpose="mask",
                                                 **verify)
                if len(a.mask_x25519_public) != 32 * rounds:
                    raise ProtocolError(f"{a.participant_id!r} announced "
                                        f"{len(a.mask_x25519_public) // 32} mask keys for "
                                        f"{rounds} masked rounds")
                mask_peers[a.participant_id] = _split32(a.mask_x25519_public)
        missing = set(roster) - set(peers) - {own_id}
        if missing:
            raise ProtocolError(f"no key announcement from {sorted(missing)}: their masks "
                                "cannot be derived")
        self.own_id = own_id
        self.federation_id = federation_id
        self.roster = sorted(roster)
        self.participants = len(roster)
        self.max_dropouts = max_dropouts
        self.bits = modulus_bits(participants=self.participants, params=ckks_params)
        #: digits base 2^bits per value (``privacy.masking.fixed_point_limbs``; public)
        self.limbs = 1
        # without recovery the pair masks come from the sealing keys (with it, per round
        # from that round's mask keys: :meth:`_pair_keys`)
        self._keys = {} if max_dropouts else pair_keys(
            own_id=own_id, own_x25519_private=x25519_private, peers=peers,
            federation_id=federation_id)
        self._rng = np.random.default_rng(seed)
        #: values clamped to the bound so far (a count, never the values)
        self.clamped = 0
        #: the mask set: the roster less the participants that dropped out
        self.active = set(self.roster)
        # dropout recovery: Shamir threshold and indices, the sealing keys of shares,
        # every participant's mask public key, the shares of the others' mask keys this
        # participant holds, and per round its own self-mask seed's share
        self.threshold = self.participants - max_dropouts
        self._index = mask_recovery.share_indices(self.roster)
        self._share_keys = pair_keys(own_id=own_id, own_x25519_private=x25519_private,
                                     peers=peers, federation_id=federation_id,
                                     purpose=mask_recovery.SHARE_SEAL_PURPOSE)
        self._mask_rounds = {r: i for i, r in enumerate(mask_rounds)}
        self._mask_private = _split32(mask_private) if max_dropouts else []
        self._mask_publics = dict(mask_peers)
        if max_dropouts:
            self._mask_publics[own_id] = [mask_recovery.public_of(k)
                                          for k in self._mask_private]
        self._key_shares: dict[str, list[bytes]] = {}
        self._own_seed_shares: dict[str, bytes] = {}
        self._revealed: dict[str, frozenset[str]] = {}

    @property
    def recovers(self) -> bool:
        """Whether rounds carry self-masks and may close without everyone."""
        return self.max_dropouts > 0

    # -- dropout recovery: the mask keys' shares --------------------------------------
    def mask_key_shares(self) -> list[pb.SealedShare]:
        """Shamir shares of this participant's mask private keys: each other roster
        member's share of every round's key, sealed together to it (deposited once, before
        the first masked round)."""
        split = [shamir.split(key, threshold=self.threshold, shares=self.participants)
                 for key in self._mask_private]
        return [pb.SealedShare(recipient_id=pid, sealed=self._seal(
            b"".join(shares[self._index[pid]] for shares in split),
            round_id=mask_recovery.MASK_KEY_ROUND, owner_id=self.own_id, recipient_id=pid))
            for pid in self.roster if pid != self.own_id]

    def receive_mask_key_shares(self, sealed: Sequence[pb.SealedShare]) -> None:
        """Open the other participants' mask-key shares sealed to this one.

        Raises:
            ProtocolError: one is missing or does not open.
        """
        width = shamir.SHARE_BYTES
        opened = {}
        for s in sealed:
            if s.owner_id in self.active:
                blob = self._open(s, round_id=mask_recovery.MASK_KEY_ROUND,
                                  shares=len(self._mask_rounds))
                opened[s.owner_id] = [blob[i:i + width] for i in range(0, len(blob), width)]
        missing = self.active - set(opened) - {self.own_id}
        if missing:
            raise ProtocolError(f"no mask-key share from {sorted(missing)}")
        self._key_shares = opened

    def _round_index(self, round_id: str) -> int:
        if round_id not in self._mask_rounds:
            raise ProtocolError(f"round {round_id!r} is not one of the protocol's masked "
                                "rounds: it has no mask keys")
        return self._mask_rounds[round_id]

    def _pair_keys(self, round_id: str) -> dict[str, bytes]:
        """This participant's pair keys with the mask set's other members for a round."""
        peers = self.active - {self.own_id}
        if not self.recovers:
            return {pid: key for pid, key in self._keys.items() if pid in peers}
        i = self._round_index(round_id)
        return pair_keys(own_id=self.own_id, own_x25519_private=self._mask_private[i],
                         peers={pid: self._mask_publics[pid][i] for pid in peers},
                         federation_id=self.federation_id)

    def _seal(self, share: bytes, *, round_id: str, owner_id: str, recipient_id: str) -> bytes:
        return mask_recovery.seal_share(
            self._share_keys[recipient_id], share, federation_id=self.federation_id,
            round_id=round_id, owner_id=owner_id, recipient_id=recipient_id)

    def _open(self, sealed: pb.SealedShare, *, round_id: str, shares: int = 1) -> bytes:
        if sealed.owner_id not in self._share_keys:
            raise ProtocolError(f"a share from {sealed.owner_id!r}, who is not a peer")
        try:
            return mask_recovery.open_share(
                self._share_keys[sealed.owner_id], sealed.sealed,
                federation_id=self.federation_id, round_id=round_id,
                owner_id=sealed.owner_id, recipient_id=self.own_id, shares=shares)
        except FedCtxError as exc:
            raise ProtocolError(str(exc)) from exc

    # -- a round ---------------------------------------------------------------------------
    def mask(self, values: np.ndarray, *, round_id: str,
             bound: float) -> tuple[np.ndarray, list[pb.SealedShare]]:
        """``values`` ``[n]`` as fixed point in ``[-bound, bound]``, masked for ``round_id``:
        ``([limbs * n]`` digits, the self-mask seed's sealed shares``)`` (no shares
        without dropout recovery)."""
        if self.own_id not in self.active:
            raise ProtocolError(f"{self.own_id!r} dropped out of the mask set: its mask key "
                                "was revealed, so it may not contribute again")
        total_bits = self.bits * self.limbs
        mask = combined_mask(self._pair_keys(round_id), own_id=self.own_id, round_id=round_id,
                             length=values.size, bits=total_bits)
        sealed: list[pb.SealedShare] = []
        if self.recovers:
            seed = os.urandom(mask_recovery.SEED_BYTES)
            mask = (mask + mask_recovery.self_mask(seed, round_id=round_id, length=values.size,
                                                   bits=total_bits)) % np.uint64(1 << total_bits)
            shares = shamir.split(seed, threshold=self.threshold, shares=self.participants)
            self._own_seed_shares[round_id] = shares[self._index[self.own_id]]
            sealed = [pb.SealedShare(recipient_id=pid, sealed=self._seal(
                shares[self._index[pid]], round_id=round_id, owner_id=self.own_id,
                recipient_id=pid)) for pid in sorted(self.active) if pid != self.own_id]
        masked, clamped = mask_values(values, mask=mask, bound=bound,
                                      participants=self.participants, bits=self.bits,
                                      rng=self._rng, limbs=self.limbs)
        self.clamped += clamped
        return masked, sealed

    def holds_seed_share(self, round_id: str) -> bool:
        """Whether this participant masked ``round_id`` in this process (and so holds its
        own self-mask share: a restart between contributing and revealing loses it, and
        it can then only read the others' reveals)."""
        return round_id in self._own_seed_shares

    def reveal(self, round_id: str, *, contributors: Sequence[str],
               sealed: Sequence[pb.SealedShare]) -> list[pb.RevealedShare]:
        """This survivor's reveals for a closed round: its share of every contributor's
        self-mask seed and of every missing member's mask key, never both for one member
        (the same contributor set every time it is asked).

        Raises:
            ProtocolError: this participant is not among the contributors, a contributor
                is outside the mask set, fewer than the threshold contributed, another
                contributor set was revealed for this round before, or a share is missing
                or does not open.
        """
        survivors = frozenset(contributors)
        if self.own_id not in survivors:
            raise ProtocolError(f"round {round_id!r} closed without {self.own_id!r}'s "
                                "contribution: it dropped out and may not continue")
        if not survivors <= self.active:
            raise ProtocolError(f"round {round_id!r} counts {sorted(survivors - self.active)}, "
                                "who are out of the mask set")
        if len(survivors) < self.threshold:
            raise ProtocolError(
                f"round {round_id!r} closed with {len(survivors)} contributions, fewer than "
                f"the {self.threshold} the noise plan allows (max_dropouts = "
                f"{self.max_dropouts}, counted over the federation): not revealing")
        if self._revealed.setdefault(round_id, survivors) != survivors:
            raise ProtocolError(f"the coordinator named another contributor set for round "
                                f"{round_id!r} than before: not revealing")
        opened = {s.owner_id: self._open(s, round_id=round_id)
                  for s in sealed if s.owner_id in survivors and s.owner_id != self.own_id}
        if round_id not in self._own_seed_shares:
            raise ProtocolError(f"this participant no longer holds its self-mask share for "
                                f"round {round_id!r} (restarted after contributing)")
        opened[self.own_id] = self._own_seed_shares[round_id]
        if set(opened) != survivors:
            raise ProtocolError(f"no self-mask share from {sorted(survivors - set(opened))}")
        kind = pb.REVEALED_KIND_SELF_MASK
        reveals = [pb.RevealedShare(owner_id=w, kind=kind, share=opened[w])
                   for w in sorted(survivors)]
        i = self._round_index(round_id)
        reveals += [pb.RevealedShare(owner_id=u, kind=pb.REVEALED_KIND_MASK_KEY,
                                     share=self._key_shares[u][i])
                    for u in sorted(self.active - survivors)]
        return reveals

    def _reconstruct(self, revealed: Sequence[pb.RevealedShare], *, owner: str, kind: int,
                     survivors: frozenset[str]) -> bytes:
        """``owner``'s secret from the survivors' reveals of ``kind``; with more than the
        threshold, two different subsets must agree."""
        points = {self._index[r.revealer_id]: r.share for r in revealed
                  if r.owner_id == owner and r.kind == kind and r.revealer_id in survivors}
        try:
            secret = shamir.combine(points, threshold=self.threshold, secret_bytes=32)
            if len(points) > self.threshold:
                last = dict(sorted(points.items())[-self.threshold:])
                if shamir.combine(last, threshold=self.threshold, secret_bytes=32) != secret:
                    raise ProtocolError(f"the revealed shares of {owner!r} disagree")
        except shamir.ShareError as exc:
            raise ProtocolError(f"{owner!r}'s revealed shares: {exc}") from exc
        return secret

    def ready(self, revealed: Sequence[pb.RevealedShare], *,
              contributors: Sequence[str]) -> bool:
        """Whether enough contributors revealed to unmask the round."""
        return len({r.revealer_id for r in revealed if r.revealer_id in contributors}) \
            >= self.threshold

    def unmask(self, decrypted: np.ndarray, *, contributions: int, bound: float,
               round_id: str = "", contributors: Sequence[str] = (),
               revealed: Sequence[pb.RevealedShare] = ()) -> np.ndarray:
        """The sum ``[n]`` of the contributors' clamped values from the decrypted
        aggregate ``[limbs * n]``. With dropout recovery, ``contributors`` and the
        threshold's ``revealed`` shares remove their self-masks and the missing members'
        pair masks; the missing members then leave the mask set for good.

        Raises:
            ProtocolError: without recovery, the round closed without every participant's
                contribution; with it, the reveals do not give the secrets back (too few,
                disagreeing, or a mask key that is not the announced one).
        """
        if not self.recovers:
            if contributions != self.participants:
                raise ProtocolError(
                    f"a masked round closed with {contributions} of {self.participants} "
                    "contributions: the masks cancel only in the sum of all (no dropout "
                    "recovery: set max_dropouts); rerun the federation with every participant")
            return unmask_sum(decrypted, bound=bound, participants=self.participants,
                              bits=self.bits, limbs=self.limbs)
        survivors = frozenset(contributors)
        if len(survivors) != contributions or \
                self._revealed.get(round_id, survivors) != survivors:
            raise ProtocolError(f"round {round_id!r}'s aggregate does not sum the "
                                "contributors this participant revealed for")
        seeds = {w: self._reconstruct(revealed, owner=w, kind=pb.REVEALED_KIND_SELF_MASK,
                                      survivors=survivors) for w in sorted(survivors)}
        i = self._round_index(round_id)
        dropped = {}
        for u in sorted(self.active - survivors):
            key = self._reconstruct(revealed, owner=u, kind=pb.REVEALED_KIND_MASK_KEY,
                                    survivors=survivors)
            if not mask_recovery.mask_private_key_matches(key, self._mask_publics[u][i]):
                raise ProtocolError(f"the revealed mask key of {u!r} is not the one it "
                                    "announced")
            dropped[u] = key
        total_bits = self.bits * self.limbs
        correction = mask_recovery.correction(
            federation_id=self.federation_id, round_id=round_id,
            length=decrypted.size // self.limbs, bits=total_bits, survivor_seeds=seeds,
            dropped_keys=dropped, mask_publics={w: self._mask_publics[w][i] for w in seeds})
        total = unmask_sum(decrypted, bound=bound, participants=self.participants,
                           bits=self.bits, limbs=self.limbs, correction=correction)
        self.active = set(survivors)
        self._own_seed_shares.pop(round_id, None)
        return total


def _split32(keys: bytes | None) -> list[bytes]:
    """Concatenated 32-byte X25519 keys as a list."""
    keys = keys or b""
    return [keys[i:i + 32] for i in range(0, len(keys), 32)]
