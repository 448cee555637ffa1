"""Federation state machine: keys relay, rounds, validation and homomorphic sums.

Transport-free (no grpc): the servicer authenticates the peer and passes its id in.
The coordinator holds only the *public* CKKS context: it can add ciphertexts and
check their shape, never decrypt.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import asdict, dataclass

import tenseal

from privacy import ckks, keyshare, payload
from privacy.errors import CkksParameterMismatchError, CryptoError, KeyShareError
from privacy.mask_recovery import MASK_KEY_ROUND, SEALED_SHARE_BYTES, sealed_bytes
from privacy.shamir import SHARE_BYTES

from .config import CoordinatorConfig
from .errors import (
    BindingMismatchError,
    ConflictError,
    InvalidContributionError,
    NotAllowedError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    RoundClosedError,
)
from .store import RoundRow, Store, now

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = "fedctx.v1"
ROUND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # always .fullmatch()
KINDS = frozenset({"context_vector", "coefficient_update", "adapter_update", "vector_sum",
                   "class_statistics"})
MAX_PROTOCOL_PLAN_BYTES = 4096
OPEN, CLOSED, FAILED = "open", "closed", "failed"
#: Kinds of a revealed Shamir share (dropout recovery, ``privacy.mask_recovery``).
SELF_MASK, MASK_KEY = "self_mask", "mask_key"


@dataclass(frozen=True, slots=True)
class Header:
    """A contribution's binding fields (parsed from the wire by the servicer)."""

    federation_id: str
    round_id: str
    model_fingerprint: str
    layer_map_fingerprint: str
    ckks_context_fingerprint: str
    vector_length: int
    num_ciphertexts: int
    payload_bytes: int
    payload_sha256: bytes
    kind: str
    #: dropout recovery: ``(recipient id, sealed share of the self-mask seed)`` pairs
    mask_shares: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class MaskShares:
    """What a participant reads for a round's dropout recovery (``GetMaskShares``)."""

    contributors: list[str]
    sealed: list[tuple[str, bytes]]  # (owner, sealed share) for the caller
    revealed: list[tuple[str, str, str, bytes]]  # (revealer, owner, kind, share)
    retired: list[str]
    revealers: int


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a participant gets back for an accepted contribution."""

    round_id: str
    payload_sha256: bytes
    duplicate: bool
    contributions: int
    state: str


@dataclass(frozen=True, slots=True)
class RoundStatus:
    """Public state of a round."""

    round_id: str
    state: str
    contributions: int
    quorum: int
    deadline_unix_s: float
    vector_length: int
    aggregate_sha256: bytes
    contributed: bool


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The encrypted sum of a closed round (framed ciphertexts)."""

    round_id: str
    contributions: int
    vector_length: int
    num_ciphertexts: int
    payload: bytes
    payload_sha256: bytes
    ckks_context_fingerprint: str
    kind: str


@dataclass(frozen=True, slots=True)
class TaskEntry:
    """A cached task's public header (the payload is ciphertext the coordinator can't read)."""

    task_id: str
    task_name: str
    model_fingerprint: str
    layer_map_fingerprint: str
    ckks_context_fingerprint: str
    vector_length: int
    coefficient_count: int
    num_ciphertexts: int
    payload_bytes: int
    payload_sha256: bytes
    metadata_json: str
    stored_by: str = ""
    stored_at_unix_s: float = 0.0


class Aggregator:
    """All coordinator behaviour, persisted in a :class:`Store`."""

    def __init__(self, config: CoordinatorConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self._lock = threading.RLock()
        self._public_context: tenseal.Context | None = None
        self._slots = 0
        # Open rounds' running sums, with the digests folded into each (a multiset, sorted
        # at close). Memory only: after a restart a round is summed from the store instead.
        self._running: dict[str, tuple[ckks.EncryptedSum, list[str]]] = {}
        stored_fed = store.get_meta("federation_id")
        if stored_fed is not None and stored_fed != config.federation_id:
            raise BindingMismatchError(
                f"state dir {store.state_dir} belongs to federation {stored_fed!r}, "
                f"not {config.federation_id!r}"
            )
        with store.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('federation_id', ?)", (config.federation_id,)
            )
        ctx_digest = store.get_meta("public_context_blob")
        if ctx_digest is not None:
            self._load_public_context(store.get_blob(ctx_digest))
        self.tick()

    # -- helpers -------------------------------------------------------------------
    def _load_public_context(self, data: bytes) -> None:
        self._public_context = ckks.load_public_context(data)
        self._slots = ckks.slot_count(self._public_context)

    def _require_member(self, peer_id: str) -> None:
        if peer_id not in self.config.roster:
            raise NotAllowedError(f"peer {peer_id!r} is not in federation's roster")

    def pinned(self, key: str) -> str:
        """A pinned binding (operator config wins over the keyholder's value)."""
        configured = getattr(self.config, key, "")
        return configured or (self.store.get_meta(key) or "")

    # -- federation ---------------------------------------------------------------
    def federation_info(self) -> dict[str, object]:
        """Public federation parameters and round summaries."""
        self.tick(wait=False)
        rounds = [
            (r.round_id, r.state, len(self.store.contributions(r.round_id)))
            for r in self.store.list_rounds()
        ]
        return {
            "federation_id": self.config.federation_id,
            "roster": list(self.config.roster),
            "keyholder_id": self.config.keyholder_id,
            "quorum": self.config.quorum,
            "round_timeout_s": self.config.round_timeout_s,
            "ckks_context_fingerprint": self.store.get_meta("ckks_context_fingerprint") or "",
            "ckks_params_fingerprint": self.store.get_meta("ckks_params_fingerprint") or "",
            "model_fingerprint": self.pinned("model_fingerprint"),
            "layer_map_fingerprint": self.pinned("layer_map_fingerprint"),
            "max_payload_bytes": self.config.max_payload_bytes,
            "chunk_bytes": self.config.chunk_bytes,
            "protocol_version": PROTOCOL_VERSION,
            "rounds": rounds,
            "protocol_plan": self.store.get_meta("protocol_plan") or "",
        }

    # -- keys ---------------------------------------------------------------------
    def announce_key(
        self, peer_id: str, *, federation_id: str, x25519_public: bytes, signature: bytes,
        certificate_pem: str, peer_certificate_pem: str, mask_x25519_public: bytes = b"",
        mask_signature: bytes = b"",
    ) -> None:
        """Record a participant's signed X25519 key and, for dropout recovery, its signed
        mask key (both verified against the CA)."""
        self._require_member(peer_id)
        if federation_id != self.config.federation_id:
            raise BindingMismatchError(f"federation {federation_id!r} is not served here")
        if _normalise_pem(certificate_pem) != _normalise_pem(peer_certificate_pem):
            raise NotAllowedError("announced certificate differs from the TLS client certificate")
        try:
            keyshare.verify_key_announcement(
                federation_id=federation_id, participant_id=peer_id,
                x25519_public=x25519_public, signature=signature,
                certificate_pem=certificate_pem.encode(),
                ca_certificate_pem=self.config.tls_ca.read_bytes(),
            )
            if mask_x25519_public or mask_signature:
                keyshare.verify_key_announcement(
                    federation_id=federation_id, participant_id=peer_id,
                    x25519_public=mask_x25519_public, signature=mask_signature,
                    certificate_pem=certificate_pem.encode(),
                    ca_certificate_pem=self.config.tls_ca.read_bytes(), purpose="mask",
                )
        except KeyShareError as exc:
            raise InvalidContributionError(f"key announcement rejected: {exc}") from exc
        with self._lock, self.store.transaction() as db:
            if mask_x25519_public:
                known = db.execute("SELECT x25519_public FROM mask_keys WHERE participant_id = ?",
                                   (peer_id,)).fetchone()
                deposited = db.execute("SELECT 1 FROM mask_shares WHERE owner_id = ? LIMIT 1",
                                       (peer_id,)).fetchone()
                if known is not None and bytes(known[0]) != mask_x25519_public and deposited:
                    raise ConflictError("shares of a different mask key were already "
                                        "deposited; start a new federation to rotate keys")
                db.execute("INSERT OR REPLACE INTO mask_keys VALUES (?, ?, ?)",
                           (peer_id, mask_x25519_public, mask_signature))
            row = db.execute(
                "SELECT x25519_public FROM key_announcements WHERE participant_id = ?", (peer_id,)
            ).fetchone()
            if row is not None and bytes(row[0]) != x25519_public:
                if self.store.get_meta("ckks_context_fingerprint"):
                    raise ConflictError(
                        "keys were already sealed to a different announced key; "
                        "start a new federation to rotate keys"
                    )
            db.execute(
                "INSERT OR REPLACE INTO key_announcements VALUES (?, ?, ?, ?, ?)",
                (peer_id, x25519_public, signature, certificate_pem, now()),
            )
        logger.info("[Aggregator.announce_key] participant=%s", peer_id)

    def key_announcements(
            self, peer_id: str) -> list[tuple[str, bytes, bytes, str, bytes, bytes]]:
        """Every announcement ``(id, key, signature, certificate, mask key, mask key's
        signature)``; the mask fields are empty without one (nothing here is secret)."""
        self._require_member(peer_id)
        rows = self.store.query(
            "SELECT a.participant_id, a.x25519_public, a.signature, a.certificate_pem, "
            "coalesce(m.x25519_public, x''), coalesce(m.signature, x'') "
            "FROM key_announcements a LEFT JOIN mask_keys m USING (participant_id) "
            "ORDER BY a.participant_id"
        )
        return [(str(a), bytes(b), bytes(c), str(d), bytes(e), bytes(f))  # type: ignore[arg-type]
                for a, b, c, d, e, f in rows]

    def publish_keys(
        self, peer_id: str, *, federation_id: str, public_context: bytes,
        ckks_params_fingerprint: str, model_fingerprint: str, layer_map_fingerprint: str,
        sealed_keys: dict[str, bytes], encrypted_secret_context: bytes = b"",
        protocol_plan: str = "",
    ) -> str:
        """Accept the keyholder's public context, sealed secret contexts and protocol plan
        (a JSON object, stored as-is for participants to compare with their own)."""
        self._require_member(peer_id)
        if peer_id != self.config.keyholder_id:
            raise NotAllowedError(f"only the keyholder {self.config.keyholder_id!r} publishes keys")
        if federation_id != self.config.federation_id:
            raise BindingMismatchError(f"federation {federation_id!r} is not served here")
        try:
            context = ckks.load_public_context(public_context)
        except CryptoError as exc:
            raise InvalidContributionError(f"public context rejected: {exc}") from exc
        _check_protocol_plan(protocol_plan)
        fingerprint = ckks.context_fingerprint(public_context)
        expected = set(self.config.roster) - {self.config.keyholder_id}
        if set(sealed_keys) != expected:
            raise InvalidContributionError(
                f"sealed keys must cover exactly {sorted(expected)}, got {sorted(sealed_keys)}"
            )
        for key in ("model_fingerprint", "layer_map_fingerprint"):
            configured = getattr(self.config, key)
            given = {"model_fingerprint": model_fingerprint,
                     "layer_map_fingerprint": layer_map_fingerprint}[key]
            if configured and configured != given:
                raise BindingMismatchError(f"{key} differs from the operator's pin")
        with self._lock:
            existing = self.store.get_meta("ckks_context_fingerprint")
            if existing is not None:
                if existing == fingerprint:
                    return existing
                raise ConflictError("keys were already published for this federation")
            ctx_blob = self.store.put_blob(public_context)
            sealed_digests = {rid: self.store.put_blob(b) for rid, b in sealed_keys.items()}
            encrypted_digest = (
                self.store.put_blob(encrypted_secret_context) if encrypted_secret_context else ""
            )
            with self.store.transaction() as db:
                for k, v in (
                    ("public_context_blob", ctx_blob),
                    ("ckks_context_fingerprint", fingerprint),
                    ("ckks_params_fingerprint", ckks_params_fingerprint),
                    ("model_fingerprint", model_fingerprint),
                    ("layer_map_fingerprint", layer_map_fingerprint),
                    ("encrypted_secret_context_blob", encrypted_digest),
                    ("protocol_plan", protocol_plan),
                ):
                    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
                for rid, digest in sealed_digests.items():
                    db.execute("INSERT OR REPLACE INTO sealed_keys VALUES (?, ?)", (rid, digest))
            self._public_context = context
            self._slots = ckks.slot_count(context)
        logger.info(
            "[Aggregator.publish_keys] keyholder=%s recipients=%d", peer_id, len(sealed_keys)
        )
        return fingerprint

    def fetch_sealed_key(self, peer_id: str) -> tuple[str, str, str, bytes, bytes]:
        """``(keyholder, keyholder cert, ctx fp, sealed blob, encrypted context or b"")``."""
        self._require_member(peer_id)
        if peer_id == self.config.keyholder_id:
            raise NotFoundError("the keyholder has no sealed key: it created the context")
        fingerprint = self.store.get_meta("ckks_context_fingerprint")
        rows = self.store.query(
            "SELECT blob_sha256 FROM sealed_keys WHERE recipient_id = ?", (peer_id,)
        )
        cert = self.store.query(
            "SELECT certificate_pem FROM key_announcements WHERE participant_id = ?",
            (self.config.keyholder_id,),
        )
        if fingerprint is None or not rows or not cert:
            raise NotReadyError("the keyholder has not published keys yet")
        encrypted = self.store.get_meta("encrypted_secret_context_blob") or ""
        return (
            self.config.keyholder_id, str(cert[0][0]), fingerprint,
            self.store.get_blob(str(rows[0][0])),
            self.store.get_blob(encrypted) if encrypted else b"",
        )

    # -- rounds ---------------------------------------------------------------------
    def check_header(self, peer_id: str, header: Header) -> None:
        """Validate a header before its payload is received (cheap, early rejection)."""
        self._require_member(peer_id)
        if self._public_context is None:
            raise NotReadyError("keys are not published yet; no round can accept contributions")
        if header.federation_id != self.config.federation_id:
            raise BindingMismatchError(f"federation {header.federation_id!r} is not served here")
        if not ROUND_ID.fullmatch(header.round_id):
            raise InvalidContributionError(f"round id {header.round_id!r} is not valid")
        if header.kind not in KINDS:
            raise InvalidContributionError(f"kind must be one of {sorted(KINDS)}")
        for key in ("model_fingerprint", "layer_map_fingerprint"):
            if getattr(header, key) != self.pinned(key):
                raise BindingMismatchError(f"{key} does not match the federation's")
        if header.ckks_context_fingerprint != self.store.get_meta("ckks_context_fingerprint"):
            raise InvalidContributionError(
                "contribution is bound to a different CKKS context (foreign key set or parameters)"
            )
        if header.payload_bytes > self.config.max_payload_bytes:
            raise PayloadTooLargeError(
                f"payload of {header.payload_bytes} bytes exceeds the limit of "
                f"{self.config.max_payload_bytes}"
            )
        if header.vector_length < 1:
            raise InvalidContributionError("vector_length must be >= 1")
        expected = -(-header.vector_length // self._slots)
        if header.num_ciphertexts != expected:
            raise InvalidContributionError(
                f"{header.vector_length} values need {expected} ciphertexts, "
                f"header says {header.num_ciphertexts}"
            )
        if len(header.payload_sha256) != 32:
            raise InvalidContributionError("payload_sha256 must be 32 bytes")
        self._check_contribution_shares(peer_id, header)

    def _check_contribution_shares(self, peer_id: str, header: Header) -> None:
        """Dropout recovery: a participant that deposited mask-key shares must send its
        self-mask seed's shares to every other member of the mask set with each
        contribution, and may not contribute once its mask key was revealed."""
        deposited = bool(self.store.query(
            "SELECT 1 FROM mask_shares WHERE round_id = ? AND owner_id = ? LIMIT 1",
            (MASK_KEY_ROUND, peer_id)))
        if not deposited:
            if header.mask_shares:
                raise InvalidContributionError(
                    "mask shares from a participant that deposited no mask-key shares")
            return
        retired = self._retired_before(header.round_id)
        if peer_id in retired:
            raise NotAllowedError(
                f"{peer_id!r} was missing from an earlier masked round and its mask key was "
                "revealed: it may not contribute again (its contribution would be readable)")
        expected = set(self.config.roster) - retired - {peer_id}
        self._check_sealed(header.mask_shares, expected=expected, what="self-mask shares")

    @staticmethod
    def _check_sealed(shares: tuple[tuple[str, bytes], ...], *, expected: set[str],
                      what: str, size: int = SEALED_SHARE_BYTES) -> None:
        recipients = [r for r, _ in shares]
        if len(set(recipients)) != len(recipients) or set(recipients) != expected:
            raise InvalidContributionError(
                f"{what} must go to exactly {sorted(expected)}, one each; got "
                f"{sorted(recipients)}")
        if any(len(sealed) != size for _, sealed in shares):
            raise InvalidContributionError(f"{what} must be {size}-byte sealed shares")

    def submit(self, peer_id: str, header: Header, data: bytes) -> Receipt:
        """Validate and durably accept one contribution (idempotent per digest)."""
        self.check_header(peer_id, header)
        if len(data) != header.payload_bytes:
            raise InvalidContributionError(
                f"received {len(data)} payload bytes, header announced {header.payload_bytes}"
            )
        if payload.sha256(data) != header.payload_sha256:
            raise InvalidContributionError("payload digest mismatch (truncated or corrupted)")
        digest_hex = header.payload_sha256.hex()
        # Ciphertext validation, the expensive part, needs no lock (the public context is
        # fixed once set): concurrent uploads are validated in parallel.
        loaded = self._validate_payload(data, header)
        self.tick()
        with self._lock:
            existing = self.store.query(
                "SELECT payload_sha256 FROM contributions "
                "WHERE round_id = ? AND participant_id = ?",
                (header.round_id, peer_id),
            )
            round_row = self.store.get_round(header.round_id)
            if existing:
                if existing[0][0] == digest_hex:
                    assert round_row is not None
                    return Receipt(
                        header.round_id, header.payload_sha256, True,
                        len(self.store.contributions(header.round_id)), round_row.state,
                    )
                raise ConflictError(
                    f"participant {peer_id!r} already contributed a different payload to "
                    f"round {header.round_id!r}"
                )
            if round_row is not None:
                if round_row.state != OPEN:
                    raise RoundClosedError(f"round {header.round_id!r} is {round_row.state}")
                if (round_row.vector_length, round_row.kind) != (header.vector_length, header.kind):
                    raise InvalidContributionError(
                        f"round {header.round_id!r} carries {round_row.kind} vectors of length "
                        f"{round_row.vector_length}"
                    )
            self.store.put_blob(data)  # durable before the row that references it
            with self.store.transaction() as db:
                if round_row is None:
                    opened = now()
                    db.execute(
                        "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
                        (header.round_id, OPEN, header.kind, header.vector_length,
                         header.num_ciphertexts, opened, opened + self.config.round_timeout_s),
                    )
                db.execute(
                    "INSERT INTO contributions VALUES (?, ?, ?, ?, ?)",
                    (header.round_id, peer_id, digest_hex, len(data), now()),
                )
                db.executemany(
                    "INSERT INTO mask_shares VALUES (?, ?, ?, ?)",
                    [(header.round_id, peer_id, r, sealed) for r, sealed in header.mask_shares])
            self._fold_in(header.round_id, digest_hex, loaded, first=round_row is None)
            count = len(self.store.contributions(header.round_id))
            logger.info(
                "[Aggregator.submit] round=%s participant=%s contributions=%d",
                header.round_id, peer_id, count,
            )
            if count >= self._expected_contributions(header.round_id):
                self._close(header.round_id)
            state = self.store.get_round(header.round_id)
            assert state is not None
            return Receipt(header.round_id, header.payload_sha256, False, count, state.state)

    def _validate_payload(self, data: bytes, header: Header) -> ckks.LoadedVector:
        assert self._public_context is not None
        try:
            blobs = payload.unframe(data)
            if len(blobs) != header.num_ciphertexts:
                raise InvalidContributionError(
                    f"payload holds {len(blobs)} ciphertexts, header says {header.num_ciphertexts}"
                )
            return ckks.load_ciphertexts(
                self._public_context, blobs, expected_length=header.vector_length
            )
        except CkksParameterMismatchError as exc:
            raise InvalidContributionError(
                f"ciphertext from a foreign CKKS context: {exc}"
            ) from exc
        except CryptoError as exc:
            raise InvalidContributionError(f"invalid ciphertext payload: {exc}") from exc

    def _fold_in(self, round_id: str, digest_hex: str, loaded: ckks.LoadedVector, *,
                 first: bool) -> None:
        """Add a stored contribution to its round's running sum (caller holds the lock).

        A round gets a running sum only when its first contribution arrives in this
        process; otherwise (a restart mid-round) or if an addition fails, it has none
        and :meth:`_close` sums the stored contributions instead, so nothing is lost.
        """
        assert self._public_context is not None
        if first:
            self._running[round_id] = (
                ckks.EncryptedSum(self._public_context, vector_length=loaded.length), [])
        running = self._running.get(round_id)
        if running is None:
            return
        try:
            running[0].add(loaded)
        except CryptoError as exc:
            del self._running[round_id]
            logger.warning(
                "[Aggregator.fold_in] round=%s running sum dropped (%s); the close will "
                "sum the stored contributions", round_id, exc,
            )
            return
        running[1].append(digest_hex)

    def _round_total(self, row: RoundRow, digests: list[str]) -> list[bytes]:
        """The round's encrypted sum: its running sum if that holds exactly ``digests``,
        else the stored contributions re-validated and summed one at a time."""
        assert self._public_context is not None
        running = self._running.pop(row.round_id, None)
        if running is not None and sorted(running[1]) == sorted(digests):
            try:
                return running[0].serialize()
            except CryptoError as exc:
                logger.warning("[Aggregator.close] round=%s running sum unusable (%s)",
                               row.round_id, exc)
        total = ckks.EncryptedSum(self._public_context, vector_length=row.vector_length)
        for digest in digests:
            blobs = payload.unframe(self.store.get_blob(digest))
            total.add(ckks.load_ciphertexts(
                self._public_context, blobs, expected_length=row.vector_length))
        return total.serialize()

    def _close(self, round_id: str) -> None:
        """Sum the round's contributions and persist the aggregate (idempotent)."""
        assert self._public_context is not None
        row = self.store.get_round(round_id)
        if row is None or row.state != OPEN:
            return
        contributions = self.store.contributions(round_id)
        total = self._round_total(row, [d for _, d in contributions])
        data = payload.frame(total)
        digest = self.store.put_blob(data)
        with self.store.transaction() as db:
            db.execute(
                "UPDATE rounds SET state = ?, closed_at = ?, aggregate_sha256 = ?, "
                "contributions_in_aggregate = ? WHERE round_id = ? AND state = ?",
                (CLOSED, now(), digest, len(contributions), round_id, OPEN),
            )
        logger.info("[Aggregator.close] round=%s contributions=%d", round_id, len(contributions))

    def tick(self, *, wait: bool = True) -> None:
        """Close rounds that are complete or past their deadline (also after a restart).

        Read paths pass ``wait=False``: if another thread is busy (e.g. summing a round),
        they answer from the stored state instead of queueing behind it.
        """
        if self._public_context is None:
            return
        if not self._lock.acquire(blocking=wait):
            return
        try:
            self._tick_locked()
        finally:
            self._lock.release()

    def _tick_locked(self) -> None:
        for row in self.store.list_rounds():
            if row.state != OPEN:
                continue
            count = len(self.store.contributions(row.round_id))
            if count >= self._expected_contributions(row.round_id):
                self._close(row.round_id)
            elif now() >= row.deadline:
                if count >= self.config.quorum:
                    self._close(row.round_id)
                else:
                    self._running.pop(row.round_id, None)
                    with self.store.transaction() as db:
                        db.execute(
                            "UPDATE rounds SET state = ?, closed_at = ? WHERE round_id = ?",
                            (FAILED, now(), row.round_id),
                        )
                    logger.warning(
                        "[Aggregator.tick] round=%s failed: %d of quorum %d by deadline",
                        row.round_id, count, self.config.quorum,
                    )

    def _expected_contributions(self, round_id: str) -> int:
        """Contributions that close a round at once: the roster, less the participants
        whose mask key an earlier round revealed (they may not contribute again)."""
        return len(self.config.roster) - len(self._retired_before(round_id))

    def _retired_before(self, round_id: str) -> set[str]:
        """Participants whose mask key was revealed in a round opened before
        ``round_id`` (every round, if ``round_id`` has not opened)."""
        row = self.store.get_round(round_id)
        rows = self.store.query(
            "SELECT DISTINCT s.owner_id FROM revealed_shares s JOIN rounds r USING (round_id) "
            "WHERE s.kind = ? AND s.round_id != ? AND r.opened_at <= ?",
            (MASK_KEY, round_id, row.opened_at if row is not None else float("inf")))
        return {str(r[0]) for r in rows}

    # -- dropout recovery ---------------------------------------------------------------
    def deposit_mask_shares(self, peer_id: str, *, federation_id: str,
                            shares: tuple[tuple[str, bytes], ...]) -> None:
        """Store the Shamir shares of ``peer_id``'s mask private keys (one per masked
        round), each roster member's sealed together to it (once per federation; an
        identical retry is accepted)."""
        self._require_member(peer_id)
        if federation_id != self.config.federation_id:
            raise BindingMismatchError(f"federation {federation_id!r} is not served here")
        announced = self.store.query(
            "SELECT length(x25519_public) FROM mask_keys WHERE participant_id = ?", (peer_id,))
        if not announced:
            raise NotReadyError("announce the mask keys before depositing their shares")
        self._check_sealed(shares, expected=set(self.config.roster) - {peer_id},
                           what="mask-key shares", size=sealed_bytes(int(announced[0][0]) // 32))
        with self._lock, self.store.transaction() as db:
            stored = db.execute(
                "SELECT recipient_id, sealed FROM mask_shares WHERE round_id = ? AND owner_id = ?",
                (MASK_KEY_ROUND, peer_id)).fetchall()
            if stored:
                if {(str(r), bytes(b)) for r, b in stored} == set(shares):
                    return
                raise ConflictError(f"{peer_id!r} already deposited other mask-key shares")
            db.executemany("INSERT INTO mask_shares VALUES (?, ?, ?, ?)",
                           [(MASK_KEY_ROUND, peer_id, r, sealed) for r, sealed in shares])
        logger.info("[Aggregator.deposit_mask_shares] participant=%s shares=%d",
                    peer_id, len(shares))

    def _closed_round(self, round_id: str) -> RoundRow:
        self.tick(wait=False)
        row = self.store.get_round(round_id)
        if row is None:
            raise NotFoundError(f"no round {round_id!r}")
        if row.state == FAILED:
            raise RoundClosedError(f"round {round_id!r} failed to reach quorum")
        if row.state != CLOSED:
            raise NotReadyError(f"round {round_id!r} is still open")
        return row

    def mask_shares(self, peer_id: str, round_id: str, *,
                    omit_revealed: bool = False) -> MaskShares:
        """The shares sealed to ``peer_id`` (the mask-key deposits for ``round_id`` ``""``;
        else the closed round's self-mask shares from its contributors), every share
        revealed for the round (none with ``omit_revealed``) and how many revealed."""
        self._require_member(peer_id)
        if round_id == MASK_KEY_ROUND:
            rows = self.store.query(
                "SELECT owner_id, sealed FROM mask_shares WHERE round_id = ? AND recipient_id = ? "
                "ORDER BY owner_id", (MASK_KEY_ROUND, peer_id))
            return MaskShares([], [(str(o), bytes(b)) for o, b in rows], [], [], 0)  # type: ignore[arg-type]
        self._closed_round(round_id)
        contributors = sorted(p for p, _ in self.store.contributions(round_id))
        sealed = self.store.query(
            "SELECT owner_id, sealed FROM mask_shares WHERE round_id = ? AND recipient_id = ? "
            "ORDER BY owner_id", (round_id, peer_id))
        revealed = [] if omit_revealed else self.store.query(
            "SELECT revealer_id, owner_id, kind, share FROM revealed_shares WHERE round_id = ? "
            "ORDER BY revealer_id, owner_id", (round_id,))
        revealers = self.store.query(
            "SELECT count(DISTINCT revealer_id) FROM revealed_shares WHERE round_id = ?",
            (round_id,))[0][0]
        return MaskShares(
            contributors, [(str(o), bytes(b)) for o, b in sealed],  # type: ignore[arg-type]
            [(str(a), str(o), str(k), bytes(b)) for a, o, k, b in revealed],  # type: ignore[arg-type]
            sorted(self._retired_before(round_id)), int(revealers))  # type: ignore[call-overload]

    def reveal_mask_shares(self, peer_id: str, round_id: str,
                           shares: tuple[tuple[str, str, bytes], ...]) -> int:
        """Record a survivor's revealed shares ``(owner, kind, share)`` for a closed round:
        a self-mask share for every contributor and a mask-key share for every other
        member of the mask set, exactly, once (an identical retry is accepted). Returns the
        number of distinct revealers so far."""
        self._require_member(peer_id)
        self._closed_round(round_id)
        contributors = {p for p, _ in self.store.contributions(round_id)}
        if peer_id not in contributors:
            raise NotAllowedError(f"only round {round_id!r}'s contributors reveal its shares")
        active = set(self.config.roster) - self._retired_before(round_id)
        expected = {o: SELF_MASK if o in contributors else MASK_KEY for o in active}
        owners = [o for o, _, _ in shares]
        if len(set(owners)) != len(owners) or {o: k for o, k, _ in shares} != expected:
            raise InvalidContributionError(
                f"round {round_id!r} needs a {SELF_MASK} share for each of "
                f"{sorted(contributors)} and a {MASK_KEY} share for each of "
                f"{sorted(active - contributors)}, one each")
        if any(len(share) != SHARE_BYTES for _, _, share in shares):
            raise InvalidContributionError(f"a revealed share must be {SHARE_BYTES} bytes")
        with self._lock, self.store.transaction() as db:
            stored = db.execute(
                "SELECT owner_id, kind, share FROM revealed_shares "
                "WHERE round_id = ? AND revealer_id = ?", (round_id, peer_id)).fetchall()
            if stored and {(str(o), str(k), bytes(b)) for o, k, b in stored} != set(shares):
                raise ConflictError(f"{peer_id!r} already revealed other shares for round "
                                    f"{round_id!r}")
            if not stored:
                db.executemany("INSERT INTO revealed_shares VALUES (?, ?, ?, ?, ?)",
                               [(round_id, peer_id, o, k, b) for o, k, b in shares])
            revealers = db.execute(
                "SELECT count(DISTINCT revealer_id) FROM revealed_shares WHERE round_id = ?",
                (round_id,)).fetchone()[0]
        logger.info("[Aggregator.reveal_mask_shares] round=%s participant=%s revealers=%d",
                    round_id, peer_id, revealers)
        return int(revealers)

    # -- task cache -------------------------------------------------------------------
    def check_task_header(self, peer_id: str, entry: TaskEntry) -> None:
        """Validate a task header before its payload is received."""
        self._require_member(peer_id)
        if self._public_context is None:
            raise NotReadyError("keys are not published yet")
        if not ROUND_ID.fullmatch(entry.task_id):
            raise InvalidContributionError(f"task id {entry.task_id!r} is not valid")
        for key in ("model_fingerprint", "layer_map_fingerprint"):
            if getattr(entry, key) != self.pinned(key):
                raise BindingMismatchError(f"{key} does not match the federation's")
        if entry.ckks_context_fingerprint != self.store.get_meta("ckks_context_fingerprint"):
            raise InvalidContributionError("task is bound to a different CKKS context")
        if entry.payload_bytes > self.config.max_payload_bytes:
            raise PayloadTooLargeError("task payload exceeds the size limit")
        length = entry.vector_length + entry.coefficient_count
        if entry.vector_length < 1 or entry.coefficient_count < 1:
            raise InvalidContributionError("vector_length and coefficient_count must be >= 1")
        if entry.num_ciphertexts != -(-length // self._slots):
            raise InvalidContributionError("num_ciphertexts does not fit the declared lengths")

    def put_task(self, peer_id: str, entry: TaskEntry, data: bytes) -> bool:
        """Store a finished task (immutable); returns True for an identical re-upload."""
        self.check_task_header(peer_id, entry)
        length = entry.vector_length + entry.coefficient_count
        if len(data) != entry.payload_bytes or payload.sha256(data) != entry.payload_sha256:
            raise InvalidContributionError("task payload truncated or corrupted (digest)")
        try:
            json.loads(entry.metadata_json or "{}")
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            raise InvalidContributionError("metadata_json is not JSON") from None
        header = Header(self.config.federation_id, entry.task_id, entry.model_fingerprint,
                        entry.layer_map_fingerprint, entry.ckks_context_fingerprint, length,
                        entry.num_ciphertexts, entry.payload_bytes, entry.payload_sha256,
                        "vector_sum")
        self._validate_payload(data, header)
        with self._lock:
            existing = self.store.query(
                "SELECT blob_sha256 FROM tasks WHERE task_id = ?", (entry.task_id,))
            if existing:
                if existing[0][0] == entry.payload_sha256.hex():
                    return True
                raise ConflictError(f"task {entry.task_id!r} is already cached (immutable)")
            digest = self.store.put_blob(data)
            stored = TaskEntry(**{**asdict(entry), "stored_by": peer_id, "stored_at_unix_s": now()})
            record = {**asdict(stored), "payload_sha256": entry.payload_sha256.hex()}
            with self.store.transaction() as db:
                db.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?)",
                           (entry.task_id, json.dumps(record), digest, peer_id, now()))
        logger.info("[Aggregator.put_task] task=%s by=%s", entry.task_id, peer_id)
        return False

    def _task_entry(self, header_json: str) -> TaskEntry:
        record = json.loads(header_json)
        record["payload_sha256"] = bytes.fromhex(record["payload_sha256"])
        return TaskEntry(**record)

    def get_task(self, peer_id: str, task_id: str) -> tuple[TaskEntry, bytes]:
        """A cached task's header and framed ciphertexts."""
        self._require_member(peer_id)
        rows = self.store.query(
            "SELECT header_json, blob_sha256 FROM tasks WHERE task_id = ?", (task_id,))
        if not rows:
            raise NotFoundError(f"no cached task {task_id!r}")
        return self._task_entry(str(rows[0][0])), self.store.get_blob(str(rows[0][1]))

    def list_tasks(self, peer_id: str) -> list[TaskEntry]:
        """Headers of every cached task."""
        self._require_member(peer_id)
        rows = self.store.query("SELECT header_json FROM tasks ORDER BY stored_at")
        return [self._task_entry(str(r[0])) for r in rows]

    def round_status(self, peer_id: str, round_id: str) -> RoundStatus:
        """State of a round as seen by ``peer_id``."""
        self._require_member(peer_id)
        self.tick(wait=False)
        row = self.store.get_round(round_id)
        if row is None:
            return RoundStatus(round_id, "", 0, self.config.quorum, 0.0, 0, b"", False)
        contributions = self.store.contributions(round_id)
        return RoundStatus(
            round_id, row.state, len(contributions), self.config.quorum, row.deadline,
            row.vector_length, bytes.fromhex(row.aggregate_sha256 or ""),
            any(p == peer_id for p, _ in contributions),
        )

    def aggregate(self, peer_id: str, round_id: str) -> Aggregate:
        """The encrypted sum of a closed round."""
        self._require_member(peer_id)
        self.tick(wait=False)
        row: RoundRow | None = self.store.get_round(round_id)
        if row is None:
            raise NotFoundError(f"no round {round_id!r}")
        if row.state == FAILED:
            raise RoundClosedError(f"round {round_id!r} failed to reach quorum")
        if row.state != CLOSED or row.aggregate_sha256 is None:
            raise NotReadyError(f"round {round_id!r} is still open")
        data = self.store.get_blob(row.aggregate_sha256)
        return Aggregate(
            round_id, int(row.contributions_in_aggregate or 0), row.vector_length,
            row.num_ciphertexts, data, bytes.fromhex(row.aggregate_sha256),
            self.store.get_meta("ckks_context_fingerprint") or "", row.kind,
        )


def _normalise_pem(pem: str) -> str:
    return "".join(pem.split())


def _check_protocol_plan(plan: str) -> None:
    """A protocol plan is empty or a JSON object of at most ``MAX_PROTOCOL_PLAN_BYTES``."""
    if not plan:
        return
    if len(plan.encode()) > MAX_PROTOCOL_PLAN_BYTES:
        raise PayloadTooLargeError(
            f"protocol plan exceeds {MAX_PROTOCOL_PLAN_BYTES} bytes")
    try:
        parsed = json.loads(plan)
    except ValueError as exc:
        raise InvalidContributionError(f"protocol plan is not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InvalidContributionError("protocol plan must be a JSON object")
